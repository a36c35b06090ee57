package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

var ruleOrder = []batuta.JoinRule{batuta.AllSucceeded, batuta.AllDone, batuta.OneSucceeded, batuta.OneFailed, batuta.AllFailed, batuta.NoneFailed}

func failPermanently(context.Context, *batuta.Input) (any, error) {
	return nil, batuta.Permanent(errors.New("boom"))
}

// TestJoinTableEndToEnd runs one workflow per row of the table in
// docs/workflows.md through an Orchestrator with the memory store. Each
// outcome is produced for real: succeeded and failed by a task body,
// upstream_failed by an AllSucceeded task after a failure (so the failure
// is two levels above the joins), skipped by a OneFailed task after a
// success. Every rule joins the row's producers; every cell is checked.
func TestJoinTableEndToEnd(t *testing.T) {
	t.Parallel()
	rows, err := batuta.ParseJoinTable("docs/workflows.md")
	require.NoError(t, err)
	require.Len(t, rows, 15)
	var ran sync.Map
	mark := func(context.Context, *batuta.Input) (any, error) { return "ok", nil }
	join := func(ctx context.Context, in *batuta.Input) (any, error) {
		ran.Store(in.RunID()+"/"+in.Task(), true)
		return nil, nil
	}
	var wfs []*batuta.Workflow
	for i, row := range rows {
		wf := &batuta.Workflow{Name: fmt.Sprintf("row-%d", i)}
		var deps []string
		for _, st := range row.Present {
			switch st {
			case batuta.TaskSucceeded:
				wf.Tasks = append(wf.Tasks, batuta.Task{Name: "s", Run: mark})
				deps = append(deps, "s")
			case batuta.TaskFailed:
				wf.Tasks = append(wf.Tasks, batuta.Task{Name: "f", Run: failPermanently})
				deps = append(deps, "f")
			case batuta.TaskUpstreamFailed:
				wf.Tasks = append(wf.Tasks,
					batuta.Task{Name: "u-root", Run: failPermanently},
					batuta.Task{Name: "u", Deps: []string{"u-root"}, Run: join})
				deps = append(deps, "u")
			case batuta.TaskSkipped:
				wf.Tasks = append(wf.Tasks,
					batuta.Task{Name: "k-root", Run: mark},
					batuta.Task{Name: "k", Deps: []string{"k-root"}, When: batuta.OneFailed, Run: join})
				deps = append(deps, "k")
			default:
				t.Fatalf("row %d: outcome %s", i, st)
			}
		}
		for _, rule := range ruleOrder {
			wf.Tasks = append(wf.Tasks, batuta.Task{Name: "j-" + rule.String(), Deps: deps, When: rule, Run: join})
		}
		wfs = append(wfs, wf)
	}
	o := setup(t, batuta.Config{}, wfs...)
	ctx := waitCtx(t)
	ids := make([]string, len(rows))
	for i := range rows {
		ids[i], err = o.Submit(ctx, fmt.Sprintf("row-%d", i), batuta.Event{})
		require.NoError(t, err)
	}
	for i, row := range rows {
		r, err := o.Wait(ctx, ids[i])
		require.NoError(t, err)
		// The producers really ended as the row says.
		for _, st := range row.Present {
			name := map[batuta.TaskState]string{batuta.TaskSucceeded: "s", batuta.TaskFailed: "f", batuta.TaskUpstreamFailed: "u", batuta.TaskSkipped: "k"}[st]
			require.Equal(t, st, r.Task(name).State, "row %v: producer %s", row.Present, name)
		}
		anyFailed := false
		for k, rule := range ruleOrder {
			tr := r.Task("j-" + rule.String())
			_, did := ran.Load(ids[i] + "/" + tr.Name)
			switch want := row.Want[k]; want {
			case "runs":
				require.Equal(t, batuta.TaskSucceeded, tr.State, "row %v rule %s", row.Present, rule)
				require.True(t, did, "row %v rule %s did not run", row.Present, rule)
			case "skipped", "upstream_failed":
				require.Equal(t, batuta.TaskState(want), tr.State, "row %v rule %s", row.Present, rule)
				require.False(t, did, "row %v rule %s ran", row.Present, rule)
				require.Empty(t, tr.Attempts)
				require.NotEmpty(t, tr.Error)
				anyFailed = anyFailed || want == "upstream_failed"
			default:
				t.Fatalf("cell %q", want)
			}
		}
		wantRun := batuta.RunSucceeded
		if anyFailed || r.Task("f") != nil || r.Task("u") != nil {
			wantRun = batuta.RunFailed
		}
		require.Equal(t, wantRun, r.State, "row %v", row.Present)
	}
	_, uRan := ran.Load(ids[2] + "/u")
	require.False(t, uRan, "an upstream_failed producer ran")
}

