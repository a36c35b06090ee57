package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/batuta-dev/batuta/internal/redact"
)

// app holds the global flags and the environment of one command line.
type app struct {
	env
	dsn     string
	schema  string
	json    bool
	timeout time.Duration
	// now is the clock (tests fix it).
	now func() time.Time
	// log receives the adapters' logs (discarded unless --verbose).
	log     *slog.Logger
	verbose bool
}

func newApp(e env) *app {
	a := &app{env: e, now: e.now}
	if a.now == nil {
		a.now = time.Now
	}
	return a
}

//nolint:gosec // G101: a DSN template in the help text, not a credential
const rootLong = `batuta inspects and operates the runs of a batuta store (PostgreSQL or SQLite)
without writing Go. It works on the store directly: no workflow needs to be
registered, and the orchestrators that run the workflows pick up what it
changes (a retried run, say).

The store is named by --dsn or the BATUTA_DSN environment variable:
  postgres://user:password@host:5432/db   (postgresql:// too; --schema or
                                           BATUTA_SCHEMA picks the schema, default "batuta")
  sqlite:PATH                             (a file name, or a SQLite "file:" URI)
Passwords in a DSN are never printed.

Output is a table for people; --json prints JSON for scripts.

Exit codes:
  0  success
  1  error (database unreachable, run not retryable, ...)
  2  usage error (bad flag or argument)
  3  not found (the run, or every run named, does not exist)
  4  partial success (some of several runs were acted on, some were not)
  5  the store's schema is behind this build: run 'batuta migrate up'`

const rootExample = `  export BATUTA_DSN=postgres://app@db.internal:5432/app
  batuta runs list --state failed --workflow orders
  batuta runs show 0193a7c4-5e1f-7b6a-9d2c-3f4e5a6b7c8d
  batuta runs retry --state failed --workflow orders --wait
  batuta stats --window 24h
  batuta schedules next "CRON_TZ=Europe/Paris 30 2 * * *" -n 5
  batuta migrate status --dsn sqlite:/var/lib/app/batuta.db`

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "batuta",
		Short:         "Inspect and operate the runs of a batuta store",
		Long:          rootLong,
		Example:       rootExample,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unknown command %q", args[0])
			}
			return usageErrorf("a command is needed: %s", subcommandNames(cmd))
		},
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if a.dsn == "" {
				a.dsn = a.getenv("BATUTA_DSN")
			}
			if a.schema == "" {
				a.schema = a.getenv("BATUTA_SCHEMA")
			}
			if a.schema == "" {
				a.schema = "batuta"
			}
			a.log = slog.New(slog.DiscardHandler)
			if a.verbose {
				a.log = slog.New(slog.NewTextHandler(a.stderr, nil))
			}
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return withCode(exitUsage, err) })
	pf := root.PersistentFlags()
	pf.StringVar(&a.dsn, "dsn", "", "the store: postgres://... or sqlite:PATH (default $BATUTA_DSN)")
	pf.StringVar(&a.schema, "schema", "", "PostgreSQL schema of the store (default $BATUTA_SCHEMA, else batuta)")
	pf.BoolVar(&a.json, "json", false, "print JSON instead of a table")
	pf.DurationVar(&a.timeout, "timeout", 0, "give up after this long (0: no limit)")
	pf.BoolVarP(&a.verbose, "verbose", "v", false, "log the store adapters' messages to stderr")
	root.AddCommand(a.runsCommand(), a.statsCommand(), a.schedulesCommand(), a.migrateCommand())
	if c := a.dlqCommand(); c != nil {
		root.AddCommand(c)
	}
	root.CompletionOptions.HiddenDefaultCmd = true
	return root
}

// redact masks the password of the DSN in err's text; the result still
// unwraps to err (errors.Is, errors.As and the exit code work).
func (a *app) redact(err error) error {
	if err == nil || a.dsn == "" {
		return err
	}
	dsn := a.dsn
	if rest, ok := strings.CutPrefix(dsn, "sqlite:"); ok {
		dsn = rest
	}
	return redact.Err(err, dsn)
}

// context returns ctx bounded by --timeout.
func (a *app) context(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout > 0 {
		return context.WithTimeout(ctx, a.timeout)
	}
	return context.WithCancel(ctx)
}

// out is where results go.
func (a *app) out(cmd *cobra.Command) io.Writer { return cmd.OutOrStdout() }

// errNoDSN is returned by commands that need a store when none is named.
var errNoDSN = errors.New("no store named: pass --dsn postgres://... or --dsn sqlite:PATH, or set BATUTA_DSN")

// requireDSN fails with a usage error when no DSN is set.
func (a *app) requireDSN() error {
	if a.dsn == "" {
		return withCode(exitUsage, errNoDSN)
	}
	return nil
}

// sanitize makes s fit one table cell: control characters (newlines of a
// panic stack, tabs that would break the columns) become spaces, and it is
// cut to max runes with an ellipsis.
func sanitize(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if max > 0 {
		if r := []rune(s); len(r) > max {
			s = string(r[:max-1]) + "…"
		}
	}
	return s
}

func printf(w io.Writer, format string, args ...any) {
	_, _ = fmt.Fprintf(w, format, args...)
}
