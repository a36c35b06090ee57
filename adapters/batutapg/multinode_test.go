package batutapg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// killableStore is a Store whose process "dies" on kill(): from then on
// every call fails, as if the machine had lost power, so the instance can
// neither complete nor heartbeat its claims.
type killableStore struct {
	*Store
	dead atomic.Bool
}

var errKilled = errors.New("instance killed")

func (k *killableStore) err() error {
	if k.dead.Load() {
		return errKilled
	}
	return nil
}

func (k *killableStore) CreateRun(ctx context.Context, nr batuta.NewRun) (string, bool, error) {
	if err := k.err(); err != nil {
		return "", false, err
	}
	return k.Store.CreateRun(ctx, nr)
}

func (k *killableStore) CreateRunsAndClaim(ctx context.Context, runs []batuta.NewRun, p batuta.ClaimParams) ([]batuta.CreateResult, []batuta.Claim, error) {
	if err := k.err(); err != nil {
		return nil, nil, err
	}
	return k.Store.CreateRunsAndClaim(ctx, runs, p)
}

func (k *killableStore) ClaimTasks(ctx context.Context, p batuta.ClaimParams) ([]batuta.Claim, error) {
	if err := k.err(); err != nil {
		return nil, err
	}
	return k.Store.ClaimTasks(ctx, p)
}

func (k *killableStore) ExtendLeases(ctx context.Context, refs []batuta.ClaimRef, until time.Time) ([]batuta.LeaseStatus, error) {
	if err := k.err(); err != nil {
		return nil, err
	}
	return k.Store.ExtendLeases(ctx, refs, until)
}

func (k *killableStore) CompleteTasks(ctx context.Context, cs []batuta.Completion) ([]batuta.CompleteResult, error) {
	if err := k.err(); err != nil {
		return nil, err
	}
	return k.Store.CompleteTasks(ctx, cs)
}

func (k *killableStore) CompleteTasksAndClaim(ctx context.Context, cs []batuta.Completion, p batuta.ClaimParams) ([]batuta.CompleteResult, []batuta.Claim, error) {
	if err := k.err(); err != nil {
		return nil, nil, err
	}
	return k.Store.CompleteTasksAndClaim(ctx, cs, p)
}

func (k *killableStore) RescueExpired(ctx context.Context, now time.Time, max int) (int, int, error) {
	if err := k.err(); err != nil {
		return 0, 0, err
	}
	return k.Store.RescueExpired(ctx, now, max)
}

func (k *killableStore) CancelRun(ctx context.Context, id, reason string, now time.Time) (bool, error) {
	if err := k.err(); err != nil {
		return false, err
	}
	return k.Store.CancelRun(ctx, id, reason, now)
}

func (k *killableStore) RecordTick(ctx context.Context, s string, tick time.Time) (bool, error) {
	if err := k.err(); err != nil {
		return false, err
	}
	return k.Store.RecordTick(ctx, s, tick)
}

// runFinishCounter counts RunFinished per run, across instances.
type runFinishCounter struct {
	batuta.NopHooks
	mu  sync.Mutex
	per map[string]int
	n   atomic.Int64
}