// TestFailureTwoLevelsUp: an upstream_failed task counts as failed further
// down (compensation fires, NoneFailed stops), a plain skip does not.
func TestFailureTwoLevelsUp(t *testing.T) {
	t.Parallel()
	var ran sync.Map
	mark := func(ctx context.Context, in *batuta.Input) (any, error) { ran.Store(in.Task(), true); return nil, nil }
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
		{Name: "charge", Run: failPermanently},
		{Name: "ship", Deps: []string{"charge"}, Run: mark},
		{Name: "notify", Deps: []string{"ship"}, Run: mark},
		{Name: "refund", Deps: []string{"ship"}, When: batuta.OneFailed, Run: mark},
		{Name: "all-failed", Deps: []string{"ship"}, When: batuta.AllFailed, Run: mark},
		{Name: "report", Deps: []string{"ship"}, When: batuta.NoneFailed, Run: mark},
		{Name: "one-ok", Deps: []string{"ship"}, When: batuta.OneSucceeded, Run: mark},
		{Name: "cleanup", Deps: []string{"ship"}, When: batuta.AllDone, Run: mark},
		// a plain skip two levels up stays a skip
		{Name: "validate", Run: mark},
		{Name: "alert", Deps: []string{"validate"}, When: batuta.OneFailed, Run: mark},
		{Name: "after-alert", Deps: []string{"alert"}, Run: mark},
		{Name: "alert-failed", Deps: []string{"alert"}, When: batuta.OneFailed, Run: mark},
		{Name: "alert-none-failed", Deps: []string{"alert"}, When: batuta.NoneFailed, Run: mark},
		// three levels: an upstream_failed chain still fires compensation
		{Name: "deep-refund", Deps: []string{"notify"}, When: batuta.OneFailed, Run: mark},
	}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	want := map[string]batuta.TaskState{
		"charge": batuta.TaskFailed, "ship": batuta.TaskUpstreamFailed, "notify": batuta.TaskUpstreamFailed,
		"refund": batuta.TaskSucceeded, "all-failed": batuta.TaskSucceeded, "report": batuta.TaskUpstreamFailed,
		"one-ok": batuta.TaskUpstreamFailed, "cleanup": batuta.TaskSucceeded,
		"validate": batuta.TaskSucceeded, "alert": batuta.TaskSkipped, "after-alert": batuta.TaskSkipped,
		"alert-failed": batuta.TaskSkipped, "alert-none-failed": batuta.TaskSucceeded,
		"deep-refund": batuta.TaskSucceeded,
	}
	for name, st := range want {
		require.Equal(t, st, r.Task(name).State, name)
		_, did := ran.Load(name)
		require.Equal(t, st == batuta.TaskSucceeded && name != "charge", did, "ran %s", name)
	}
	require.Equal(t, batuta.RunFailed, r.State)
	require.Contains(t, r.Error, "boom")
	require.Contains(t, r.Task("ship").Error, "charge")
	require.Contains(t, r.Task("notify").Error, "ship is upstream_failed")
}

func TestFireEarlyNeedsOneRule(t *testing.T) {
	t.Parallel()
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	for _, rule := range []batuta.JoinRule{batuta.AllSucceeded, batuta.AllDone, batuta.AllFailed, batuta.NoneFailed} {
		err := o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{
			{Name: "a", Run: noop}, {Name: "b", Deps: []string{"a"}, When: rule, FireEarly: true, Run: noop},
		}})
		require.ErrorIs(t, err, batuta.ErrInvalidWorkflow, rule.String())
		require.Contains(t, err.Error(), "FireEarly")
	}
	for _, rule := range []batuta.JoinRule{batuta.OneSucceeded, batuta.OneFailed} {
		require.NoError(t, o.Register(&batuta.Workflow{Name: "w-" + rule.String(), Tasks: []batuta.Task{
			{Name: "a", Run: noop}, {Name: "b", Deps: []string{"a"}, When: rule, FireEarly: true, Run: noop},
		}}))
	}
}

