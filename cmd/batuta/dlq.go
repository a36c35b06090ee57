package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
)

// dlqFlags name the outbox whose dead rows the dlq commands work on.
type dlqFlags struct {
	outbox string
}

const dlqLong = `Dead letters are the events a trigger gave up on. The CLI works on the dead rows
of an outbox trigger's table (an outbox row that can never become an event: a
payload over the orchestrator's cap, a row that does not decode), in the database
of --dsn: PostgreSQL (--outbox schema.table, default public.batuta_outbox) or
SQLite (--outbox table, default batuta_outbox). A queue trigger's dead-letter
queue lives in its broker: see it in the dashboard, or through
Orchestrator.DeadLetterBoxes in Go.

Every operation is idempotent: redriving or deleting a dead letter that is no
longer there does nothing and is not an error.`

func (a *app) dlqCommand() *cobra.Command {
	var f dlqFlags
	c := groupCommand("dlq", "List, redrive and delete dead letters (outbox dead rows)", dlqLong)
	c.PersistentFlags().StringVar(&f.outbox, "outbox", "", "the outbox table: schema.table for PostgreSQL (default public.batuta_outbox), table for SQLite (default batuta_outbox)")

	var limit int
	var after string
	list := &cobra.Command{
		Use:   "list",
		Short: "List dead letters, oldest first",
		Example: `  batuta dlq list --dsn postgres://app@db/app
  batuta dlq list --dsn sqlite:app.db --outbox orders_outbox --json
  batuta dlq list --limit 100 --after 4711`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 || limit > batuta.MaxDeadLetterLimit {
				return usageErrorf("--limit %d: must be between 1 and %d", limit, batuta.MaxDeadLetterLimit)
			}
			ctx, cancel := a.context(cmd.Context())
			defer cancel()
			box, closeBox, err := a.openDeadLetters(ctx, f)
			if err != nil {
				return err
			}
			defer closeBox()
			items, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{After: after, Limit: limit})
			if err != nil {
				return a.dlqError(err)
			}
			if items == nil {
				items = []batuta.DeadLetterItem{}
			}
			if a.json {
				views := make([]jsonDeadLetter, len(items))
				for i := range items {
					views[i] = viewDeadLetter(&items[i])
				}
				if err := writeJSON(a.out(cmd), views); err != nil {
					return err
				}
			} else {
				writeDeadLetters(a.out(cmd), box.DeadLetterSource(), items)
			}
			if len(items) == limit {
				printf(a.stderr, "more dead letters: add --after %s\n", items[len(items)-1].ID)
			}
			return nil
		},
	}
	list.Flags().IntVarP(&limit, "limit", "n", 50, "list at most this many")
	list.Flags().StringVar(&after, "after", "", "list the dead letters after this ID (the cursor of the previous page)")

	act := func(use, short, verb string, do func(batuta.DeadLetterBox, context.Context, ...string) (int, error)) *cobra.Command {
		var all, dryRun bool
		cmd := &cobra.Command{
			Use:   use + " [ID...]",
			Short: short,
			Example: fmt.Sprintf(`  batuta dlq %[1]s 4711 4712 --dsn postgres://app@db/app
  batuta dlq %[1]s --all --dsn sqlite:app.db --dry-run
  batuta dlq %[1]s --all --json`, use),
			Args: usageArgs(cobra.ArbitraryArgs),
			RunE: func(cmd *cobra.Command, ids []string) error {
				switch {
				case all && len(ids) > 0:
					return usageErrorf("%s: name IDs or --all, not both", use)
				case !all && len(ids) == 0:
					return usageErrorf("%s: name dead-letter IDs, or --all", use)
				}
				ctx, cancel := a.context(cmd.Context())
				defer cancel()
				box, closeBox, err := a.openDeadLetters(ctx, f)
				if err != nil {
					return err
				}
				defer closeBox()
				if all {
					if ids, err = allDeadLetters(ctx, box); err != nil {
						return a.dlqError(err)
					}
				}
				done := 0
				bar := newProgress(a.stderr, a.tty && !a.json && len(ids) > batuta.DefaultDeadLetterLimit, use, len(ids))
				for start := 0; start < len(ids) && !dryRun; start += batuta.DefaultDeadLetterLimit {
					batch := ids[start:min(len(ids), start+batuta.DefaultDeadLetterLimit)]
					n, err := do(box, ctx, batch...)
					if err != nil {
						bar.done()
						if errors.Is(err, batuta.ErrBadDeadLetterID) {
							return a.dlqError(err)
						}
						return withCode(codeIf(done > 0, exitPartial), fmt.Errorf("%s after %d of %d: %w", use, done, len(ids), err))
					}
					done += n
					bar.set(start + len(batch))
				}
				bar.done()
				w := a.out(cmd)
				if a.json {
					return writeJSON(w, struct {
						Action  string   `json:"action"`
						Source  string   `json:"source"`
						DryRun  bool     `json:"dry_run,omitempty"`
						Matched int      `json:"matched"`
						Done    int      `json:"done"`
						IDs     []string `json:"ids"`
					}{use, box.DeadLetterSource(), dryRun, len(ids), done, append([]string{}, ids...)})
				}
				if dryRun {
					printf(w, "dry run: %d dead letter(s) of %s would be %s: %s\n", len(ids), box.DeadLetterSource(), verb, strings.Join(ids, " "))
					return nil
				}
				printf(w, "%s %d of %d dead letter(s) of %s", verb, done, len(ids), box.DeadLetterSource())
				if done < len(ids) {
					printf(w, " (%d no longer there: redriven or deleted already)", len(ids)-done)
				}
				printf(w, "\n")
				return nil
			},
		}
		cmd.Flags().BoolVar(&all, "all", false, "every dead letter of the outbox")
		cmd.Flags().BoolVar(&dryRun, "dry-run", false, "say what would be done; change nothing")
		return cmd
	}
	c.AddCommand(list,
		act("redrive", "Send dead letters back to their outbox, to be fired again as new", "redrove", batuta.DeadLetterBox.Redrive),
		act("delete", "Delete dead letters for good", "deleted", batuta.DeadLetterBox.Delete))
	return c
}

