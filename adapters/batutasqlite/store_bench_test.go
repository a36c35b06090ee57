package batutasqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// diamondWorkflow is the benchmark's 5-task diamond: a -> (b, c, d) -> e.
// Each task returns a small output; no task sleeps.
func diamondWorkflow(name string) *batuta.Workflow {
	body := func(ctx context.Context, in *batuta.Input) (any, error) {
		return map[string]string{"task": in.Task()}, nil
	}
	return &batuta.Workflow{Name: name, Tasks: []batuta.Task{
		{Name: "a", Run: body},
		{Name: "b", Deps: []string{"a"}, Run: body},
		{Name: "c", Deps: []string{"a"}, Run: body},
		{Name: "d", Deps: []string{"a"}, Run: body},
		{Name: "e", Deps: []string{"b", "c", "d"}, Run: body},
	}}
}

// BenchmarkDiamondRuns measures end-to-end throughput of 5-task diamond runs
// through an orchestrator on a SQLite file: b.N runs are submitted by 8
// goroutines and the benchmark ends when all have succeeded. It reports
// runs/s and tasks/s. The in-memory store is measured alongside for
// reference. Run it with a fixed count, e.g.
//
//	go test -run '^$' -bench DiamondRuns -benchtime 2000x ./adapters/batutasqlite
func BenchmarkDiamondRuns(b *testing.B) {
	for _, sync := range []string{"FULL", "NORMAL"} {
		b.Run("sqlite/synchronous="+sync, func(b *testing.B) {
			s, err := Open(context.Background(), filepath.Join(b.TempDir(), "bench.db"), Config{Synchronous: sync, Logger: quietLogger()})
			require.NoError(b, err)
			defer func() { require.NoError(b, s.Close()) }()
			benchDiamond(b, s)
		})
	}
	b.Run("memory", func(b *testing.B) {
		benchDiamond(b, batuta.NewMemoryStore(batuta.MemoryStoreConfig{}))
	})
}

