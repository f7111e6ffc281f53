package schema

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// TableDefault is the outbox table's name when OUTBOX_TABLE is not set.
const TableDefault = "outbox"

// maxIdentLen is PostgreSQL's NAMEDATALEN-1: longer names are silently
// truncated, which could make two derived names collide.
const maxIdentLen = 63

// longestSuffix is the longest suffix a derived name gets (see Table.Name).
const longestSuffix = len("_schema_migrations")

// Table is a parsed, optionally schema-qualified outbox table name. Every
// other object (functions, trigger, state table, NOTIFY channel, advisory
// locks) derives its name from it, so two outbox tables never share one.
//
// Names are only ever put into SQL through pgx.Identifier.Sanitize, never
// spliced as raw text.
type Table struct {
	Schema string // empty: resolved through search_path, see Resolve
	Name   string
}

// ParseTable parses `table`, `schema.table` or the double-quoted forms
// `"My Schema"."odd.table"` (with "" standing for a quote inside quotes).
func ParseTable(s string) (Table, error) {
	parts, err := splitIdent(s)
	if err != nil {
		return Table{}, err
	}
	var t Table
	switch len(parts) {
	case 1:
		t = Table{Name: parts[0]}
	case 2:
		t = Table{Schema: parts[0], Name: parts[1]}
	default:
		return Table{}, fmt.Errorf("%q: want table or schema.table", s)
	}
	if len(t.Name) > maxIdentLen-longestSuffix {
		return Table{}, fmt.Errorf("table name %q is longer than %d bytes", t.Name, maxIdentLen-longestSuffix)
	}
	if len(t.Schema) > maxIdentLen {
		return Table{}, fmt.Errorf("schema name %q is longer than %d bytes", t.Schema, maxIdentLen)
	}
	return t, nil
}

// splitIdent splits a dotted name into its parts, honouring double quotes.
// Unquoted parts are kept as written (not folded to lower case): OUTBOX_TABLE
// names the table exactly.
func splitIdent(s string) ([]string, error) {
	var parts []string
	var cur strings.Builder
	quoted, inQuotes, partStart := false, false, true
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuotes && c == '"':
			if i+1 < len(s) && s[i+1] == '"' {
				cur.WriteByte('"')
				i++
				continue
			}
			inQuotes = false
		case inQuotes:
			cur.WriteByte(c)
		case c == '"' && partStart:
			inQuotes, quoted, partStart = true, true, false
		case c == '"':
			return nil, fmt.Errorf("%q: stray quote", s)
		case c == '.':
			if cur.Len() == 0 {
				return nil, fmt.Errorf("%q: empty name part", s)
			}
			parts = append(parts, cur.String())
			cur.Reset()
			quoted, partStart = false, true
		default:
			if quoted {
				return nil, fmt.Errorf("%q: text after closing quote", s)
			}
			if c == 0 {
				return nil, errors.New("table name contains a NUL byte")
			}
			cur.WriteByte(c)
			partStart = false
		}
	}
	if inQuotes {
		return nil, fmt.Errorf("%q: unterminated quote", s)
	}
	if cur.Len() == 0 {
		return nil, fmt.Errorf("%q: empty name part", s)
	}
	return append(parts, cur.String()), nil
}

// String returns the quoted, qualified name, e.g. "public"."outbox".
func (t Table) String() string { return t.Ident() }

// Ident returns the table's quoted name for use in SQL.
func (t Table) Ident() string { return t.ident(t.Name) }

// Derived returns the quoted name of the object derived from the table by
// suffix, in the table's schema: Derived("enqueue") on outbox is "outbox_enqueue".
func (t Table) Derived(suffix string) string { return t.ident(t.Name + "_" + suffix) }

// Local returns the unqualified quoted name of an object derived from the
// table whose name is never schema-qualified in SQL: a trigger, constraint or
// index (they live in the table's schema or namespace anyway).
func (t Table) Local(suffix string) string { return pgx.Identifier{t.Name + "_" + suffix}.Sanitize() }

func (t Table) ident(name string) string {
	if t.Schema == "" {
		return pgx.Identifier{name}.Sanitize()
	}
	return pgx.Identifier{t.Schema, name}.Sanitize()
}

