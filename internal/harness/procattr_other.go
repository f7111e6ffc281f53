//go:build !unix

package harness

import "syscall"

// procAttr leaves the relay in the console group of the program that runs
// it: a Ctrl-C reaches both.
func procAttr() *syscall.SysProcAttr { return nil }
