package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/relay"
)

// The defaults of the variables that bound memory are the library's.
func TestMemoryDefaultsAreTheRelays(t *testing.T) {
	clearEnv(t)
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	rc := c.relayConfig(nil)
	if rc.BatchBytes != relay.BatchBytesDefault || rc.MaxMessageSize != relay.MaxMessageSizeDefault {
		t.Errorf("BatchBytes, MaxMessageSize = %d, %d; want %d, %d",
			rc.BatchBytes, rc.MaxMessageSize, relay.BatchBytesDefault, relay.MaxMessageSizeDefault)
	}
}

func TestBatchBytesIsChecked(t *testing.T) {
	for _, v := range []string{"0", "-1", "8MiB"} {
		t.Run(v, func(t *testing.T) {
			t.Setenv("OUTBOX_BATCH_BYTES", v)
			_, err := loadConfig()
			var ce *configError
			if !errors.As(err, &ce) || !strings.HasPrefix(err.Error(), "OUTBOX_BATCH_BYTES: ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("OUTBOX_BATCH_BYTES=%s: error %v; want one line naming the variable", v, err)
			}
		})
	}
}

func TestParseMemoryLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want int64
		ok   bool
	}{
		{"v2 limit", "134217728\n", 128 << 20, true},
		{"v2 none", "max\n", 0, false},
		{"v1 none", "9223372036854771712\n", 0, false},
		{"absurd", "1125899906842624\n", 0, false},
		{"zero", "0\n", 0, false},
		{"negative", "-1\n", 0, false},
		{"empty", "", 0, false},
		{"garbage", "128Mi\n", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseMemoryLimit(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Errorf("parseMemoryLimit(%q) = %d, %t; want %d, %t", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

// The first limit file that exists decides, even when it sets no limit.
func TestCgroupMemoryLimit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	missing := filepath.Join(dir, "missing")
	v1 := write("v1", "268435456\n")
	v2none := write("v2none", "max\n")

	if got, ok := cgroupMemoryLimit(missing, v1); got != 256<<20 || !ok {
		t.Errorf("v2 missing, v1 set: %d, %t; want %d, true", got, ok, 256<<20)
	}
	if got, ok := cgroupMemoryLimit(v2none, v1); ok {
		t.Errorf("v2 says max: %d, %t; want no limit", got, ok)
	}
	if got, ok := cgroupMemoryLimit(missing); ok {
		t.Errorf("no file: %d, %t; want no limit", got, ok)
	}
}