// Resolve fills in the schema from the connection's current_schema() when the
// name was unqualified, so that every relay derives the same channel and lock
// keys whatever its search_path.
func (t Table) Resolve(ctx context.Context, conn interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (Table, error) {
	if t.Schema != "" {
		return t, nil
	}
	var s *string
	if err := conn.QueryRow(ctx, "select current_schema()").Scan(&s); err != nil {
		return t, fmt.Errorf("resolve schema of %s: %w", t.Ident(), err)
	}
	if s == nil {
		return t, fmt.Errorf("resolve schema of %s: search_path names no existing schema", t.Ident())
	}
	t.Schema = *s
	return t, nil
}

// Channel is the NOTIFY channel of the table: "schema.table", or, when that
// is longer than a channel name may be, a prefix of it and a hash.
func (t Table) Channel() string { return fitName(t.Schema+"."+t.Name, maxIdentLen) }

// PartitionChannel is the NOTIFY channel of partition p of a table with
// more than one (migration 012): the table's channel, then "/" and p, the
// channel shortened as Channel shortens it so that any p up to
// MaxPartitions fits. Only the relay owning p listens on it.
func (t Table) PartitionChannel(p int) string {
	return t.partitionChannelPrefix() + strconv.Itoa(p)
}

// partitionChannelPrefix is what PartitionChannel puts before p.
func (t Table) partitionChannelPrefix() string {
	return fitName(t.Schema+"."+t.Name, maxIdentLen-len("/"+strconv.Itoa(MaxPartitions))) + "/"
}

// fitName returns c if it has at most n bytes, else a prefix of it and a
// hash of the whole, n bytes at most.
func fitName(c string, n int) string {
	if len(c) <= n {
		return c
	}
	sum := sha256.Sum256([]byte(c))
	h := hex.EncodeToString(sum[:8])
	prefix := c[:n-len(h)-1]
	for !validUTF8Prefix(prefix) {
		prefix = prefix[:len(prefix)-1]
	}
	return prefix + "_" + h
}

func validUTF8Prefix(s string) bool {
	return strings.ToValidUTF8(s, "\uFFFD") == s
}

// NotifySetting names the transaction setting by which a writer opts out
// of the NOTIFY (migration 011: `set local outbox.notify = off`): the
// table's name, then ".notify" (see Setting).
func (t Table) NotifySetting() string { return t.Setting("notify") }

// Setting returns the name of one of the table's settings, "<table>.<name>". A
// setting's name is made of simple identifiers, compared without case, so
// the table's name is lowercased and each character other than a-z, 0-9
// and _ becomes _, as does a leading digit. Tables of one name in two
// schemas share it.
func (t Table) Setting(name string) string {
	b := []byte(strings.ToLower(t.Name))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c == '_' || c >= '0' && c <= '9' && i > 0) {
			b[i] = '_'
		}
	}
	return string(b) + "." + name
}

// LockKey returns a stable 64-bit advisory lock key for purpose on this table
// (e.g. "migrate", "leader"), so locks of different tables never collide.
func (t Table) LockKey(purpose string) int64 {
	sum := sha256.Sum256([]byte("outbox-relay\x00" + purpose + "\x00" + t.Schema + "\x00" + t.Name))
	return int64(binary.BigEndian.Uint64(sum[:8]))
}

// DollarQuote returns a dollar-quote tag ($body$, else $body1$, ...) that
// occurs in neither the schema nor the table name, so that a function body
// quoted with it cannot be ended early by a name spliced into it.
func (t Table) DollarQuote() string {
	for i := 0; ; i++ {
		tag := "$body$"
		if i > 0 {
			tag = "$body" + strconv.Itoa(i) + "$"
		}
		if !strings.Contains(t.Schema, tag) && !strings.Contains(t.Name, tag) {
			return tag
		}
	}
}

// quoteLiteral quotes s as an SQL string constant.
func quoteLiteral(s string) string {
	if strings.Contains(s, `\`) {
		return `E'` + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `'`, `''`) + `'`
	}
	return `'` + strings.ReplaceAll(s, `'`, `''`) + `'`
}
