package outbox_test

import (
	"encoding/json"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

func TestMessageIDText(t *testing.T) {
	t.Parallel()
	const s = "2f1d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b"
	id, err := outbox.ParseMessageID(s)
	if err != nil {
		t.Fatal(err)
	}
	want := outbox.MessageID{0x2f, 0x1d, 0x3c, 0x4b, 0x5a, 0x69, 0x47, 0x88, 0x9a, 0x0b, 0x1c, 0x2d, 0x3e, 0x4f, 0x5a, 0x6b}
	if id != want {
		t.Fatalf("ParseMessageID(%q) = %x, want %x", s, id, want)
	}
	if got := id.String(); got != s {
		t.Errorf("String() = %q, want %q", got, s)
	}
	if upper, err := outbox.ParseMessageID("2F1D3C4B-5A69-4788-9A0B-1C2D3E4F5A6B"); err != nil || upper != id {
		t.Errorf("upper case: got %v, %v", upper, err)
	}

	b, err := json.Marshal(map[string]outbox.MessageID{"id": id})
	if err != nil || string(b) != `{"id":"`+s+`"}` {
		t.Errorf("json.Marshal = %s, %v", b, err)
	}
	var back map[string]outbox.MessageID
	if err := json.Unmarshal(b, &back); err != nil || back["id"] != id {
		t.Errorf("json.Unmarshal = %v, %v", back, err)
	}

	if (outbox.MessageID{}).String() != "00000000-0000-0000-0000-000000000000" || !(outbox.MessageID{}).IsZero() || id.IsZero() {
		t.Error("zero value")
	}
}

func TestParseMessageIDRefuses(t *testing.T) {
	t.Parallel()
	for _, s := range []string{
		"",
		"2f1d3c4b5a6947889a0b1c2d3e4f5a6b",
		"2f1d3c4b-5a69-4788-9a0b-1c2d3e4f5a6",
		"2f1d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b0",
		"2f1d3c4b-5a69-4788-9a0b_1c2d3e4f5a6b",
		"gf1d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b",
		"{2f1d3c4b-5a69-4788-9a0b-1c2d3e4f5a6}",
	} {
		if id, err := outbox.ParseMessageID(s); err == nil {
			t.Errorf("ParseMessageID(%q) = %v, want an error", s, id)
		}
	}
}

func TestNewMessageID(t *testing.T) {
	t.Parallel()
	a, b := outbox.NewMessageID(), outbox.NewMessageID()
	if a == b || a.IsZero() {
		t.Fatalf("NewMessageID returned %v and %v", a, b)
	}
	if s := a.String(); s[14] != '4' || (s[19] != '8' && s[19] != '9' && s[19] != 'a' && s[19] != 'b') {
		t.Errorf("%s is not a version 4, RFC 9562 variant UUID", s)
	}
}
