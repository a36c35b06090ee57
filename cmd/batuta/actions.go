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
)

// actionResult is what retry or cancel did to one run.
type actionResult struct {
	ID string `json:"id"`
	// Status: "done", "skipped" (nothing to do: the run finished or was
	// reopened meanwhile), "not_found" or "error".
	Status string   `json:"status"`
	Reset  []string `json:"reset,omitempty"`
	Error  string   `json:"error,omitempty"`
	// Final is, with --wait, the state the retried run finished in.
	Final batuta.RunState `json:"final_state,omitempty"`
}

// actionSummary is what --json prints for retry and cancel.
type actionSummary struct {
	Action  string `json:"action"`
	DryRun  bool   `json:"dry_run,omitempty"`
	Matched int    `json:"matched"`
	Done    int    `json:"done"`
	Skipped int    `json:"skipped"`
	Failed  int    `json:"failed"`
	// Finished counts, with --wait, the final states of the runs acted on.
	Finished map[batuta.RunState]int `json:"finished,omitempty"`
	Runs     []actionResult          `json:"runs"`
}

// exitCode turns results into the command's exit error: nil when every
// run was acted on or skipped; exitPartial when some were and others
// failed; exitNotFound when every failure was a missing run and none
// succeeded; exitError otherwise.
func (s *actionSummary) exitError() error {
	if s.Failed == 0 {
		return nil
	}
	notFound := 0
	for _, r := range s.Runs {
		if r.Status == "not_found" {
			notFound++
		}
	}
	msg := fmt.Errorf("%s: %d of %d run(s) failed", s.Action, s.Failed, s.Matched)
	switch {
	case s.Done > 0:
		return withCode(exitPartial, msg)
	case notFound == s.Failed:
		return withCode(exitNotFound, fmt.Errorf("%s: %w", s.Action, batuta.ErrRunNotFound))
	default:
		return withCode(exitError, msg)
	}
}

// bulk runs act on each run, with a progress bar on a terminal.
type bulk struct {
	a        *app
	action   string // "retry", "cancel"
	explicit bool   // IDs named on the command line (not a filter)
	dryRun   bool
	// wait: after acting, wait for the runs acted on to finish.
	wait bool
	act  func(ctx context.Context, id string) actionResult
}

func (b *bulk) run(cmd *cobra.Command, s batuta.Store, ids []string) error {
	ctx := cmd.Context()
	sum := &actionSummary{Action: b.action, DryRun: b.dryRun, Matched: len(ids), Runs: []actionResult{}}
	bar := newProgress(b.a.stderr, b.a.tty && !b.a.json && len(ids) > 1, b.action, len(ids))
	for i, id := range ids {
		if err := ctx.Err(); err != nil {
			bar.done()
			return fmt.Errorf("%s: interrupted after %d of %d runs: %w", b.action, i, len(ids), err)
		}
		var r actionResult
		if b.dryRun {
			r = actionResult{ID: id, Status: "skipped"}
		} else {
			r = b.act(ctx, id)
		}
		switch r.Status {
		case "done":
			sum.Done++
		case "skipped":
			sum.Skipped++
		default:
			sum.Failed++
		}
		sum.Runs = append(sum.Runs, r)
		bar.set(i + 1)
	}
	bar.done()
	var waitErr error
	if b.wait && !b.dryRun && sum.Done > 0 {
		waitErr = b.waitFinished(ctx, s, sum)
	}
	w := b.a.out(cmd)
	if b.a.json {
		if err := writeJSON(w, sum); err != nil {
			return err
		}
	} else {
		writeActionTable(w, sum, b.explicit || b.dryRun || sum.Failed > 0)
	}
	if err := sum.exitError(); err != nil {
		return err
	}
	if waitErr != nil {
		return waitErr
	}
	if sum.Finished != nil {
		ok := sum.Finished[batuta.RunSucceeded]
		msg := fmt.Errorf("%s: %d of %d run(s) did not succeed", b.action, sum.Done-ok, sum.Done)
		switch {
		case ok == sum.Done:
		case ok > 0:
			return withCode(exitPartial, msg)
		default:
			return withCode(exitError, msg)
		}
	}
	return nil
}

// waitPoll is how often --wait reads the runs it waits for.
const waitPoll = 500 * time.Millisecond

