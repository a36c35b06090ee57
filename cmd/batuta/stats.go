package main

import (
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/batuta-dev/batuta"
)

func (a *app) statsCommand() *cobra.Command {
	var window time.Duration
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Per-workflow summary: finished runs, durations, backlog",
		Long: `Summarise each workflow from the store (Store.WorkflowStats): the runs finished in
the last --window by final state with their p50/p95 duration (creation to finish),
and the unfinished runs now: running, pending (due, not started), waiting (delayed,
or every unfinished task waiting) and the age of the oldest pending run, which says
how far behind the workers are.`,
		Example: `  batuta stats
  batuta stats --window 24h --json`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if window <= 0 {
				return usageErrorf("--window %s: must be positive", window)
			}
			ctx, cancel := a.context(cmd.Context())
			defer cancel()
			s, closeStore, err := a.openStore(ctx)
			if err != nil {
				return err
			}
			defer closeStore()
			now := a.now()
			stats, err := s.WorkflowStats(ctx, now.Add(-window), now)
			if err != nil {
				return err
			}
			if stats == nil {
				stats = []batuta.WorkflowStats{}
			}
			if a.json {
				return writeJSON(a.out(cmd), stats)
			}
			writeStats(a.out(cmd), stats, window, now)
			return nil
		},
	}
	cmd.Flags().DurationVar(&window, "window", time.Hour, "summarise the runs finished this long ago or later")
	return cmd
}

// writeStats prints WorkflowStats as a table.
func writeStats(w io.Writer, stats []batuta.WorkflowStats, window time.Duration, now time.Time) {
	if len(stats) == 0 {
		printf(w, "no runs finished in the last %s and none unfinished\n", window)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	printf(tw, "WORKFLOW\tSUCCEEDED\tFAILED\tCANCELED\tP50\tP95\tRUNNING\tPENDING\tWAITING\tOLDEST PENDING\n")
	for _, s := range stats {
		dur := func(d time.Duration) string {
			if s.Succeeded+s.Failed+s.Canceled == 0 {
				return "-"
			}
			return human(d)
		}
		oldest := "-"
		if !s.OldestPending.IsZero() {
			oldest = human(now.Sub(s.OldestPending))
		}
		printf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%d\t%d\t%d\t%s\n", sanitize(s.Workflow, 40), s.Succeeded, s.Failed, s.Canceled,
			dur(s.DurationP50), dur(s.DurationP95), s.Running, s.Pending, s.Waiting, oldest)
	}
	_ = tw.Flush()
	printf(w, "(finished: the last %s)\n", window)
}
