package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// repoRoot is the repository's top directory, seen from this package.
const repoRoot = "../../"

// stamped are the variables the image's build sets with -ldflags -X. The Go
// linker ignores an -X for a name that does not exist, so the test checks
// every -X of the Dockerfile against this list.
var stamped = map[string]*string{"version": &version, "revision": &revision}

// dockerInstr is one instruction of a Dockerfile, continuation lines
// joined: its keyword in upper case, its --flags, and the rest.
type dockerInstr struct {
	cmd   string
	flags map[string]string
	args  string
}

// dockerStage is a FROM and the instructions up to the next one.
type dockerStage struct {
	image, name string
	flags       map[string]string
	instrs      []dockerInstr
}

// parseDockerfile splits a Dockerfile into its stages, for the tests of the
// Dockerfile and of the Kubernetes manifests to read one way. It knows only
// what this project's Dockerfile uses: comments, continuations, flags.
func parseDockerfile(text string) []dockerStage {
	var stages []dockerStage
	var logical strings.Builder
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if rest, ok := strings.CutSuffix(line, `\`); ok {
			logical.WriteString(rest + " ")
			continue
		}
		logical.WriteString(line)
		in := parseInstr(logical.String())
		logical.Reset()
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			st := dockerStage{flags: in.flags}
			if len(f) > 0 {
				st.image = f[0]
			}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			stages = append(stages, st)
		} else if len(stages) > 0 {
			stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
		}
	}
	return stages
}

func parseInstr(s string) dockerInstr {
	cmd, rest, _ := strings.Cut(s, " ")
	in := dockerInstr{cmd: strings.ToUpper(cmd), flags: map[string]string{}}
	rest = strings.TrimSpace(rest)
	for strings.HasPrefix(rest, "--") {
		flag, after, _ := strings.Cut(rest, " ")
		k, v, _ := strings.Cut(strings.TrimPrefix(flag, "--"), "=")
		in.flags[k] = v
		rest = strings.TrimSpace(after)
	}
	in.args = rest
	return in
}

// imageUser returns the numeric user and group the final stage runs as.
func imageUser(stages []dockerStage) (uid, gid int, err error) {
	if len(stages) == 0 {
		return 0, 0, fmt.Errorf("no FROM")
	}
	user := ""
	for _, in := range stages[len(stages)-1].instrs {
		if in.cmd == "USER" {
			user = in.args
		}
	}
	// Both numbers: with a user alone, a user missing from /etc/passwd
	// runs with group 0.
	m := regexp.MustCompile(`^(\d+):(\d+)$`).FindStringSubmatch(user)
	if m == nil {
		return 0, 0, fmt.Errorf("final stage: USER %q, want numeric user:group", user)
	}
	uid, _ = strconv.Atoi(m[1])
	gid, _ = strconv.Atoi(m[2])
	if uid == 0 || gid == 0 {
		return 0, 0, fmt.Errorf("final stage: USER %q is root", user)
	}
	return uid, gid, nil
}

// goVersion is the Go release go.mod asks for: its toolchain line, else its
// go line.
func goVersion(goMod string) string {
	v := ""
	for _, l := range strings.Split(goMod, "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] == "go" && v == "" {
			v = f[1]
		}
		if len(f) == 2 && f[0] == "toolchain" {
			return strings.TrimPrefix(f[1], "go")
		}
	}
	return v
}

// checkBaseImage refuses an image reference without a tag, with the tag
// latest, or with no version in its name or tag.
func checkBaseImage(ref string) error {
	ref, _, _ = strings.Cut(ref, "@") // a digest pins further; the tag still names the version
	_, tag, ok := strings.Cut(path.Base(ref), ":")
	switch {
	case !ok:
		return fmt.Errorf("base image %q has no tag", ref)
	case tag == "latest":
		return fmt.Errorf("base image %q: latest is not a version", ref)
	case !strings.ContainsAny(path.Base(ref), "0123456789"):
		return fmt.Errorf("base image %q names no version", ref)
	}
	return nil
}

// checkDockerfile returns what is wrong with the Dockerfile text, given
// go.mod's text.
func checkDockerfile(text, goMod string) []error {
	var errs []error
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	stages := parseDockerfile(text)
	if len(stages) < 2 {
		return []error{fmt.Errorf("%d stages, want a build stage and a final one", len(stages))}
	}
	names := map[string]bool{}
	var build *dockerStage
	var goBuild string
	for i := range stages {
		st := &stages[i]
		if !names[st.image] {
			if err := checkBaseImage(st.image); err != nil {
				fail("stage %d: %v", i+1, err)
			}
		}
		names[st.name] = true
		for _, in := range st.instrs {
			if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
				build, goBuild = st, in.args
			}
		}
	}
	if build == nil {
		return append(errs, fmt.Errorf("no stage runs go build"))
	}
	if want := "golang:" + goVersion(goMod) + "-bookworm"; build.image != want {
		fail("build stage FROM %s, want %s (go.mod's Go)", build.image, want)
	}
	if p := build.flags["platform"]; p != "$BUILDPLATFORM" && p != "${BUILDPLATFORM}" {
		fail("build stage --platform=%q, want $BUILDPLATFORM", p)
	}
	args := map[string]bool{}
	for _, in := range build.instrs {
		if in.cmd == "ARG" {
			for _, a := range strings.Fields(in.args) {
				name, _, _ := strings.Cut(a, "=")
				args[name] = true
			}
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=", "-X main.revision="} {
		if !strings.Contains(goBuild, want) {
			fail("go build lacks %s", want)
		}
	}
	for _, v := range []string{"TARGETOS", "TARGETARCH"} {
		env := map[string]string{"TARGETOS": "GOOS", "TARGETARCH": "GOARCH"}[v]
		if !args[v] {
			fail("build stage declares no ARG %s", v)
		}
		if !strings.Contains(goBuild, env+"=$"+v) && !strings.Contains(goBuild, env+"=${"+v+"}") {
			fail("go build does not set %s=$%s", env, v)
		}
	}
	for _, m := range regexp.MustCompile(`-X main\.(\w+)=`).FindAllStringSubmatch(goBuild, -1) {
		if stamped[m[1]] == nil {
			fail("-X main.%s: no such variable in package main", m[1])
		}
	}
	out := ""
	if m := regexp.MustCompile(`-o\s+(\S+)`).FindStringSubmatch(goBuild); m != nil {
		out = m[1]
	}

	final := stages[len(stages)-1]
	if _, _, err := imageUser(stages); err != nil {
		errs = append(errs, err)
	}
	copied := ""
	var entrypoint []string
	for _, in := range final.instrs {
		switch in.cmd {
		case "COPY":
			if f := strings.Fields(in.args); in.flags["from"] == build.name && len(f) == 2 && f[0] == out {
				copied = f[1]
				if strings.HasSuffix(copied, "/") {
					copied += path.Base(out)
				}
			}
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(in.args), &entrypoint); err != nil {
				fail("ENTRYPOINT %s: want the exec form, a JSON array", in.args)
			}
		}
	}
	if copied == "" {
		fail("final stage does not COPY the built binary %q from stage %q", out, build.name)
	}
	if len(entrypoint) == 0 || entrypoint[0] != copied {
		fail("ENTRYPOINT %q, want the copied binary %q", entrypoint, copied)
	}
	return errs
}

// readRepoFile reads a file of the repository, given its path from the top.
func readRepoFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(repoRoot + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	for _, err := range checkDockerfile(readRepoFile(t, "Dockerfile"), readRepoFile(t, "go.mod")) {
		t.Error(err)
	}
}

// Each check of checkDockerfile fails on a Dockerfile broken its way.
func TestDockerfileChecksCatchBreakage(t *testing.T) {
	t.Parallel()
	text, goMod := readRepoFile(t, "Dockerfile"), readRepoFile(t, "go.mod")
	goImage := "golang:" + goVersion(goMod) + "-bookworm"
	for _, tc := range []struct{ name, old, new string }{
		{"named user", "USER 65532:65532", "USER nonroot:nonroot"},
		{"user without group", "USER 65532:65532", "USER 65532"},
		{"root", "USER 65532:65532", "USER 0:0"},
		{"cgo", "CGO_ENABLED=0", "CGO_ENABLED=1"},
		{"trimpath", "-trimpath", ""},
		{"entrypoint elsewhere", `ENTRYPOINT ["/usr/local/bin/outbox-relay"]`, `ENTRYPOINT ["/outbox-relay"]`},
		{"entrypoint shell form", `ENTRYPOINT ["/usr/local/bin/outbox-relay"]`, `ENTRYPOINT /usr/local/bin/outbox-relay`},
		{"copied elsewhere", "/out/outbox-relay /usr/local/bin/outbox-relay", "/out/outbox-relay /bin/outbox-relay"},
		{"latest", "static-debian12:nonroot", "static-debian12:latest"},
		{"bare name", goImage, "golang"},
		{"no version", "static-debian12:nonroot", "static:nonroot"},
		{"another Go", goImage, "golang:1.20.0-bookworm"},
		{"no build platform", "--platform=$BUILDPLATFORM ", ""},
		{"no TARGETARCH arg", "ARG TARGETOS TARGETARCH", "ARG TARGETOS"},
		{"GOARCH unset", "GOARCH=$TARGETARCH ", ""},
		{"no revision", "-X main.revision=${REVISION}", ""},
		{"unknown variable", "-X main.revision=", "-X main.revison="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if !strings.Contains(text, tc.old) {
				t.Fatalf("the Dockerfile has no %q to break: update this case", tc.old)
			}
			if errs := checkDockerfile(strings.Replace(text, tc.old, tc.new, 1), goMod); len(errs) == 0 {
				t.Errorf("%q -> %q: no check failed", tc.old, tc.new)
			}
		})
	}
}
