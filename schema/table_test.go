package schema

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseTable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    Table
		wantErr string
	}{
		{in: "outbox", want: Table{Name: "outbox"}},
		{in: "app.outbox", want: Table{Schema: "app", Name: "outbox"}},
		{in: "App.Outbox", want: Table{Schema: "App", Name: "Outbox"}},
		{in: `"my.schema"."odd""name"`, want: Table{Schema: "my.schema", Name: `odd"name`}},
		{in: `"with space"`, want: Table{Name: "with space"}},
		{in: "x; drop table y", want: Table{Name: "x; drop table y"}},
		{in: "", wantErr: "empty name part"},
		{in: "a..b", wantErr: "empty name part"},
		{in: "a.", wantErr: "empty name part"},
		{in: "a.b.c", wantErr: "want table or schema.table"},
		{in: `"open`, wantErr: "unterminated quote"},
		{in: `"a"b`, wantErr: "text after closing quote"},
		{in: `a"b`, wantErr: "stray quote"},
		{in: strings.Repeat("t", 46), wantErr: "longer than 45 bytes"},
		{in: strings.Repeat("s", 64) + ".t", wantErr: "longer than 63 bytes"},
	} {
		got, err := ParseTable(tc.in)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseTable(%q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("ParseTable(%q): %v", tc.in, err)
		case got != tc.want:
			t.Errorf("ParseTable(%q) = %#v, want %#v", tc.in, got, tc.want)
		}
	}
}

func TestDerivedNames(t *testing.T) {
	t.Parallel()
	tb := Table{Schema: "app", Name: `we"ird`}
	if got, want := tb.Ident(), `"app"."we""ird"`; got != want {
		t.Errorf("Ident = %s, want %s", got, want)
	}
	if got, want := tb.Derived("enqueue"), `"app"."we""ird_enqueue"`; got != want {
		t.Errorf("Derived = %s, want %s", got, want)
	}
	if got, want := tb.Local("notify"), `"we""ird_notify"`; got != want {
		t.Errorf("Local = %s, want %s", got, want)
	}
	if got, want := tb.Channel(), `app.we"ird`; got != want {
		t.Errorf("Channel = %s, want %s", got, want)
	}
	if tb.LockKey("leader") == tb.LockKey("migrate") || tb.LockKey("leader") == (Table{Schema: "app2", Name: `we"ird`}).LockKey("leader") {
		t.Errorf("lock keys collide")
	}
}

func TestChannelOfLongNamesFitsAndDiffers(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", 31) // 62 bytes of two-byte runes
	a := Table{Schema: long, Name: "outbox_a"}.Channel()
	b := Table{Schema: long, Name: "outbox_b"}.Channel()
	if len(a) > maxIdentLen || len(b) > maxIdentLen || !utf8.ValidString(a) {
		t.Errorf("channel %q (%d bytes) does not fit or is not UTF-8", a, len(a))
	}
	if a == b {
		t.Errorf("two tables share channel %q", a)
	}
	for _, tb := range []Table{{Schema: long, Name: "outbox_a"}, {Schema: "public", Name: "outbox"}} {
		ch := map[string]bool{tb.Channel(): true}
		for p := range MaxPartitions {
			c := tb.PartitionChannel(p)
			if len(c) > maxIdentLen || !utf8.ValidString(c) || ch[c] {
				t.Fatalf("partition %d's channel %q (%d bytes) does not fit, is not UTF-8 or is not its own", p, c, len(c))
			}
			ch[c] = true
		}
	}
	if got, want := (Table{Schema: "public", Name: "outbox"}).PartitionChannel(11), "public.outbox/11"; got != want {
		t.Errorf("PartitionChannel = %q, want %q", got, want)
	}
}

func TestTemplatesRender(t *testing.T) {
	t.Parallel()
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || ms[0].Version != 1 {
		t.Fatalf("migrations = %v", ms)
	}
	tb := Table{Schema: "s", Name: "x$body$y'z"}
	sql, err := ms[0].SQL(tb)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(sql, "$body$") && !strings.Contains(sql, "$body1$") {
		t.Errorf("dollar quote tag collides with the table name:\n%s", sql)
	}
	if !strings.Contains(sql, `'s.x$body$y''z'`) {
		t.Errorf("channel literal not quoted:\n%s", sql)
	}
}

// The setting's name is simple identifiers, whatever the table's name.
func TestNotifySetting(t *testing.T) {
	for name, want := range map[string]string{
		"outbox":         "outbox.notify",
		"Billing_Outbox": "billing_outbox.notify",
		"my table-2":     "my_table_2.notify",
		"2fa":            "_fa.notify",
		"événements":     "__v__nements.notify",
	} {
		if got := (Table{Schema: "s", Name: name}).NotifySetting(); got != want {
			t.Errorf("NotifySetting of %q = %q, want %q", name, got, want)
		}
	}
}
