package inbox_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// pythonLine is one line consumer.py prints per delivery.
type pythonLine struct {
	ID      string `json:"id"`
	Outcome string `json:"outcome"`
}

// runPython runs testdata/consumer.py with args until it exits, and returns
// its exit code and the deliveries it reported.
func runPython(t *testing.T, b *testBundle, args ...string) (int, []pythonLine) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := b.env.PythonCommand(ctx, "testdata/consumer.py", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run consumer.py: %v\n%s", err, stderr.String())
	}
	var lines []pythonLine
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var pl pythonLine
		if err := json.Unmarshal([]byte(l), &pl); err != nil {
			t.Fatalf("consumer.py printed %q: %v\nstderr: %s", l, err, stderr.String())
		}
		lines = append(lines, pl)
	}
	if code != 0 {
		t.Logf("consumer.py exited %d; stderr: %s", code, stderr.String())
	}
	return code, lines
}

func count(lines []pythonLine, id, outcome string) int {
	n := 0
	for _, l := range lines {
		if (id == "" || l.ID == id) && l.Outcome == outcome {
			n++
		}
	}
	return n
}

// The docs' Python consumer, through inbox_claim(): each message published
// three times, a failure that rolls back, and the process killed between a
// commit and its ack; every effect happens once.
func TestPythonConsumerEffectivelyOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	queue := b.env.Queue(t, "py", "", "")
	ids := newIDs(10)
	failOnce, crashOn := ids[2], ids[4]
	publish(t, b.env.AMQP, queue, repeat(ids, 3)...)
	inboxTable, effects := b.inbox.Schema+"."+b.inbox.Name, b.env.Name+".effects"

	code, first := runPython(t, b, queue, "billing", inboxTable, effects, "--crash-after-commit", crashOn, "--fail-once", failOnce)
	if code != 3 || count(first, crashOn, "crashed") != 1 {
		t.Fatalf("first run: exit %d, %v; want exit 3 after the commit of %s", code, first, crashOn)
	}
	if count(first, failOnce, "failed") != 1 || count(first, failOnce, "processed") != 1 {
		t.Errorf("first run: %v; want %s failed once, then processed on its redelivery", first, failOnce)
	}

	// The consumer restarts; a message without an id and one whose id is
	// not a UUID are dead-lettered, never redelivered; a last message
	// tells it to stop.
	ch := b.env.Channel(t)
	for _, m := range []amqp.Publishing{{Body: []byte("no id")}, {MessageId: "not-a-uuid"}, {Type: "stop"}} {
		if err := ch.PublishWithContext(context.Background(), "", queue, false, false, m); err != nil {
			t.Fatal(err)
		}
	}
	code, second := runPython(t, b, queue, "billing", inboxTable, effects)
	if code != 0 {
		t.Fatalf("second run: exit %d", code)
	}
	if second[0].ID != crashOn || second[0].Outcome != "duplicate" {
		t.Errorf("second run began with %v; want the crashed message %s redelivered as a duplicate", second[0], crashOn)
	}
	if n := count(second, "", "rejected"); n != 2 {
		t.Errorf("second run rejected %d messages; want the 2 without a valid message_id", n)
	}
	effectsN, distinct := b.effectCounts(t)
	deliveries := len(first) + len(second) - 2
	t.Logf("deliveries %d (first run %d, second %d), effects %d", deliveries, len(first), len(second), effectsN)
	if effectsN != 10 || distinct != 10 {
		t.Errorf("%d effects of %d messages; want 10 of 10", effectsN, distinct)
	}
	if dups := count(first, "", "duplicate") + count(second, "", "duplicate"); dups != 21 || deliveries != 32 {
		t.Errorf("%d deliveries, %d duplicates; want 32 (30 + a failure's and a crash's redeliveries) and 21", deliveries, dups)
	}
}
