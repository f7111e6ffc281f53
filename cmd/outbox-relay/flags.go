package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// subcommand parses a command's arguments and returns what it does. It
// runs before the configuration is read, so that -h works whatever the
// environment holds, and a bad argument is reported before any
// connection. Its errors are usage errors (exit 2), or a *helpRequest.
type subcommand func(args []string) (action, error)

// action is a parsed command, run with the configuration.
type action func(ctx context.Context, e *env) error

// helpRequest is -h, -help or --help: text goes to stdout, exit 0.
type helpRequest struct{ text string }

func (h *helpRequest) Error() string { return "help requested" }

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

// flags is a command's flag set and what its -h says.
type flags struct {
	*flag.FlagSet
	synopsis string // after "outbox-relay ", e.g. "dead retry [-all] [ID...]"
	about    string // what the command does, then anything to add
}

func newFlags(name, synopsis, about string) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// parse returns the errors, and help writes the flags where it wants.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &flags{FlagSet: fs, synopsis: synopsis, about: about}
}

// parse parses args with flags and positional arguments in any order
// (`dead retry 5 -all` as `dead retry -all 5`; "--" ends the flags) and
// returns the positional ones.
func (f *flags) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, &helpRequest{f.help()}
			}
			return nil, fmt.Errorf("%w (outbox-relay %s -h lists the flags)", err, f.Name())
		}
		rest := f.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// parseNoArgs is parse for a command that takes flags only.
func (f *flags) parseNoArgs(args []string) error {
	pos, err := f.parse(args)
	if err == nil && len(pos) > 0 {
		err = fmt.Errorf("unexpected argument %q (outbox-relay %s -h for help)", pos[0], f.Name())
	}
	return err
}

// help is the text of the command's -h.
func (f *flags) help() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: outbox-relay %s\n\n%s\n", f.synopsis, f.about)
	hasFlags := false
	f.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		b.WriteString("\nFlags:\n")
		f.SetOutput(&b)
		f.PrintDefaults()
		f.SetOutput(io.Discard)
	}
	return b.String()
}

// duration adds a duration flag whose bad value is explained (the flag
// package's own says only "parse error"). A backquoted word in usage names
// the value in -h, e.g. "-older-than D".
func (f *flags) duration(name string, value time.Duration, usage string) *time.Duration {
	p := &value
	f.durationVar(p, name, usage)
	return p
}

// durationVar is duration into p, whose value is the default.
func (f *flags) durationVar(p *time.Duration, name, usage string) {
	f.Var((*durationValue)(p), name, usage)
}

// durationValue is a time.Duration as a flag.Value.
type durationValue time.Duration

func (d *durationValue) String() string { return shortDuration(time.Duration(*d)) }

func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("want a duration such as 168h, 30m or 90s")
	}
	*d = durationValue(v)
	return nil
}
