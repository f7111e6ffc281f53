package main

import "syscall"

// relayProcAttr puts the relay in a process group of its own, so that a
// Ctrl-C in the terminal reaches only the demo, which then stops the relay
// last; and has the kernel send it SIGTERM should the demo die first.
func relayProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