// waitFinished polls the runs acted on until each finished (or ctx ends,
// bounded by --timeout), recording their final states in sum. A bar shows
// how many finished.
func (b *bulk) waitFinished(ctx context.Context, s batuta.Store, sum *actionSummary) error {
	left := map[string]int{} // run ID -> index in sum.Runs
	for i, r := range sum.Runs {
		if r.Status == "done" {
			left[r.ID] = i
		}
	}
	sum.Finished = map[batuta.RunState]int{}
	bar := newProgress(b.a.stderr, b.a.tty && !b.a.json, "finished", len(left))
	defer bar.done()
	for {
		for id, i := range left {
			r, err := s.GetRun(ctx, id)
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				return fmt.Errorf("wait for run %s: %w", id, err)
			}
			if r.Finished() {
				sum.Runs[i].Final = r.State
				sum.Finished[r.State]++
				delete(left, id)
			}
		}
		bar.set(sum.Done - len(left))
		if len(left) == 0 {
			return nil
		}
		t := time.NewTimer(waitPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: waited for %d run(s), %d still unfinished: %w", b.action, sum.Done, len(left), ctx.Err())
		case <-t.C:
		}
	}
}

// writeActionTable prints the per-run results (all of them, or only the
// failed ones) and a summary line.
func writeActionTable(w io.Writer, sum *actionSummary, all bool) {
	var rows []actionResult
	for _, r := range sum.Runs {
		if all || (r.Status != "done" && r.Status != "skipped") {
			rows = append(rows, r)
		}
	}
	if len(rows) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		printf(tw, "RUN\tRESULT\tDETAIL\n")
		for _, r := range rows {
			status := r.Status
			if sum.DryRun {
				status = "would " + sum.Action
			}
			detail := r.Error
			if detail == "" && len(r.Reset) > 0 {
				detail = "reset " + strings.Join(r.Reset, ", ")
			}
			printf(tw, "%s\t%s\t%s\n", r.ID, status, sanitize(detail, 0))
		}
		_ = tw.Flush()
	}
	verb := map[string]string{"retry": "retried", "cancel": "canceled"}[sum.Action]
	if sum.DryRun {
		printf(w, "dry run: %d run(s) would be %s\n", sum.Matched, verb)
		return
	}
	printf(w, "%s %d of %d run(s)", verb, sum.Done, sum.Matched)
	if sum.Skipped > 0 {
		printf(w, ", %d skipped (nothing to do)", sum.Skipped)
	}
	if sum.Failed > 0 {
		printf(w, ", %d failed", sum.Failed)
	}
	printf(w, "\n")
	if sum.Finished != nil {
		n := 0
		var parts []string
		for _, st := range []batuta.RunState{batuta.RunSucceeded, batuta.RunFailed, batuta.RunCanceled} {
			if c := sum.Finished[st]; c > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", c, st))
				n += c
			}
		}
		if n < sum.Done {
			parts = append(parts, fmt.Sprintf("%d unfinished", sum.Done-n))
		}
		printf(w, "finished: %s\n", strings.Join(parts, ", "))
	}
}

// resultOf classifies an error of RetryRun or CancelRun.
func resultOf(id string, err error, skippable bool) actionResult {
	switch {
	case err == nil:
		return actionResult{ID: id, Status: "done"}
	case errors.Is(err, batuta.ErrRunNotFound):
		return actionResult{ID: id, Status: "not_found", Error: "run not found"}
	case skippable && errors.Is(err, batuta.ErrNotRetryable):
		return actionResult{ID: id, Status: "skipped", Error: err.Error()}
	case errors.Is(err, batuta.ErrNotRetryable):
		return actionResult{ID: id, Status: "error", Error: "cannot be retried (unfinished, or succeeded: retry it with --from TASK): " + err.Error()}
	default:
		return actionResult{ID: id, Status: "error", Error: err.Error()}
	}
}

// bulkTargets resolves the runs a retry or cancel acts on: the IDs given,
// or the runs the filter flags select.
func (a *app) bulkTargets(ctx context.Context, s batuta.Store, ids []string, ff *filterFlags, defaults ...batuta.RunState) ([]string, error) {
	if len(ids) > 0 {
		return ids, nil
	}
	f, err := ff.filter(a.now(), defaults...)
	if err != nil {
		return nil, err
	}
	return selectRuns(ctx, s, f, 500)
}

// checkTargets validates the IDs/filter combination before the store is
// opened.
func checkTargets(ids []string, ff *filterFlags, action string) error {
	switch {
	case len(ids) > 0 && ff.set():
		return usageErrorf("%s: name run IDs or filter flags, not both", action)
	case len(ids) == 0 && !ff.set():
		return usageErrorf("%s: name run IDs, or select runs with filter flags (--state, --workflow, ...)", action)
	}
	_, err := ff.filter(batuta.SystemClock{}.Now())
	return err
}

