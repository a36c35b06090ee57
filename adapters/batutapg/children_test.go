package batutapg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// Child workflows and fan-out (core child.go) end to end on PostgreSQL:
// outputs come back as JSON, in item order, under the MaxParallel cap.
func TestChildAndForEachOnPostgres(t *testing.T) {
	pool := storeTestPool(t, 8)
	st := newTestStore(t, pool, Config{})
	const items, limit = 300, 4
	var cur, peak atomic.Int32
	o, err := batuta.New(batuta.Config{Store: st, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), PollInterval: 50 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "label", Tasks: []batuta.Task{{Name: "print",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			n, err := batuta.EventData[int](in)
			return map[string]int{"label": n * 10}, err
		}}}}))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "order", Tasks: []batuta.Task{
		{Name: "ship", Child: &batuta.ChildWorkflow{Workflow: "label",
			Event: func(*batuta.Input) (batuta.Event, error) { return batuta.Event{Data: []byte("7")}, nil }}},
		{Name: "each", Retry: batuta.RetryPolicy{MaxAttempts: 1}, ForEach: &batuta.ForEach{
			MaxParallel: limit, Tolerate: 1,
			Items: func(*batuta.Input) ([]any, error) {
				out := make([]any, items)
				for i := range out {
					out[i] = i
				}
				return out, nil
			}},
			Run: func(_ context.Context, in *batuta.Input) (any, error) {
				n := cur.Add(1)
				defer cur.Add(-1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				i, err := batuta.EventData[int](in)
				if i == 13 {
					return nil, errors.New("unlucky")
				}
				return i * 2, err
			}},
		{Name: "sum", Deps: []string{"ship", "each"}, Run: func(_ context.Context, in *batuta.Input) (any, error) {
			l, err := batuta.ChildOutput[map[string]int](in, "ship", "print")
			if err != nil {
				return nil, err
			}
			outs, err := batuta.ItemOutputs[*int](in, "each")
			if err != nil {
				return nil, err
			}
			sum := l["label"]
			for i, v := range outs {
				switch {
				case i == 13 && v != nil:
					return nil, fmt.Errorf("item 13 failed but has output %d", *v)
				case i != 13 && (v == nil || *v != 2*i):
					return nil, fmt.Errorf("item %d: output %v", i, v)
				case v != nil:
					sum += *v
				}
			}
			return sum, nil
		}},
	}}))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(runCtx) }()
	defer func() { stop(); require.NoError(t, <-done) }()

	id, err := o.Submit(ctx, "order", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	want := 70 + (items*(items-1) - 2*13)
	got, err := batuta.OutputAs[int](r.Task("sum").Output)
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.LessOrEqual(t, peak.Load(), int32(limit), "MaxParallel holds on PostgreSQL")

	child, err := o.GetRun(ctx, r.Task("ship").Child)
	require.NoError(t, err)
	require.Equal(t, &batuta.RunLink{RunID: id, Task: "ship"}, child.Parent)
	kids, err := o.ListRuns(ctx, batuta.RunFilter{Parent: id, ParentTask: "each", Limit: 1000})
	require.NoError(t, err)
	require.Len(t, kids, items)
}
