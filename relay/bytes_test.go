package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// A backlog of rows of mixed sizes, larger in all than many batches' byte
// bound, drains with every message intact and every key in id order, while
// rows of one key straddle the bound again and again: a hot key, a cold
// one and rows without a key, and a row larger than the bound, which goes
// out alone. Rows past the bound are claimed again, and so are the rows
// held back behind them, but not over and over: the batches load few more
// rows than the backlog holds. A row over MaxMessageSize ends dead, and the
// rows of its key wait for it.
func TestRelayDrainsMixedSizesWithinByteBound(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const rowCount, bound, maxMessage, tooLarge = 300, 16 << 10, 64 << 10, 100
	rng := rand.New(rand.NewPCG(1, 2))
	rows := make([]row, rowCount)
	for i := range rows {
		r := row{exchange: b.exchange, key: "sized"}
		switch n := rng.IntN(10); {
		case n < 6:
			r.partition = ptr("hot")
		case n < 8:
			r.partition = ptr("cold")
		}
		r.payload = make([]byte, 1+rng.IntN(8<<10))
		switch i {
		case rowCount / 2:
			r.payload = make([]byte, 3*bound)
		case tooLarge:
			r.partition, r.payload = ptr("cold"), make([]byte, maxMessage+1)
		}
		for j := range r.payload {
			r.payload[j] = byte(rng.Uint32())
		}
		rows[i] = r
	}
	ctx := context.Background()
	tx, err := b.env.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One transaction: ids follow the order of rows.
	ids := insert(t, tx, b, rows...)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	index := make(map[string]int, len(ids))
	for i, id := range ids {
		index[id] = i
	}

	reg := prometheus.NewRegistry()
	cfg := b.config(t)
	cfg.BatchBytes, cfg.MaxMessageSize = bound, maxMessage
	cfg.Registerer = reg
	start(t, cfg)

	got := testenv.Receive(t, b.recv, rowCount-1, 60*time.Second)
	seen := make(map[string]bool, rowCount)
	last := map[string]int{}
	for _, d := range got {
		i, ok := index[d.MessageId]
		if !ok || seen[d.MessageId] || i == tooLarge {
			t.Fatalf("message %s unknown, too large or received twice", d.MessageId)
		}
		seen[d.MessageId] = true
		if !bytes.Equal(d.Body, rows[i].payload) {
			t.Errorf("row %d: body of %d bytes differs from its payload of %d", i, len(d.Body), len(rows[i].payload))
		}
		if p := rows[i].partition; p != nil {
			if prev, ok := last[*p]; ok && i < prev {
				t.Errorf("key %s: row %d arrived after row %d", *p, i, prev)
			}
			last[*p] = i
		}
	}
	testenv.WaitFor(t, 10*time.Second, "table to be empty but for the dead row", func() bool {
		live, dead := b.env.Pending(t)
		return live == 0 && dead == 1
	})
	var lastError string
	if err := b.env.Pool.QueryRow(ctx, "select last_error from "+b.env.Table.Ident()+" where message_id = $1", ids[tooLarge]).Scan(&lastError); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("payload of %d bytes is larger than the %d bytes allowed", maxMessage+1, maxMessage); !strings.Contains(lastError, want) {
		t.Errorf("last_error %q, want it to say %q", lastError, want)
	}

	mfs := gather(t, reg)
	h := mfs["outbox_batch_size"].GetMetric()[0].GetHistogram()
	loaded, batches := h.GetSampleSum(), h.GetSampleCount()
	sent := totalBytes(rows) - len(rows[tooLarge].payload)
	t.Logf("%d rows of %d bytes on average went out in %d batches loading %.0f rows in all",
		rowCount-1, sent/(rowCount-1), batches, loaded)
	if perBatch := float64(sent) / float64(batches); perBatch > 2*bound {
		t.Errorf("batches held %.0f bytes on average, over twice the bound of %d", perBatch, bound)
	}
	if loaded > 1.5*rowCount {
		t.Errorf("batches loaded %.0f rows to publish %d: rows are claimed again and again", loaded, rowCount)
	}
}

func totalBytes(rows []row) int {
	n := 0
	for _, r := range rows {
		n += len(r.payload)
	}
	return n
}