// TestFireEarlyHedge: a OneSucceeded FireEarly task runs while a sibling
// dependency is still running (the slow one waits for it, so without early
// firing the run could not finish); a plain OneSucceeded task waits for
// both; the run finishes only after the slow dependency.
func TestFireEarlyHedge(t *testing.T) {
	t.Parallel()
	answered := make(chan struct{})
	var (
		mu       sync.Mutex
		seen     = map[string][]batuta.TaskState{}
		fastSeen string
	)
	record := func(in *batuta.Input) {
		mu.Lock()
		defer mu.Unlock()
		for _, u := range in.Upstream() {
			seen[in.Task()] = append(seen[in.Task()], u.State)
		}
	}
	wf := &batuta.Workflow{Name: "hedge", Tasks: []batuta.Task{
		{Name: "slow", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			select {
			case <-answered:
				return "slow", nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}},
		{Name: "fast", Run: func(context.Context, *batuta.Input) (any, error) { return "fast", nil }},
		{Name: "answer", Deps: []string{"slow", "fast"}, When: batuta.OneSucceeded, FireEarly: true,
			Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				record(in)
				v, err := batuta.Output[string](in, "fast")
				if err != nil {
					return nil, err
				}
				if _, err := batuta.Output[string](in, "slow"); err == nil {
					return nil, errors.New("slow already finished: not early")
				}
				mu.Lock()
				fastSeen = v
				mu.Unlock()
				close(answered)
				return v, nil
			}},
		{Name: "after-both", Deps: []string{"slow", "fast"}, When: batuta.OneSucceeded,
			Run: func(ctx context.Context, in *batuta.Input) (any, error) { record(in); return nil, nil }},
	}}
	o := setup(t, batuta.Config{Workers: 4}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "hedge", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	for _, tr := range r.Tasks {
		require.Equal(t, batuta.TaskSucceeded, tr.State, tr.Name)
		require.Len(t, tr.Attempts, 1, "%s ran once", tr.Name)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, "fast", fastSeen)
	require.Len(t, seen["answer"], 2)
	require.False(t, seen["answer"][0].Finished(), "answer saw slow %s", seen["answer"][0])
	require.Equal(t, batuta.TaskSucceeded, seen["answer"][1])
	require.Equal(t, []batuta.TaskState{batuta.TaskSucceeded, batuta.TaskSucceeded}, seen["after-both"])
	// The run waited for slow: Wait returned a finished run in which slow
	// succeeded (checked above). Its timestamps are not compared: they are
	// clock reads by different workers, not the order of the store's writes.
}

// TestFireEarlyAlert: a OneFailed FireEarly task fires at the first failure
// (here one level up: an upstream_failed dependency) while another
// dependency still runs; a OneSucceeded FireEarly task whose dependencies
// all fail is decided once they finished, as upstream_failed.
func TestFireEarlyAlert(t *testing.T) {
	t.Parallel()
	alerted := make(chan struct{})
	var saw []batuta.TaskState
	wf := &batuta.Workflow{Name: "alert", Tasks: []batuta.Task{
		{Name: "bad", Run: failPermanently},
		{Name: "after-bad", Deps: []string{"bad"}, Run: noop},
		{Name: "slow", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			select {
			case <-alerted:
				return nil, batuta.Permanent(errors.New("slow failed too"))
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}},
		{Name: "page", Deps: []string{"after-bad", "slow"}, When: batuta.OneFailed, FireEarly: true,
			Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				for _, u := range in.Upstream() {
					saw = append(saw, u.State)
				}
				close(alerted)
				return nil, nil
			}},
		{Name: "hedge", Deps: []string{"bad", "slow"}, When: batuta.OneSucceeded, FireEarly: true, Run: noop},
	}}
	o := setup(t, batuta.Config{Workers: 4}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "alert", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	require.Equal(t, batuta.TaskUpstreamFailed, r.Task("after-bad").State)
	require.Equal(t, batuta.TaskSucceeded, r.Task("page").State)
	require.Len(t, r.Task("page").Attempts, 1)
	require.Equal(t, batuta.TaskUpstreamFailed, saw[0])
	require.False(t, saw[1].Finished(), "page saw slow %s", saw[1])
	require.Equal(t, batuta.TaskFailed, r.Task("slow").State)
	require.Equal(t, batuta.TaskUpstreamFailed, r.Task("hedge").State)
	require.True(t, strings.Contains(r.Task("hedge").Error, "bad"), r.Task("hedge").Error)
}
