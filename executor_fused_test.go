package batuta_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// TestAttemptTimesFollowCausality: with the memory store a worker claims
// its next task together with a completion and, for a chain, uses that
// completion's end as the next attempt's start. No attempt may start
// before the run was created or before any of its dependencies finished,
// whichever worker ran them (here: several workers, layered and chained
// tasks, runs submitted while others run).
func TestAttemptTimesFollowCausality(t *testing.T) {
	t.Parallel()
	var tasks []batuta.Task
	const layers, width = 6, 4
	for l := range layers {
		for x := range width {
			tk := batuta.Task{Name: fmt.Sprintf("l%d-%d", l, x), Run: noop}
			if l > 0 {
				tk.Deps = []string{fmt.Sprintf("l%d-%d", l-1, x), fmt.Sprintf("l%d-%d", l-1, (x+1)%width)}
			}
			tasks = append(tasks, tk)
		}
	}
	tasks = append(tasks, batuta.Task{Name: "tail", Deps: []string{"l5-0"}, Run: noop})
	tasks = append(tasks, batuta.Task{Name: "tail2", Deps: []string{"tail"}, Run: noop})
	o := setup(t, batuta.Config{Workers: 4}, &batuta.Workflow{Name: "w", Tasks: tasks})
	ctx := waitCtx(t)
	var ids []string
	for range 50 {
		id, err := o.Submit(ctx, "w", batuta.Event{})
		require.NoError(t, err)
		ids = append(ids, id)
	}
	for _, r := range waitAll(t, o, ids) {
		require.Equal(t, batuta.RunSucceeded, r.State)
		for _, tr := range r.Tasks {
			require.Len(t, tr.Attempts, 1)
			a := tr.Attempts[0]
			require.False(t, a.StartedAt.Before(r.CreatedAt), "task %s started before its run was created", tr.Name)
			require.False(t, a.FinishedAt.Before(a.StartedAt), "task %s finished before it started", tr.Name)
			for _, d := range tr.Deps {
				df := r.Task(d).Attempts[0].FinishedAt
				require.False(t, a.StartedAt.Before(df), "task %s started %v before its dependency %s finished", tr.Name, df.Sub(a.StartedAt), d)
			}
		}
	}
}
