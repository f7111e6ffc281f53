//go:build !unix

package main

import "syscall"

// relayProcAttr leaves the relay in the demo's console group: a Ctrl-C
// reaches both, and the relay may stop before the last events are in.
func relayProcAttr() *syscall.SysProcAttr { return nil }
