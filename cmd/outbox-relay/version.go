package main

import (
	"runtime"
	"runtime/debug"
)

// version and revision are stamped at build time:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.revision=$(git rev-parse HEAD)"
//
// (the Makefile and the Dockerfile do). Unset, readBuild falls back on what
// the Go toolchain recorded in the binary.
var (
	version  string
	revision string
)

// build says which build of outbox-relay runs.
type build struct {
	version   string // v1.2.3, a git describe, or "devel"
	revision  string // the source commit, "-dirty" appended for a modified tree; "" if unknown
	goVersion string
}

// readBuild returns the stamped version and revision; where one is unset,
// what debug.ReadBuildInfo knows (the module version of a `go install
// ...@v1.2.3`, the VCS stamp of a build in a git checkout); else "devel".
// A build from a tarball without .git, or with -buildvcs=false, has
// neither: it is devel, with its Go version.
func readBuild() build {
	b := build{version: version, revision: revision, goVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = &debug.BuildInfo{}
	}
	if b.version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		b.version = bi.Main.Version
	}
	if b.revision == "" {
		b.revision = vcsRevision(bi.Settings)
	}
	if b.version == "" {
		b.version = "devel"
	}
	return b
}

// vcsRevision returns the vcs.revision the Go toolchain stamped, with
// "-dirty" when vcs.modified says the tree had changes.
func vcsRevision(settings []debug.BuildSetting) string {
	var rev string
	var modified bool
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev != "" && modified {
		rev += "-dirty"
	}
	return rev
}

// versionString is what `outbox-relay version` prints: e.g.
// "outbox-relay v1.2.3 (revision 0123abc…, go1.26.8)", or
// "outbox-relay devel (revision unknown, go1.26.8)".
func versionString() string {
	b := readBuild()
	rev := b.revision
	if rev == "" {
		rev = "unknown"
	}
	return "outbox-relay " + b.version + " (revision " + rev + ", " + b.goVersion + ", " + runtime.GOOS + "/" + runtime.GOARCH + ")"
}
