// Command batuta inspects and operates the runs kept in a batuta store
// (PostgreSQL or SQLite) without writing Go: list and show runs, retry and
// cancel them one by one or in bulk, explain a cron spec with its
// daylight-saving behaviour, and apply the store's schema migrations.
//
// It works on the Store directly and needs no workflow registered: a retry
// reopens the run in the store, and the orchestrators that run the
// workflow pick it up.
//
//	batuta runs list --dsn postgres://app@db/app --state failed
//	batuta runs retry --dsn sqlite:/var/lib/app/batuta.db --state failed --workflow orders
//	batuta schedules next "CRON_TZ=Europe/Paris 30 2 * * *" -n 5
//	batuta migrate status --dsn "$BATUTA_DSN"
//
// Every command takes --dsn (or the BATUTA_DSN environment variable);
// passwords in it are never printed. Exit codes: 0 success, 1 error, 2
// usage error, 3 not found, 4 partial success (some of several runs could
// not be acted on), 5 the store's schema needs migrating (batuta migrate
// up). See docs/cli.md in the repository.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// Exit codes. They are part of the command's interface: scripts test them.
const (
	exitOK       = 0 // success
	exitError    = 1 // any other error (database unreachable, run not retryable...)
	exitUsage    = 2 // bad flags or arguments
	exitNotFound = 3 // the run (or every run named) does not exist
	exitPartial  = 4 // some of several runs were acted on, some were not
	exitSchema   = 5 // the store's schema is behind this build: run batuta migrate up
)

// exitErr carries an exit code with the error to print.
type exitErr struct {
	code int
	err  error
}

func (e *exitErr) Error() string { return e.err.Error() }
func (e *exitErr) Unwrap() error { return e.err }

// withCode attaches an exit code to err (nil stays nil).
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitErr{code: code, err: err}
}

// usageErrorf returns a usage error (exit code 2).
func usageErrorf(format string, args ...any) error {
	return withCode(exitUsage, fmt.Errorf(format, args...))
}

// env is the process environment the command reads (BATUTA_DSN,
// BATUTA_SCHEMA); tests pass their own.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	// tty reports whether stderr is a terminal (progress bars).
	tty bool
	// now is the clock; nil: time.Now.
	now func() time.Time
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	e := env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, tty: isTerminal(os.Stderr)}
	code := run(ctx, os.Args[1:], e)
	stop()
	os.Exit(code)
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// run executes the command line args and returns the exit code. Errors go
// to e.stderr, with every DSN password masked.
func run(ctx context.Context, args []string, e env) int {
	app := newApp(e)
	root := app.rootCommand() //nolint:contextcheck // the commands take ctx from cobra (ExecuteContextC below)
	root.SetArgs(args)
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	err = app.redact(err)
	code := exitError
	var ee *exitErr
	if errors.As(err, &ee) {
		code = ee.code
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "batuta: ") {
		msg = "batuta: " + msg
	}
	_, _ = fmt.Fprintln(e.stderr, msg)
	if code == exitUsage && cmd != nil {
		_, _ = fmt.Fprintf(e.stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

// groupCommand returns a command that only holds subcommands: run alone or
// with an unknown subcommand, it is a usage error.
func groupCommand(use, short, long string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return usageErrorf("%q needs a subcommand: %s", cmd.CommandPath(), subcommandNames(cmd))
		},
	}
}

func subcommandNames(cmd *cobra.Command) string {
	var s string
	for i, c := range cmd.Commands() {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			continue
		}
		if i > 0 && s != "" {
			s += ", "
		}
		s += c.Name()
	}
	return s
}

// usageArgs makes a cobra argument check's error a usage error.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		return withCode(exitUsage, check(cmd, args))
	}
}