func (a *app) runsRetryCommand() *cobra.Command {
	var (
		ff     filterFlags
		from   string
		dryRun bool
		wait   bool
	)
	cmd := &cobra.Command{
		Use:   "retry [ID...]",
		Short: "Retry failed or canceled runs from where they failed",
		Long: `Reopen failed or canceled runs: their failed, canceled and upstream-failed tasks,
and every task downstream of them, run again with a fresh retry budget; the tasks
that succeeded keep their outputs. A run keeps its ID and its history of
attempts. The orchestrators that run the workflow pick the runs up.

Name runs by ID, or select them with filter flags (--state defaults to failed).
With --from TASK, that task and every task downstream of it run again, whatever
their state (a succeeded run can be retried that way).

With filter flags the runs are listed first (a fixed set: runs failing meanwhile
are left alone), then retried one by one, with a progress bar on a terminal. A
run reopened by someone else meanwhile is skipped.

With --wait the command then waits until every retried run finished (polling the
store; an orchestrator must be running the workflow), prints how they ended, and
exits 0 only if all succeeded (4 if some did, 1 if none did).`,
		Example: `  batuta runs retry 0193a7c4-5e1f-7b6a-9d2c-3f4e5a6b7c8d
  batuta runs retry --state failed --workflow orders
  batuta runs retry --workflow orders --error "connection refused" --since 2h --dry-run
  batuta runs retry 0193a7c4-5e1f-7b6a-9d2c-3f4e5a6b7c8d --from charge
  batuta runs retry --state failed --workflow orders --wait --timeout 10m`,
		Args: usageArgs(cobra.ArbitraryArgs),
		RunE: func(cmd *cobra.Command, ids []string) error {
			if err := checkTargets(ids, &ff, "retry"); err != nil {
				return err
			}
			ctx, cancel := a.context(cmd.Context())
			defer cancel()
			cmd.SetContext(ctx)
			s, closeStore, err := a.openStore(ctx)
			if err != nil {
				return err
			}
			defer closeStore()
			targets, err := a.bulkTargets(ctx, s, ids, &ff, batuta.RunFailed)
			if err != nil {
				return err
			}
			b := &bulk{a: a, action: "retry", explicit: len(ids) > 0, dryRun: dryRun, wait: wait,
				act: func(ctx context.Context, id string) actionResult {
					res, err := s.RetryRun(ctx, id, batuta.RetryParams{From: from, Now: a.now()})
					r := resultOf(id, err, len(ids) == 0)
					r.Reset = res.Reset
					return r
				}}
			return b.run(cmd, s, targets)
		},
	}
	ff.register(cmd.Flags())
	cmd.Flags().StringVar(&from, "from", "", "rerun this task and every task downstream of it")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list the runs that would be retried; change nothing")
	cmd.Flags().BoolVar(&wait, "wait", false, "then wait until the retried runs finish (bound it with --timeout); exit 0 only if all succeeded")
	return cmd
}

func (a *app) runsCancelCommand() *cobra.Command {
	var (
		ff     filterFlags
		reason string
		dryRun bool
	)
	cmd := &cobra.Command{
		Use:   "cancel [ID...]",
		Short: "Cancel unfinished runs",
		Long: `Cancel unfinished runs: their pending tasks are canceled at once, their running
tasks when their worker next reports. A run that already finished is skipped.

Name runs by ID, or select them with filter flags (--state defaults to pending and
running). With filter flags, a progress bar shows on a terminal.`,
		Example: `  batuta runs cancel 0193a7c4-5e1f-7b6a-9d2c-3f4e5a6b7c8d --reason "duplicate order"
  batuta runs cancel --workflow orders --state pending --dry-run
  batuta runs cancel --workflow orders --subject customer-42`,
		Args: usageArgs(cobra.ArbitraryArgs),
		RunE: func(cmd *cobra.Command, ids []string) error {
			if err := checkTargets(ids, &ff, "cancel"); err != nil {
				return err
			}
			ctx, cancel := a.context(cmd.Context())
			defer cancel()
			cmd.SetContext(ctx)
			s, closeStore, err := a.openStore(ctx)
			if err != nil {
				return err
			}
			defer closeStore()
			targets, err := a.bulkTargets(ctx, s, ids, &ff, batuta.RunPending, batuta.RunRunning)
			if err != nil {
				return err
			}
			b := &bulk{a: a, action: "cancel", explicit: len(ids) > 0, dryRun: dryRun,
				act: func(ctx context.Context, id string) actionResult {
					unfinished, err := s.CancelRun(ctx, id, reason, a.now())
					r := resultOf(id, err, false)
					if err == nil && !unfinished {
						r = actionResult{ID: id, Status: "skipped", Error: "already finished"}
					}
					return r
				}}
			return b.run(cmd, s, targets)
		},
	}
	ff.register(cmd.Flags())
	cmd.Flags().StringVar(&reason, "reason", "canceled with the batuta CLI", "why, recorded as the run's error")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list the runs that would be canceled; change nothing")
	return cmd
}