func (c *runFinishCounter) RunFinished(_ context.Context, r batuta.RunInfo) {
	c.mu.Lock()
	c.per[r.RunID]++
	c.mu.Unlock()
	c.n.Add(1)
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestMultiNode: three orchestrators, each with its own pool and Store, on
// one schema.
func TestMultiNode(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node test skipped in -short mode")
	}
	ctx := testCtx(t)
	base := storeTestPool(t, 4)
	schema := "batuta_mn_" + storeSuffix()
	dropSchemaAtCleanup(t, base, schema)
	require.NoError(t, MigrateSchema(ctx, base, schema))

	t.Run("ShareRunsAndRescueAKilledInstance", func(t *testing.T) {
		const runs = 5000
		finished := &runFinishCounter{per: make(map[string]int)}
		var mu sync.Mutex
		execs := make(map[string][3]int) // run -> executions per instance (while alive)
		var perInstance [3]atomic.Int64
		var stuck atomic.Int64 // tasks caught in flight by the kill

		type node struct {
			ks   *killableStore
			orch *batuta.Orchestrator
		}
		nodes := make([]*node, 3)
		for i := range nodes {
			st, err := New(ctx, storeTestPool(t, 8), Config{Schema: schema, Logger: quiet()})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, st.Close()) })
			ks := &killableStore{Store: st}
			o, err := batuta.New(batuta.Config{
				Store: ks, Workers: 16, LeaseDuration: 2 * time.Second, PollInterval: 200 * time.Millisecond,
				ShutdownGrace: 100 * time.Millisecond, ShutdownKill: 100 * time.Millisecond,
				NoLogHooks: true, Hooks: []batuta.Hooks{finished}, Logger: quiet(), MaxInFlightRuns: -1,
			})
			require.NoError(t, err)
			require.NoError(t, o.Register(&batuta.Workflow{Name: "job", Tasks: []batuta.Task{{
				Name: "work",
				Run: func(ctx context.Context, in *batuta.Input) (any, error) {
					time.Sleep(time.Millisecond) // some work, so claims are in flight when the kill comes
					if ks.dead.Load() {
						// A dead process neither returns nor records anything.
						stuck.Add(1)
						<-ctx.Done()
						return nil, ctx.Err()
					}
					perInstance[i].Add(1)
					mu.Lock()
					e := execs[in.RunID()]
					e[i]++
					execs[in.RunID()] = e
					mu.Unlock()
					return nil, nil
				},
			}}}))
			nodes[i] = &node{ks: ks, orch: o}
		}

		// Submit through all three instances.
		t0 := time.Now()
		ids := make([]string, runs)
		var wg sync.WaitGroup
		for g := 0; g < 12; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := g; k < runs; k += 12 {
					id, err := nodes[k%3].orch.Submit(ctx, "job", batuta.Event{ID: fmt.Sprintf("ev-%d", k)})
					if err != nil {
						t.Error(err)
						return
					}
					ids[k] = id
				}
			}()
		}
		wg.Wait()
		require.False(t, t.Failed())

		t.Logf("submitted %d runs in %s", runs, time.Since(t0))
		t0 = time.Now()
		rctx, stop := context.WithCancel(ctx)
		var rwg sync.WaitGroup
		for _, n := range nodes {
			rwg.Add(1)
			go func() {
				defer rwg.Done()
				if err := n.orch.Run(rctx); err != nil {
					t.Error(err)
				}
			}()
		}
		// Kill instance 2 midway, once it has done its share of work.
		require.Eventually(t, func() bool { return finished.n.Load() >= runs*2/5 && perInstance[2].Load() > 0 },
			60*time.Second, time.Millisecond)
		nodes[2].ks.dead.Store(true)
		require.Eventually(t, func() bool { return finished.n.Load() >= runs }, 60*time.Second, 5*time.Millisecond,
			"runs finished: %d of %d", finished.n.Load())
		t.Logf("all runs finished %s after the instances started", time.Since(t0))
		stop()
		rwg.Wait()
		// The killed instance's Run has returned, abandoning the workers
		// that still retry recording their results; let the "process"
		// come back so they learn their leases are lost, and wait for them.
		nodes[2].ks.dead.Store(false)
		require.Eventually(t, func() bool {
			buf := make([]byte, 1<<20)
			return !bytes.Contains(buf[:runtime.Stack(buf, true)], []byte("batuta.(*executor)"))
		}, 30*time.Second, 10*time.Millisecond, "abandoned workers did not finish")

		finished.mu.Lock()
		defer finished.mu.Unlock()
		mu.Lock()
		defer mu.Unlock()
		twice := 0
		for _, id := range ids {
			require.Equal(t, 1, finished.per[id], "run %s finished %d times", id, finished.per[id])
			e := execs[id]
			// The surviving instances never both ran a task, nor one
			// twice; a task may run again after the killed instance ran
			// it but died before recording it (at least once).
			require.LessOrEqual(t, e[0]+e[1], 1, "run %s executed %v times (per instance)", id, e)
			require.LessOrEqual(t, e[2], 1, "run %s executed %v times (per instance)", id, e)
			require.Positive(t, e[0]+e[1]+e[2], "run %s never executed", id)
			if e[0]+e[1]+e[2] == 2 {
				twice++
			}
		}
		var succeeded, rescued int
		require.NoError(t, base.QueryRow(ctx, "SELECT count(*) FILTER (WHERE state = 'succeeded') FROM "+quoteQualified(schema, "runs")).Scan(&succeeded))
		require.NoError(t, base.QueryRow(ctx, "SELECT count(*) FROM "+quoteQualified(schema, "tasks")+" WHERE rescues > 0").Scan(&rescued))
		require.Equal(t, runs, succeeded)
		t.Logf("executions per instance: %d %d %d (instance 2 killed); tasks caught in flight: %d; tasks rescued: %d; run again after the kill: %d",
			perInstance[0].Load(), perInstance[1].Load(), perInstance[2].Load(), stuck.Load(), rescued, twice)
		for i := range perInstance {
			require.Greater(t, perInstance[i].Load(), int64(runs/20), "instance %d did too little of the work", i)
		}
		// A task is caught in flight either in its body (stuck) or between
		// its body and the record of its result (it runs again: twice);
		// which of the two the kill hits is up to the scheduler.
		require.Positive(t, stuck.Load()+int64(twice), "the kill caught no task in flight")
		require.GreaterOrEqual(t, rescued, 1, "the killed instance's claims were not rescued")
	})

	t.Run("CronTickOncePerSchedule", func(t *testing.T) {
		var orchs []*batuta.Orchestrator
		for i := 0; i < 3; i++ {
			st, err := New(ctx, storeTestPool(t, 4), Config{Schema: schema, Logger: quiet()})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, st.Close()) })
			o, err := batuta.New(batuta.Config{Store: st, NoLogHooks: true, Logger: quiet()})
			require.NoError(t, err)
			require.NoError(t, o.Register(&batuta.Workflow{Name: "tick", Tasks: []batuta.Task{{
				Name: "t", Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil },
			}}}))
			cron, err := batuta.NewCron(batuta.CronConfig{Name: "every-second", Spec: "@every 1s", Logger: quiet()})
			require.NoError(t, err)
			require.NoError(t, o.Bind("tick", cron))
			orchs = append(orchs, o)
		}
		// The three instances run the same schedule for 10 s of wall time.
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		for _, o := range orchs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := o.Run(rctx); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		var n int
		require.NoError(t, base.QueryRow(ctx, "SELECT count(*) FROM "+quoteQualified(schema, "runs")+" WHERE workflow = 'tick'").Scan(&n))
		t.Logf("@every 1s on three instances for 10s: %d runs", n)
		require.InDelta(t, 10, n, 1, "one run per tick, whatever the number of instances")
		last, err := orchs[0].Store().LastTick(ctx, "every-second")
		require.NoError(t, err)
		require.False(t, last.IsZero(), "the last tick is persisted")
	})
}

