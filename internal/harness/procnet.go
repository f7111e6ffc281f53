package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// LocalPorts returns the local ports of the process's established TCP
// connections to remotePort, read from /proc (Linux only): the way to
// find exactly this relay's sessions among every client of a shared
// server, by pg_stat_activity.client_port or BrokerConnection.PeerPort.
func (p *Process) LocalPorts(remotePort int) ([]int, error) {
	pid := p.Pid()
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return nil, fmt.Errorf("list sockets of pid %d: %w", pid, err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var ports []int
	for _, file := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, file))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(f) < 10 || f[3] != "01" || !inodes[f[9]] {
				continue
			}
			if hexPort(f[2]) == remotePort {
				ports = append(ports, hexPort(f[1]))
			}
		}
	}
	return ports, nil
}

// hexPort reads the port of a /proc/net/tcp address such as 0100007F:1538.
func hexPort(addr string) int {
	_, h, _ := strings.Cut(addr, ":")
	n, _ := strconv.ParseInt(h, 16, 32)
	return int(n)
}
