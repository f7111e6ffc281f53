package relay

import (
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// What consumers can read. amqp091-go, from v1.16 (read.go: maxFieldDepth,
// maxContainerElements), refuses a field table or array nested more than 32
// levels below the headers table (which is level 0), or holding more than
// 8192 entries, the headers table included. It then closes the consumer's
// connection (501 FRAME_ERROR, quoting its 502 SYNTAX_ERROR), and the
// broker delivers the message again, into the same failure (with auto-ack,
// it is lost instead): a poison message for every consumer. The relay's own
// connection reads a message the broker returns (mandatory), and would be
// closed the same way. So the relay refuses to send such headers;
// outbox/validate.go refuses them at Enqueue.
const (
	maxFieldDepth   = 32
	maxFieldEntries = 8192
)

// readable returns why consumers could not read headers h, or nil when they
// can (see maxFieldDepth).
func readable(h amqp.Table) error {
	if len(h) > maxFieldEntries {
		return fmt.Errorf("headers hold %d entries; amqp091-go consumers read at most %d", len(h), maxFieldEntries)
	}
	for k, v := range h {
		if err := readableField(v, 1); err != nil {
			return fmt.Errorf("header %q %w", Clip(k, 40), err)
		}
	}
	return nil
}

// readableField checks a field value found depth levels below the headers
// table. It allocates nothing: it runs for every row with headers.
func readableField(v any, depth int) error {
	switch v := v.(type) {
	case amqp.Table:
		if err := readableContainer(depth, len(v), "a table", "entries"); err != nil {
			return err
		}
		for _, e := range v {
			if err := readableField(e, depth+1); err != nil {
				return err
			}
		}
	case []any:
		if err := readableContainer(depth, len(v), "an array", "elements"); err != nil {
			return err
		}
		for _, e := range v {
			if err := readableField(e, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// readableContainer checks what (a table or an array) of n entries, depth
// levels below the headers table; unit names its entries.
func readableContainer(depth, n int, what, unit string) error {
	if depth > maxFieldDepth {
		return fmt.Errorf("nests tables and arrays more than %d levels deep; amqp091-go consumers read at most %d", maxFieldDepth, maxFieldDepth)
	}
	if n > maxFieldEntries {
		return fmt.Errorf("holds %s of %d %s; amqp091-go consumers read at most %d", what, n, unit, maxFieldEntries)
	}
	return nil
}
