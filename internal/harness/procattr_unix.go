//go:build unix && !linux

package harness

import "syscall"

// procAttr puts the relay in a process group of its own, so that a Ctrl-C
// in the terminal reaches only the program that runs it, which then stops
// the relay in its own time.
func procAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
