package harness

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// RabbitmqctlTimeout bounds one rabbitmqctl command: starting the broker
// application may take a while.
const RabbitmqctlTimeout = 2 * time.Minute

// MaxMessageSizeDefault is RabbitMQ's max_message_size default, 128 MiB.
const MaxMessageSizeDefault = 134217728

// Rabbitmqctl runs `rabbitmqctl -q args...` against the local node, within
// RabbitmqctlTimeout, and returns its output, trimmed. Its error holds the
// command's output.
func Rabbitmqctl(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, RabbitmqctlTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", append([]string{"-q"}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("rabbitmqctl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// StopBroker stops the broker application (rabbitmqctl stop_app): every
// connection is closed and new ones are refused, while the Erlang node
// stays up. Every client of the shared broker is cut off: only tests
// meant to run alone may call it.
func StopBroker(ctx context.Context) error {
	_, err := Rabbitmqctl(ctx, "stop_app")
	return err
}

// StartBroker starts the broker application and waits until it accepts
// connections (start_app, await_startup). It is a no-op on a running
// broker.
func StartBroker(ctx context.Context) error {
	if _, err := Rabbitmqctl(ctx, "start_app"); err != nil {
		return err
	}
	_, err := Rabbitmqctl(ctx, "await_startup")
	return err
}

// BrokerConnection is one client connection to the broker.
type BrokerConnection struct {
	// PID is the broker's id of the connection, what CloseBrokerConnection
	// takes.
	PID string
	// PeerPort is the client's local port: a process's own connections
	// are found by it (see Process.LocalPorts).
	PeerPort int
	// Name is the name the client gave the connection
	// (connection_name), "" if none.
	Name string
}

// BrokerConnections lists the broker's client connections.
func BrokerConnections(ctx context.Context) ([]BrokerConnection, error) {
	out, err := Rabbitmqctl(ctx, "list_connections", "--no-table-headers", "pid", "peer_port", "client_properties")
	if err != nil {
		return nil, err
	}
	var conns []BrokerConnection
	for _, line := range strings.Split(out, "\n") {
		f := strings.SplitN(strings.TrimSpace(line), "\t", 3)
		if len(f) < 2 {
			continue
		}
		port, err := strconv.Atoi(strings.TrimSpace(f[1]))
		if err != nil {
			continue
		}
		c := BrokerConnection{PID: f[0], PeerPort: port}
		if len(f) == 3 {
			c.Name = connectionName(f[2])
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// connectionName reads connection_name from client properties as
// rabbitmqctl prints them, an Erlang list of tuples:
// [{"product","..."},...,{"connection_name","outbox-relay"}].
func connectionName(props string) string {
	const key = `{"connection_name","`
	_, rest, ok := strings.Cut(props, key)
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, `"}`)
	return name
}

// CloseBrokerConnection has the broker close the connection pid with
// reason, as an operator would (rabbitmqctl close_connection).
func CloseBrokerConnection(ctx context.Context, pid, reason string) error {
	_, err := Rabbitmqctl(ctx, "close_connection", pid, reason)
	return err
}

// CloseBrokerConnectionsNamed closes the connections whose name starts
// with prefix, and returns how many it closed. A connection gone meanwhile
// counts as closed.
func CloseBrokerConnectionsNamed(ctx context.Context, prefix, reason string) (int, error) {
	conns, err := BrokerConnections(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, c := range conns {
		if c.Name == "" || !strings.HasPrefix(c.Name, prefix) {
			continue
		}
		// An error here is most likely a connection that closed itself.
		_ = CloseBrokerConnection(ctx, c.PID, reason)
		n++
	}
	return n, nil
}

// MemoryWatermark returns the broker's memory high watermark as
// rabbitmqctl prints it: a fraction such as 0.4, or an absolute limit.
func MemoryWatermark(ctx context.Context) (string, error) {
	return Rabbitmqctl(ctx, "eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
}

// SetMemoryWatermark sets the broker's memory high watermark; a tiny one
// (0.0000001) raises the memory alarm at once, blocking every publisher.
func SetMemoryWatermark(ctx context.Context, watermark string) error {
	_, err := Rabbitmqctl(ctx, "set_vm_memory_high_watermark", watermark)
	return err
}

// BrokerAlarms returns the broker's raised alarms as an Erlang list, "[]"
// if none.
func BrokerAlarms(ctx context.Context) (string, error) {
	return Rabbitmqctl(ctx, "eval", "rabbit_alarm:get_alarms().")
}

// MaxMessageSize returns the broker's max_message_size in bytes;
// MaxMessageSizeDefault if it is not set.
func MaxMessageSize(ctx context.Context) (int, error) {
	out, err := Rabbitmqctl(ctx, "eval", "application:get_env(rabbit, max_message_size).")
	if err != nil {
		return 0, err
	}
	v, ok := strings.CutPrefix(out, "{ok,")
	if !ok {
		return MaxMessageSizeDefault, nil // "undefined"
	}
	n, err := strconv.Atoi(strings.TrimSuffix(v, "}"))
	if err != nil {
		return 0, fmt.Errorf("max_message_size %q: %w", out, err)
	}
	return n, nil
}

// SetMaxMessageSize sets the broker's max_message_size in bytes; channels
// opened afterwards obey it.
func SetMaxMessageSize(ctx context.Context, n int) error {
	_, err := Rabbitmqctl(ctx, "eval", fmt.Sprintf("application:set_env(rabbit, max_message_size, %d).", n))
	return err
}
