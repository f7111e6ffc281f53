package main

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

// The test binary is built without -ldflags and, on a machine with
// GOFLAGS=-buildvcs=false, without a VCS stamp: version still says what
// it can, never a bare "(devel)".
func TestVersionWithoutStamps(t *testing.T) {
	t.Parallel()
	out, _, code := runBin(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "outbox-relay ") || strings.Contains(out, "(devel)") ||
		!strings.Contains(out, runtime.Version()) {
		t.Errorf("version: exit %d, %q; want outbox-relay, a version that is not (devel), and %s", code, out, runtime.Version())
	}
}

func TestVcsRevision(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		settings []debug.BuildSetting
		want     string
	}{
		{"none", nil, ""},
		{"clean", []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "false"}}, "abc"},
		{"modified", []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "true"}}, "abc-dirty"},
	} {
		if got := vcsRevision(tc.settings); got != tc.want {
			t.Errorf("%s: vcsRevision = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// -X main.version and -X main.revision, as the Makefile and the Dockerfile
// stamp them, win over what the toolchain recorded. Not parallel: it sets
// the package's variables.
func TestVersionStamped(t *testing.T) {
	defer func(v, r string) { version, revision = v, r }(version, revision)
	version, revision = "v1.2.3", "0123abc"
	if got, want := versionString(), "outbox-relay v1.2.3 (revision 0123abc, "+runtime.Version(); !strings.HasPrefix(got, want) {
		t.Errorf("versionString = %q, want it to begin %q", got, want)
	}
}
