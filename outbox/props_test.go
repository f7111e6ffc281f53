package outbox_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/schema"
)

// props is the AMQP property columns of a row, as stored.
type props struct {
	Type, CorrelationID, ReplyTo *string
	Expiration                   *time.Duration
	Priority                     *int16
	ContentEncoding, AppID       *string
}

func readProps(t *testing.T, e *testenv.Env, id outbox.MessageID) props {
	t.Helper()
	var p props
	if err := e.Pool.QueryRow(context.Background(), `select type, correlation_id, reply_to, expiration, priority,
		content_encoding, app_id from `+e.Table.Ident()+` where message_id = $1::uuid`, id.String()).Scan(
		&p.Type, &p.CorrelationID, &p.ReplyTo, &p.Expiration, &p.Priority, &p.ContentEncoding, &p.AppID); err != nil {
		t.Fatalf("read properties: %v", err)
	}
	return p
}

// Every AMQP property of a Message lands in its column, through every kind
// of handle; a message that sets none leaves them all null, beside one
// that does.
func TestEnqueueProperties(t *testing.T) {
	t.Parallel()
	for _, h := range handles() {
		if !h.committed {
			continue
		}
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ids, err := h.enqueue(context.Background(), t, b, b.w, outbox.Message{
				RoutingKey: "job.completed", Type: "job.completed", CorrelationID: "req-42", ReplyTo: "api.replies",
				Expiration: 30*time.Second + time.Nanosecond, Priority: 5, ContentEncoding: "gzip", AppID: "billing",
			}, outbox.Message{RoutingKey: "plain"})
			if err != nil {
				t.Fatal(err)
			}
			p := readProps(t, b.env, ids[0])
			if *p.Type != "job.completed" || *p.CorrelationID != "req-42" || *p.ReplyTo != "api.replies" ||
				*p.Expiration != 30*time.Second+time.Microsecond || *p.Priority != 5 || *p.ContentEncoding != "gzip" || *p.AppID != "billing" {
				t.Errorf("properties stored: %+v", p)
			}
			if p := readProps(t, b.env, ids[1]); p != (props{}) {
				t.Errorf("message without properties stored %+v, want all null", p)
			}
		})
	}
}

// A batch that sets no property still goes into a table at migration 004,
// so a service may upgrade the library before the table; one that sets a
// property needs the columns and says so.
func TestEnqueueIntoTableBeforeProperties(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	e.MigrateTo(t, 4)
	w := newWriter(t, e.Table.Ident())
	ctx := context.Background()
	if _, err := w.Enqueue(ctx, e.Pool, outbox.Message{RoutingKey: "k", Headers: map[string]any{"a": 1}}); err != nil {
		t.Errorf("message without properties into a 004 table: %v", err)
	}
	if _, err := w.Enqueue(ctx, e.Pool, outbox.Message{RoutingKey: "k", Type: "t"}); err == nil || !strings.Contains(err.Error(), "type") {
		t.Errorf("message with a property into a 004 table: %v; want the missing column named", err)
	}
}

// Bad property values are refused before anything is written.
func TestEnqueueRefusesBadProperties(t *testing.T) {
	t.Parallel()
	for _, m := range []outbox.Message{
		{RoutingKey: "k", Expiration: -time.Second},
		{RoutingKey: "k", Expiration: schema.MaxExpiration + time.Millisecond},
		{RoutingKey: "k", Type: strings.Repeat("t", 256)},
		{RoutingKey: "k", CorrelationID: "a\x00b"},
		{RoutingKey: "k", ReplyTo: "\xff"},
		{RoutingKey: "k", ContentEncoding: strings.Repeat("é", 128)},
		{RoutingKey: "k", AppID: strings.Repeat("a", 256)},
	} {
		_, err := outbox.Enqueue(context.Background(), nil, m)
		var me *outbox.MessageError
		if !errors.As(err, &me) || !errors.Is(err, outbox.ErrInvalidField) {
			t.Errorf("%+v: %v; want a MessageError matching ErrInvalidField", m, err)
		}
	}
}