func benchDiamond(b *testing.B, s batuta.Store) {
	ctx := context.Background()
	o, err := batuta.New(batuta.Config{
		Store:      s,
		Logger:     quietLogger(),
		NoLogHooks: true,
	})
	require.NoError(b, err)
	require.NoError(b, o.Register(diamondWorkflow("diamond")))
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(runCtx) }()
	defer func() {
		stop()
		require.NoError(b, <-done)
	}()

	const submitters = 8
	ids := make([]string, b.N)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, submitters)
	for w := 0; w < submitters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < b.N; i += submitters {
				id, err := o.SubmitBlocking(ctx, "diamond", batuta.Event{ID: fmt.Sprintf("ev-%d", i)})
				if err != nil {
					errs <- err
					return
				}
				ids[i] = id
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(b, err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	for _, id := range ids {
		r, err := o.Wait(waitCtx, id)
		require.NoError(b, err)
		require.Equal(b, batuta.RunSucceeded, r.State)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "runs/s")
	b.ReportMetric(float64(5*b.N)/elapsed.Seconds(), "tasks/s")
}

// BenchmarkStoreDiamond drives the Store directly, without an orchestrator:
// per run one CreateRun, then claims and completions (one completion per
// call, as the orchestrator's workers send them) until the run succeeded.
// It measures the store's own cost per 5-task diamond run on one goroutine.
func BenchmarkStoreDiamond(b *testing.B) {
	for _, sync := range []string{"FULL", "NORMAL"} {
		b.Run("synchronous="+sync, func(b *testing.B) {
			ctx := context.Background()
			s, err := Open(ctx, filepath.Join(b.TempDir(), "bench.db"), Config{Synchronous: sync, Logger: quietLogger()})
			require.NoError(b, err)
			defer func() { require.NoError(b, s.Close()) }()
			b.ResetTimer()
			storeDiamonds(b, s, time.Now())
		})
	}
}

// BenchmarkStoreDiamondWaiting is BenchmarkStoreDiamond (synchronous=NORMAL)
// with 30,000 runs waiting in the store: 10,000 delayed by an hour, 10,000
// behind a full workflow-level group and 10,000 of a paused workflow (held
// by claims before the timer starts). The claim index holds none of them,
// so ns/op should match BenchmarkStoreDiamond's.
func BenchmarkStoreDiamondWaiting(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(b.TempDir(), "bench.db"), Config{Synchronous: "NORMAL", Logger: quietLogger()})
	require.NoError(b, err)
	defer func() { require.NoError(b, s.Close()) }()
	now := time.Now()
	_, err = s.SetPaused(ctx, "paused", true)
	require.NoError(b, err)
	group := &batuta.ConcurrencySpec{Key: "queued/k", Max: 1}
	for i := 0; i < 10; i++ {
		batch := make([]batuta.NewRun, 0, 3000)
		for j := 0; j < 1000; j++ {
			n := i*1000 + j
			d := batuta.NewRun{ID: fmt.Sprintf("d-%06d", n), Workflow: "delayed", Event: batuta.Event{ID: fmt.Sprint(n)},
				Tasks: []batuta.TaskSpec{{Name: "x"}}, CreatedAt: now, StartAt: now.Add(time.Hour)}
			q := batuta.NewRun{ID: fmt.Sprintf("q-%06d", n), Workflow: "queued", Event: batuta.Event{ID: fmt.Sprint(n)},
				Tasks: []batuta.TaskSpec{{Name: "x"}}, CreatedAt: now, Concurrency: group}
			p := batuta.NewRun{ID: fmt.Sprintf("p-%06d", n), Workflow: "paused", Event: batuta.Event{ID: fmt.Sprint(n)},
				Tasks: []batuta.TaskSpec{{Name: "x"}}, CreatedAt: now}
			batch = append(batch, d, q, p)
		}
		_, err := s.CreateRuns(ctx, batch)
		require.NoError(b, err)
	}
	// One queued run takes the group's slot and keeps it.
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "b", Workflows: []string{"queued"}, Limit: 1, Now: now, LeaseUntil: now.Add(time.Hour)})
	require.NoError(b, err)
	require.Len(b, cs, 1)
	// The paused workflow's ready tasks are held by the first claims that
	// meet them (up to 1,000 per claim), once.
	for i := 0; i < 20; i++ {
		cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "b", Workflows: []string{"paused"}, Limit: 1, Now: now, LeaseUntil: now.Add(time.Hour)})
		require.NoError(b, err)
		require.Empty(b, cs)
	}
	b.ResetTimer()
	storeDiamonds(b, s, now)
}

// storeDiamonds runs b.N 5-task diamond runs through s alone: per run one
// CreateRun, then claims and completions (one completion per call, as the
// orchestrator's workers send them) until the run succeeded.
func storeDiamonds(b *testing.B, s *Store, now time.Time) {
	ctx := context.Background()
	specs := []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{0}}, {Name: "d", Deps: []int{0}}, {Name: "e", Deps: []int{1, 2, 3}}}
	start := time.Now()
	for i := 0; i < b.N; i++ {
		_, _, err := s.CreateRun(ctx, batuta.NewRun{ID: fmt.Sprintf("run-%09d", i), Workflow: "diamond",
			Event: batuta.Event{ID: fmt.Sprint(i), Time: now}, Tasks: specs, CreatedAt: now})
		require.NoError(b, err)
		for done := false; !done; {
			cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "b", Limit: 16, Now: now, LeaseUntil: now.Add(time.Minute)})
			require.NoError(b, err)
			require.NotEmpty(b, cs)
			for _, c := range cs {
				res, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded,
					Attempt: c.Attempt, Output: json.RawMessage(`{"ok":true}`), StartedAt: now, FinishedAt: now}})
				require.NoError(b, err)
				require.NoError(b, res[0].Err)
				done = done || res[0].RunFinished != ""
			}
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "runs/s")
}
