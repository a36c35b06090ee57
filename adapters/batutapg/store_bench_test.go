package batutapg

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// Store-level benchmarks of the claim/complete fast path: b.N runs are
// created first (not timed), then a few goroutines claim and complete
// every task. ns/op is per run.
//
//	go test -run XXX -bench 'ClaimComplete' -count 3 ./adapters/batutapg

func BenchmarkClaimCompleteSingle(b *testing.B)  { benchClaimComplete(b, 1) }
func BenchmarkClaimCompleteDiamond(b *testing.B) { benchClaimComplete(b, 4) }

// BenchmarkCreateRun: one single-task run per op through CreateRun
// (Submit's store call, without a claim), one goroutine: the round trip.
func BenchmarkCreateRun(b *testing.B) {
	pool := storeTestPool(b, 4)
	s := newTestStore(b, pool, Config{Logger: quiet()})
	ctx := context.Background()
	tasks := benchTasks(1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := s.CreateRun(ctx, batuta.NewRun{ID: newRunID(), Workflow: "bench", CreatedAt: time.Now(),
			Event: batuta.Event{ID: fmt.Sprint(i), Data: json.RawMessage(`{"n":1}`)}, Tasks: tasks}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCreateRunClaim: one single-task run per op through
// CreateRunsAndClaim, its task claimed for the caller (a Submit with a
// worker idle), with the claiming create statement and with the insert and
// the plain claim apart.
func BenchmarkCreateRunClaim(b *testing.B) {
	for _, general := range []bool{false, true} {
		name := "claiming"
		if general {
			name = "general"
		}
		b.Run(name, func(b *testing.B) {
			pool := storeTestPool(b, 4)
			s := newTestStore(b, pool, Config{Logger: quiet()})
			s.noCreateClaim = general
			ctx := context.Background()
			tasks := benchTasks(1)
			op := func(i int) {
				now := time.Now()
				_, cs, err := s.CreateRunsAndClaim(ctx, []batuta.NewRun{{ID: newRunID(), Workflow: "bench", CreatedAt: now,
					Event: batuta.Event{ID: fmt.Sprint(i), Data: json.RawMessage(`{"n":1}`)}, Tasks: tasks}},
					batuta.ClaimParams{Owner: "w", Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute)})
				if err != nil {
					b.Fatal(err)
				}
				if len(cs) != 1 {
					b.Fatalf("op %d claimed %d tasks, want 1", i, len(cs))
				}
			}
			op(-1) // a new store's first claim reads the hints
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				op(i)
			}
			b.StopTimer()
			want := int64(b.N)
			if general {
				want = 0
			}
			if n := s.createClaims.Load(); n != want {
				b.Fatalf("%d tasks claimed by the claiming create statement, want %d", n, want)
			}
		})
	}
}

// BenchmarkCreateRuns1000: CreateRuns of 1,000 single-task runs per op
// (SubmitMany's store call); runs/s reported.
func BenchmarkCreateRuns1000(b *testing.B) {
	pool := storeTestPool(b, 4)
	s := newTestStore(b, pool, Config{Logger: quiet()})
	ctx := context.Background()
	tasks := benchTasks(1)
	batch := make([]batuta.NewRun, 1000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for k := range batch {
			batch[k] = batuta.NewRun{ID: newRunID(), Workflow: "bench", CreatedAt: time.Now(),
				Event: batuta.Event{ID: fmt.Sprintf("%d-%d", i, k), Data: json.RawMessage(`{"n":1}`)}, Tasks: tasks}
		}
		b.StartTimer()
		if _, err := s.CreateRuns(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "runs/s")
}

// benchTasks returns the task specs of a run of n tasks: one task, or a
// diamond (a -> b, c -> d) for 4.
func benchTasks(n int) []batuta.TaskSpec {
	if n == 1 {
		return []batuta.TaskSpec{{Name: "a"}}
	}
	return []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{0}}, {Name: "d", Deps: []int{1, 2}}}
}

func benchClaimComplete(b *testing.B, tasks int) {
	pool := storeTestPool(b, 16)
	s := newTestStore(b, pool, Config{Logger: quiet()})
	now := time.Now()
	walc := benchWAL(b, s)
	createBenchRuns(b, s, "bench", b.N, benchTasks(tasks), now)
	wal0 := benchWAL(b, s)
	b.ResetTimer()
	drainClaimComplete(b, s, b.N*tasks, 4, 16)
	b.StopTimer()
	// Load-independent figures: the WAL written per run, creating it and
	// draining it (the server's, so other sessions' writes count too:
	// compare medians), and the updates of runs that were not HOT, per
	// run.
	b.ReportMetric(float64(wal0-walc)/float64(b.N), "create-wal-B/run")
	b.ReportMetric(float64(benchWAL(b, s)-wal0)/float64(b.N), "wal-B/run")
	upd, hot := runUpdates(context.Background(), b, pool, s.schema)
	b.ReportMetric(float64(upd-hot)/float64(b.N), "nonhot-upd/run")
}

// benchWAL returns the server's WAL insert position in bytes.
func benchWAL(b *testing.B, s *Store) int64 {
	var n int64
	if err := s.queryRow(context.Background(), "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint", nil, &n); err != nil {
		b.Fatal(err)
	}
	return n
}

// createBenchRuns records n runs of workflow wf in batches.
func createBenchRuns(tb testing.TB, s *Store, wf string, n int, tasks []batuta.TaskSpec, now time.Time) {
	tb.Helper()
	ctx := context.Background()
	for i := 0; i < n; i += 1000 {
		var batch []batuta.NewRun
		for k := i; k < min(n, i+1000); k++ {
			batch = append(batch, batuta.NewRun{
				ID: newRunID(), Workflow: wf, CreatedAt: now,
				Event: batuta.Event{ID: fmt.Sprintf("%s-%d", wf, k)}, Tasks: tasks,
			})
		}
		if _, err := s.CreateRuns(ctx, batch); err != nil {
			tb.Fatal(err)
		}
	}
}