func codeIf(cond bool, code int) int {
	if cond {
		return code
	}
	return exitError
}

// dlqError makes a malformed ID a usage error.
func (a *app) dlqError(err error) error {
	if errors.Is(err, batuta.ErrBadDeadLetterID) {
		return withCode(exitUsage, err)
	}
	return err
}

// allDeadLetters lists the IDs of every dead letter of box.
func allDeadLetters(ctx context.Context, box batuta.DeadLetterBox) ([]string, error) {
	var ids []string
	after := ""
	for {
		page, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{After: after, Limit: batuta.MaxDeadLetterLimit})
		if err != nil {
			return nil, err
		}
		for _, it := range page {
			ids = append(ids, it.ID)
		}
		if len(page) < batuta.MaxDeadLetterLimit || page[len(page)-1].ID == after {
			return ids, nil
		}
		after = page[len(page)-1].ID
	}
}

// openDeadLetters returns the DeadLetterBox of the outbox named by the
// flags, in the database of a.dsn.
func (a *app) openDeadLetters(ctx context.Context, f dlqFlags) (batuta.DeadLetterBox, func(), error) {
	b, err := a.connect(ctx, false)
	if err != nil {
		return nil, nil, err
	}
	switch b.kind {
	case "postgres":
		ob := batutapg.Outbox{}
		if f.outbox != "" {
			schema, table, ok := strings.Cut(f.outbox, ".")
			if !ok {
				schema, table = "", schema
			}
			ob.Schema, ob.Table = schema, table
		}
		t, err := batutapg.NewTrigger(batutapg.TriggerConfig{Pool: b.pool, Outbox: ob, Logger: a.log})
		if err != nil {
			b.close()
			return nil, nil, withCode(exitUsage, fmt.Errorf("--outbox: %w", err))
		}
		return t, b.close, nil
	default:
		t, err := batutasqlite.NewTrigger(batutasqlite.TriggerConfig{DB: b.db, Outbox: batutasqlite.Outbox{Table: f.outbox}, Logger: a.log})
		if err != nil {
			b.close()
			return nil, nil, withCode(exitUsage, fmt.Errorf("--outbox: %w", err))
		}
		return t, b.close, nil
	}
}

// jsonDeadLetter is a dead letter as --json prints it.
type jsonDeadLetter struct {
	ID       string    `json:"id"`
	Reason   string    `json:"reason"`
	Error    string    `json:"error,omitempty"`
	Attempts int       `json:"attempts"`
	Workflow string    `json:"workflow,omitempty"`
	Time     time.Time `json:"time"`
	Event    jsonEvent `json:"event"`
}

func viewDeadLetter(it *batuta.DeadLetterItem) jsonDeadLetter {
	r := &batuta.Run{Event: it.Event}
	return jsonDeadLetter{ID: it.ID, Reason: string(it.Reason), Error: it.Error, Attempts: it.Attempts,
		Workflow: it.Workflow, Time: it.Time, Event: viewRun(r, false).Event}
}

// writeDeadLetters prints dead letters as a table.
func writeDeadLetters(w io.Writer, source string, items []batuta.DeadLetterItem) {
	if len(items) == 0 {
		printf(w, "no dead letters in %s\n", source)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	printf(tw, "ID\tDEAD SINCE\tATTEMPTS\tEVENT\tREASON\tERROR\n")
	for _, it := range items {
		printf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", it.ID, it.Time.UTC().Format(time.RFC3339), it.Attempts,
			sanitize(it.Event.ID, 40), it.Reason, sanitize(it.Error, 70))
	}
	_ = tw.Flush()
}
