package testenv

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Python is Debian's interpreter, where the python3-* packages that
// .ci/services installs (psycopg2, pika, the recipes' stacks) live; a
// pyenv or virtualenv python3 on PATH would not see them.
const Python = "/usr/bin/python3"

// RequirePython fails the test, with the packages to install, unless
// Python can import every module of mods ("module:debian-package").
func RequirePython(t testing.TB, mods ...string) {
	t.Helper()
	for _, m := range mods {
		mod, pkg, ok := strings.Cut(m, ":")
		if !ok {
			pkg = "python3-" + mod
		}
		if out, err := exec.Command(Python, "-c", "import "+mod).CombinedOutput(); err != nil {
			t.Fatalf("%s cannot import %s (%v: %s)\nhint: apt-get install %s, or run .ci/services", Python, mod, err, out, pkg)
		}
	}
}

// PythonCommand returns a command running script with args under Python,
// with the test's PostgreSQL and RabbitMQ URLs in its environment as
// OUTBOX_DATABASE_URL and OUTBOX_AMQP_URL: never in argv, where they
// would show in ps and in failure messages with their passwords.
func (e *Env) PythonCommand(ctx context.Context, script string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, Python, append([]string{script}, args...)...)
	cmd.Env = append(os.Environ(), "OUTBOX_DATABASE_URL="+e.URL, "OUTBOX_AMQP_URL="+AMQPURL())
	return cmd
}