// drainClaimComplete claims and completes (succeeded) total tasks with
// workers goroutines claiming up to limit tasks at a time.
func drainClaimComplete(tb testing.TB, s *Store, total, workers, limit int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var done atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	out := json.RawMessage(`{"ok":true}`)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("bench-%d", w)
			for done.Load() < int64(total) && ctx.Err() == nil {
				now := time.Now()
				cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: owner, Limit: limit, Now: now, LeaseUntil: now.Add(time.Minute)})
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				if len(cs) == 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				comps := make([]batuta.Completion, len(cs))
				for i, c := range cs {
					comps[i] = batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: c.Attempt,
						Output: out, StartedAt: now, FinishedAt: time.Now()}
				}
				res, err := s.CompleteTasks(ctx, comps)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				for _, r := range res {
					if r.Err != nil {
						firstErr.CompareAndSwap(nil, r.Err)
						return
					}
				}
				done.Add(int64(len(cs)))
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		tb.Fatal(err)
	}
	if ctx.Err() != nil {
		tb.Fatalf("drained %d of %d tasks before the deadline", done.Load(), total)
	}
}

// BenchmarkChainStep: one op is one boundary of a 10-task chain, the
// worker's CompleteTasksAndClaim of a task that claims its successor
// (one goroutine; the completion of each run's last task, which claims
// the next run's first, counts as an op too).
func BenchmarkChainStep(b *testing.B) {
	pool := storeTestPool(b, 4)
	s := newTestStore(b, pool, Config{Logger: quiet()})
	ctx := context.Background()
	chain := chainSpecs(10, "t%d")
	createBenchRuns(b, s, "bench", b.N/len(chain)+1, chain, time.Now())
	p := func() batuta.ClaimParams {
		now := time.Now()
		return batuta.ClaimParams{Owner: "bench", Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute)}
	}
	cs, err := s.ClaimTasks(ctx, p())
	if err != nil || len(cs) != 1 {
		b.Fatal(err, len(cs))
	}
	out := json.RawMessage(`{"ok":true}`)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := cs[0]
		now := time.Now()
		comp := []batuta.Completion{{ClaimRef: c.Ref(), Attempt: c.Attempt, Outcome: batuta.OutcomeSucceeded, Output: out, StartedAt: now, FinishedAt: now}}
		var res []batuta.CompleteResult
		if res, cs, err = s.CompleteTasksAndClaim(ctx, comp, p()); err != nil || res[0].Err != nil {
			b.Fatal(err, res)
		}
		if len(cs) == 0 {
			if cs, err = s.ClaimTasks(ctx, p()); err != nil || len(cs) != 1 {
				b.Fatal(err, len(cs))
			}
		}
	}
}

// BenchmarkChainLink: the step of a chain with no other work waiting (a
// worker's completion claiming the run's next task), one goroutine, through
// the link statement and the lean step statement it replaces for a task
// with one dependent, in turn run by run (so that the machine's drift
// falls on both alike). Each run is created and its first task claimed
// outside the timing, its last task completed outside it. Reported: the
// median call per statement (link-p50-µs, lean-p50-µs) beside the mean
// over both.
func BenchmarkChainLink(b *testing.B) {
	pool := storeTestPool(b, 4)
	s := newTestStore(b, pool, Config{Logger: quiet()})
	ctx := context.Background()
	chain := chainSpecs(6, "t%d")
	p := func() batuta.ClaimParams {
		now := time.Now()
		return batuta.ClaimParams{Owner: "bench", Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute)}
	}
	out := json.RawMessage(`{"ok":true}`)
	complete := func(c batuta.Claim) []batuta.Claim {
		now := time.Now()
		comp := []batuta.Completion{{ClaimRef: c.Ref(), Attempt: c.Attempt, Outcome: batuta.OutcomeSucceeded, Output: out, StartedAt: now, FinishedAt: now}}
		res, cs, err := s.CompleteTasksAndClaim(ctx, comp, p())
		if err != nil || res[0].Err != nil {
			b.Fatal(err, res)
		}
		return cs
	}
	variants := []struct {
		name   string
		noLink bool
	}{{"link", false}, {"lean", true}}
	took := make([][]time.Duration, len(variants))
	var cs []batuta.Claim
	k, v := 0, 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(cs) == 0 || cs[0].Task == chain[len(chain)-1].Name {
			b.StopTimer()
			if len(cs) > 0 {
				complete(cs[0])
			}
			v = k % len(variants)
			s.noLink = variants[v].noLink
			createBenchRuns(b, s, fmt.Sprint("chain", k), 1, chain, time.Now()) // a workflow, and so an event, of its own
			k++
			var err error
			if cs, err = s.ClaimTasks(ctx, p()); err != nil || len(cs) != 1 {
				b.Fatal(err, len(cs))
			}
			b.StartTimer()
		}
		t0 := time.Now()
		if cs = complete(cs[0]); len(cs) != 1 {
			b.Fatal("the step claimed nothing")
		}
		took[v] = append(took[v], time.Since(t0))
	}
	b.StopTimer()
	for v, d := range took {
		if len(d) > 0 {
			slices.Sort(d)
			b.ReportMetric(float64(d[len(d)/2].Microseconds()), variants[v].name+"-p50-µs")
		}
	}
	if b.N >= 10 && s.links.Load() == 0 {
		b.Fatal("not the statements benchmarked")
	}
}
