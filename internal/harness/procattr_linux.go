package harness

import "syscall"

// procAttr puts the relay in a process group of its own, so that a Ctrl-C
// in the terminal reaches only the program that runs it, which then stops
// the relay in its own time; and has the kernel send the relay SIGTERM
// should that program die first. The kernel sends it when the thread
// that started the relay ends, which the Go runtime does only for a thread
// locked with runtime.LockOSThread (https://go.dev/issue/27505): start
// relays from ordinary goroutines.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
