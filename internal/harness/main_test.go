package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

// fakeRelayEnv, set, makes the test binary act as a fake outbox-relay:
// the process tests run it as Relay.Bin, so that they do not depend on
// the real relay building.
const fakeRelayEnv = "HARNESS_FAKE_RELAY"

func TestMain(m *testing.M) {
	if os.Getenv(fakeRelayEnv) != "" {
		os.Exit(fakeRelay(os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}

// fakeRelay is a stand-in for outbox-relay:
//
//   - run: serves /metrics and /statusz on OUTBOX_METRICS_ADDR, logs a
//     line, and exits with FAKE_EXIT (0 by default) on SIGTERM, after a
//     last line without a newline; with FAKE_IGNORE_TERM it ignores SIGTERM.
//   - status: prints {"ok":true} to stdout and a note to stderr.
//   - anything else: says so on stderr and exits 3.
func fakeRelay(args []string) int {
	if len(args) == 0 {
		return 2
	}
	switch args[0] {
	case "status":
		fmt.Println(`{"ok":true}`)
		fmt.Fprintln(os.Stderr, "status read")
		return 0
	case "run":
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", args[0])
		return 3
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if os.Getenv("FAKE_IGNORE_TERM") != "" {
		signal.Ignore(syscall.SIGTERM)
	}
	if addr := os.Getenv("OUTBOX_METRICS_ADDR"); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, "# TYPE outbox_published_total counter\noutbox_published_total 42\n"+
				"# TYPE outbox_connection_up gauge\noutbox_connection_up{kind=\"amqp\"} 1\n")
		})
		mux.HandleFunc("/statusz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "leader: connected") })
		srv := &http.Server{Handler: mux}
		go func() { _ = srv.Serve(ln) }()
		defer func() { _ = srv.Shutdown(context.Background()) }()
	}
	fmt.Fprintf(os.Stderr, "relay started pid=%d\n", os.Getpid())
	<-term
	fmt.Fprint(os.Stderr, "relay stopped")
	code, _ := strconv.Atoi(os.Getenv("FAKE_EXIT"))
	return code
}

// exitCode returns the exit status an error from Stop, Err or Command
// wraps; 0 if none.
func exitCode(err error) int {
	var ee interface{ ExitCode() int }
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return 0
}