// TestConcurrentClaimersVolume: 3 instances x 16 claimers on many ready
// tasks: no task claimed twice, no claim larger than its limit. 10,000
// tasks by default; BATUTA_VOLUME=1 makes it 100,000.
func TestConcurrentClaimersVolume(t *testing.T) {
	if testing.Short() {
		t.Skip("volume test skipped in -short mode")
	}
	n := 10000
	if volumeTests() {
		n = 100000
	}
	ctx := testCtx(t)
	pool := storeTestPool(t, 8)
	schema := "batuta_vol_" + storeSuffix()
	dropSchemaAtCleanup(t, pool, schema)
	var stores []*Store
	for i := 0; i < 3; i++ {
		st, err := New(ctx, storeTestPool(t, 16), Config{Schema: schema, DisableListen: true})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, st.Close()) })
		stores = append(stores, st)
	}
	now := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := next.Add(1)
				if k > int64(n) {
					return
				}
				if _, _, err := stores[k%3].CreateRun(ctx, newRunFor("wf", fmt.Sprint(k), now)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	require.False(t, t.Failed())

	const limit = 16
	var mu sync.Mutex
	seen := make(map[string]bool, n)
	tokens := make(map[int64]bool, n)
	errc := make(chan error, 48)
	for i := 0; i < 3; i++ {
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					cs, err := stores[i].ClaimTasks(ctx, batuta.ClaimParams{Owner: fmt.Sprintf("i%d-w%d", i, w), Limit: limit, Now: now, LeaseUntil: now.Add(time.Hour)})
					if err != nil {
						errc <- err
						return
					}
					if len(cs) > limit {
						errc <- fmt.Errorf("claim of limit %d returned %d", limit, len(cs))
						return
					}
					if len(cs) == 0 {
						return
					}
					mu.Lock()
					for _, c := range cs {
						if seen[c.RunID] || tokens[c.Token] {
							mu.Unlock()
							errc <- fmt.Errorf("run %s claimed twice", c.RunID)
							return
						}
						seen[c.RunID], tokens[c.Token] = true, true
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		require.NoError(t, err)
	}
	require.Len(t, seen, n)
}
