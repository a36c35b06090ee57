package batutapg

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// Flow control on the PostgreSQL store across processes: several Store
// instances on one schema stand for several processes (each has its own
// pool, listener and liveness loop; they share nothing but the database).

// flowStores returns n Stores on one fresh schema, each on its own pool.
func flowStores(t *testing.T, n int) []*Store {
	t.Helper()
	first := storeTestPool(t, 8)
	schema := "batuta_fl_" + storeSuffix()
	dropSchemaAtCleanup(t, first, schema)
	out := make([]*Store, n)
	for i := range out {
		pool := first
		if i > 0 {
			pool = storeTestPool(t, 8)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		s, err := New(ctx, pool, Config{Schema: schema, Logger: quiet()})
		cancel()
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, s.Close()) })
		out[i] = s
	}
	return out
}

// highWater tracks the most holders of each key at once.
type highWater struct {
	mu   sync.Mutex
	cur  map[string]int
	high map[string]int
}

func newHighWater() *highWater { return &highWater{cur: map[string]int{}, high: map[string]int{}} }

func (h *highWater) enter(k string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cur[k]++
	if h.cur[k] > h.high[k] {
		h.high[k] = h.cur[k]
	}
}

func (h *highWater) leave(k string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cur[k]--
}

func (h *highWater) max() (string, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	best, n := "", 0
	for k, v := range h.high {
		if v > n {
			best, n = k, v
		}
	}
	return best, n
}

// TestFlowLimitsAcrossInstances: three Store instances on one database,
// four claimers each: the runs of each workflow-level key held at once
// (from the claim of their task to its completion, as the claimers see
// it) never exceed Max, nor do the running tasks of a task-level key, and
// every run finishes.
func TestFlowLimitsAcrossInstances(t *testing.T) {
	t.Parallel()
	stores := flowStores(t, 3)
	ctx := testCtx(t)
	const keys, perKey, wfMax, taskMax = 8, 12, 2, 3
	now := time.Now()
	var runs []batuta.NewRun
	for k := 0; k < keys; k++ {
		for i := 0; i < perKey; i++ {
			nr := newRunFor("limited", fmt.Sprintf("k%d-%d", k, i), now,
				batuta.TaskSpec{Name: "a", Concurrency: &batuta.ConcurrencySpec{Key: "limited/a", Max: taskMax}},
				batuta.TaskSpec{Name: "b", Deps: []int{0}})
			nr.Concurrency = &batuta.ConcurrencySpec{Key: fmt.Sprintf("limited:k%d", k), Max: wfMax}
			runs = append(runs, nr)
		}
	}
	// Created through all three instances, in batches.
	for i := 0; i < len(runs); i += 16 {
		_, err := stores[(i/16)%3].CreateRuns(ctx, runs[i:min(i+16, len(runs))])
		require.NoError(t, err)
	}
	keyOf := map[string]string{}
	for _, nr := range runs {
		keyOf[nr.ID] = nr.Concurrency.Key
	}
	runHW, taskHW := newHighWater(), newHighWater()
	var finished atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(45 * time.Second)
	for w := 0; w < 12; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			claimLoop(ctx, t, stores[w%3], fmt.Sprintf("w%d", w), "limited", 3,
				func() bool { return finished.Load() < int64(len(runs)) && time.Now().Before(deadline) },
				func(cs []batuta.Claim) {
					for _, c := range cs {
						if c.Task == "a" { // the run's first claim: it holds a slot until b is done
							runHW.enter(keyOf[c.RunID])
							taskHW.enter("limited/a")
						}
					}
					time.Sleep(time.Millisecond) // the work
					for _, c := range cs {
						if c.Task == "a" {
							taskHW.leave("limited/a")
						}
					}
					// Leave before completing: the measured count is a lower
					// bound of what the store holds, so a breach is real.
					for _, c := range cs {
						if c.Task == "b" {
							runHW.leave(keyOf[c.RunID])
						}
					}
				},
				func(r batuta.CompleteResult) {
					if r.Err != nil {
						t.Error(r.Err)
					}
					if r.RunFinished != "" {
						finished.Add(1)
					}
				})
		}()
	}
	wg.Wait()
	require.EqualValues(t, len(runs), finished.Load(), "every run finished")
	k, n := runHW.max()
	require.LessOrEqual(t, n, wfMax, "workflow-level key %s held %d runs at once", k, n)
	require.Equal(t, wfMax, n, "the limit was reached (the test exercised it)")
	_, n = taskHW.max()
	require.LessOrEqual(t, n, taskMax, "task-level key held %d running tasks", n)
	t.Logf("high-water marks: %d runs per key (Max %d), %d running tasks of the task key (Max %d)", wfMax, wfMax, n, taskMax)
	var active, waiting int
	require.NoError(t, stores[0].queryRow(ctx, "SELECT coalesce(sum(active), 0), coalesce(sum(waiting), 0) FROM "+stores[0].schema+".run_groups", nil, &active, &waiting))
	require.Zero(t, active+waiting, "every slot was given back")
	require.NoError(t, stores[0].queryRow(ctx, "SELECT coalesce(sum(active), 0) FROM "+stores[0].schema+".task_groups", nil, &active))
	require.Zero(t, active)
}

// claimLoop claims up to limit tasks of wf as owner and completes them as
// succeeded while more() holds: held sees each claim's tasks between the
// claim and the completion (the work), result each completion's result.
func claimLoop(ctx context.Context, t *testing.T, s *Store, owner, wf string, limit int,
	more func() bool, held func([]batuta.Claim), result func(batuta.CompleteResult)) {
	for more() {
		n := time.Now()
		cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: owner, Workflows: []string{wf},
			Limit: limit, Now: n, LeaseUntil: n.Add(time.Minute)})
		if err != nil {
			t.Error(err)
			return
		}
		if len(cs) == 0 {
			time.Sleep(time.Millisecond)
			continue
		}
		held(cs)
		comps := make([]batuta.Completion, 0, len(cs))
		for _, c := range cs {
			comps = append(comps, batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: c.Attempt,
				StartedAt: n, FinishedAt: time.Now()})
		}
		res, err := s.CompleteTasks(ctx, comps)
		if err != nil {
			t.Error(err)
			return
		}
		for _, r := range res {
			result(r)
		}
	}
}

// TestFlowRateAcrossInstances: concurrent reservations through three
// instances get slots that never exceed the GCRA bound in any window of
// length Per.
func TestFlowRateAcrossInstances(t *testing.T) {
	t.Parallel()
	stores := flowStores(t, 3)
	ctx := testCtx(t)
	spec := batuta.RateSpec{Key: "api", Limit: 20, Per: 200 * time.Millisecond, Burst: 4}
	var mu sync.Mutex
	var slots []time.Time
	var wg sync.WaitGroup
	for w := 0; w < 9; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				slot, err := stores[w%3].ReserveRate(ctx, spec, time.Now())
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				slots = append(slots, slot)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(slots, func(i, j int) bool { return slots[i].Before(slots[j]) })
	bound := spec.Limit + spec.Burst - 1
	worst := 0
	for i := range slots {
		j := i
		for j < len(slots) && slots[j].Sub(slots[i]) < spec.Per {
			j++
		}
		worst = max(worst, j-i)
	}
	require.LessOrEqual(t, worst, bound, "starts in a window of %v", spec.Per)
	t.Logf("%d reservations; at most %d in any %v window (bound %d)", len(slots), worst, spec.Per, bound)

	_, err := stores[0].ReserveRate(ctx, batuta.RateSpec{Key: "x", Limit: 0, Per: time.Second, Burst: 1}, time.Now())
	require.ErrorIs(t, err, batuta.ErrInvalidConfig)
}

func flowClaim(t *testing.T, s *Store, wf string, now time.Time, limit int) []batuta.Claim {
	t.Helper()
	cs, err := s.ClaimTasks(testCtx(t), batuta.ClaimParams{Owner: "w", Workflows: []string{wf}, Limit: limit, Now: now, LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	return cs
}

func flowComplete(t *testing.T, s *Store, cs []batuta.Claim, at time.Time) []batuta.CompleteResult {
	t.Helper()
	var comps []batuta.Completion
	for _, c := range cs {
		comps = append(comps, batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: c.Attempt, StartedAt: at, FinishedAt: at})
	}
	res, err := s.CompleteTasks(testCtx(t), comps)
	require.NoError(t, err)
	return res
}

// TestFlowDelayPriorityPause: delayed runs are not claimed before their
// time and NextDue names it; priorities order claims; a paused workflow's
// tasks are not claimed, on any instance, until it is resumed.
func TestFlowDelayPriorityPause(t *testing.T) {
	t.Parallel()
	stores := flowStores(t, 2)
	s, other := stores[0], stores[1]
	ctx := testCtx(t)
	now := time.Now()
	later := now.Add(time.Hour)
	d := newRunFor("wf", "delayed", now)
	d.StartAt = later
	_, _, err := s.CreateRun(ctx, d)
	require.NoError(t, err)
	for i, p := range []int{0, 5, -1, 5} {
		nr := newRunFor("wf", fmt.Sprintf("p%d", i), now.Add(time.Duration(i)*time.Millisecond))
		nr.Priority = p
		_, _, err := s.CreateRun(ctx, nr)
		require.NoError(t, err)
	}
	var order []string
	for {
		cs := flowClaim(t, other, "wf", now.Add(time.Second), 1)
		if len(cs) == 0 {
			break
		}
		order = append(order, cs[0].Event.ID)
	}
	require.Equal(t, []string{"p1", "p3", "p0", "p2"}, order, "priority first, then due time; the delayed run waits")
	due, err := other.NextDue(ctx, []string{"wf"}, now)
	require.NoError(t, err)
	require.WithinDuration(t, later, due, time.Millisecond)
	r, err := other.GetRun(ctx, d.ID)
	require.NoError(t, err)
	require.WithinDuration(t, later, r.StartAt, time.Millisecond)
	require.WithinDuration(t, later, r.Tasks[0].NotBefore, time.Millisecond)

	changed, err := s.SetPaused(ctx, "wf", true)
	require.NoError(t, err)
	require.True(t, changed)
	changed, err = other.SetPaused(ctx, "wf", true)
	require.NoError(t, err)
	require.False(t, changed)
	p, err := other.PausedWorkflows(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"wf"}, p)
	due, err = other.NextDue(ctx, []string{"wf"}, now)
	require.NoError(t, err)
	require.True(t, due.IsZero(), "NextDue ignores paused workflows")
	require.Empty(t, flowClaim(t, other, "wf", later.Add(time.Second), 10), "paused: nothing claimed, not even the due delayed run")
	_, _, err = s.CreateRun(ctx, newRunFor("wf", "while-paused", now))
	require.NoError(t, err)
	require.Empty(t, flowClaim(t, other, "wf", later.Add(time.Second), 10))

	// Resuming wakes the other instance.
	drainWork(other.WorkAvailable())
	changed, err = s.SetPaused(ctx, "wf", false)
	require.NoError(t, err)
	require.True(t, changed)
	select {
	case <-other.WorkAvailable():
	case <-time.After(10 * time.Second):
		t.Fatal("resume did not notify the other instance")
	}
	cs := flowClaim(t, other, "wf", later.Add(time.Second), 10)
	require.Len(t, cs, 2, "the delayed run (now due) and the one created while paused")
}

// TestFlowFairness: one key with many queued runs and many quiet keys
// (Max 1 each): groups take turns, so the quiet keys finish while the busy
// one has done only a few runs.
func TestFlowFairness(t *testing.T) {
	t.Parallel()
	s := flowStores(t, 1)[0]
	ctx := testCtx(t)
	now := time.Now()
	var runs []batuta.NewRun
	key := map[string]string{}
	add := func(k string, n int) {
		for i := 0; i < n; i++ {
			nr := newRunFor("fair", fmt.Sprintf("%s-%d", k, i), now)
			nr.Concurrency = &batuta.ConcurrencySpec{Key: "fair:" + k, Max: 1}
			runs = append(runs, nr)
			key[nr.ID] = k
		}
	}
	add("busy", 300) // created first: the oldest runs
	for q := 0; q < 20; q++ {
		add(fmt.Sprintf("q%d", q), 3)
	}
	_, err := s.CreateRuns(ctx, runs)
	require.NoError(t, err)
	busyDone, quietLeft := 0, 60
	for quietLeft > 0 {
		cs := flowClaim(t, s, "fair", time.Now(), 8)
		require.NotEmpty(t, cs)
		for i, r := range flowComplete(t, s, cs, time.Now()) {
			require.NoError(t, r.Err)
			if key[cs[i].RunID] == "busy" {
				busyDone++
			} else {
				quietLeft--
			}
		}
	}
	require.LessOrEqual(t, busyDone, 6, "the busy key did %d runs while 20 quiet keys did 3 each", busyDone)
	t.Logf("busy key: %d runs done when the quiet keys had finished", busyDone)
}

// TestFlowDebounceAndCancelStrategies: debounce merges into the pending
// run; CancelNewest rejects over the limit; CancelInProgress cancels the
// oldest.
func TestFlowDebounceAndCancelStrategies(t *testing.T) {
	t.Parallel()
	s := flowStores(t, 1)[0]
	ctx := testCtx(t)
	now := time.Now()
	deb := &batuta.DebounceSpec{Key: "user1", Window: time.Second, MaxWait: 3 * time.Second}
	r1 := newRunFor("deb", "e1", now)
	r1.Debounce = deb
	res, err := s.CreateRuns(ctx, []batuta.NewRun{r1})
	require.NoError(t, err)
	require.True(t, res[0].Created)
	r2 := newRunFor("deb", "e2", now.Add(500*time.Millisecond))
	r2.Event.Data = []byte(`"second"`)
	r2.Debounce = deb
	res, err = s.CreateRuns(ctx, []batuta.NewRun{r2})
	require.NoError(t, err)
	require.Equal(t, batuta.CreateResult{ID: r1.ID, Debounced: true}, res[0])
	got, err := s.GetRun(ctx, r1.ID)
	require.NoError(t, err)
	require.Equal(t, "e2", got.Event.ID)
	require.WithinDuration(t, now.Add(1500*time.Millisecond), got.StartAt, time.Millisecond)
	for i, at := range []time.Duration{1400 * time.Millisecond, 2300 * time.Millisecond} {
		r := newRunFor("deb", fmt.Sprintf("e%d", i+3), now.Add(at))
		r.Debounce = deb
		id, created, err := s.CreateRun(ctx, r)
		require.NoError(t, err)
		require.False(t, created)
		require.Equal(t, r1.ID, id)
	}
	got, err = s.GetRun(ctx, r1.ID)
	require.NoError(t, err)
	require.WithinDuration(t, now.Add(3*time.Second), got.StartAt, time.Millisecond, "MaxWait bounds the wait")

	spec := func(st batuta.ConcurrencyStrategy) *batuta.ConcurrencySpec {
		return &batuta.ConcurrencySpec{Key: "g:" + st.String(), Max: 1, Strategy: st}
	}
	a := newRunFor("cn", "a", now)
	a.Concurrency = spec(batuta.ConcurrencyCancelNewest)
	b := newRunFor("cn", "b", now)
	b.Concurrency = spec(batuta.ConcurrencyCancelNewest)
	res, err = s.CreateRuns(ctx, []batuta.NewRun{a, b})
	require.NoError(t, err)
	require.False(t, res[0].Rejected)
	require.True(t, res[1].Rejected && res[1].Created)
	got, err = s.GetRun(ctx, b.ID)
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, got.State)
	require.Contains(t, got.Error, "concurrency limit")

	c1 := newRunFor("cip", "c1", now)
	c1.Concurrency = spec(batuta.ConcurrencyCancelInProgress)
	_, _, err = s.CreateRun(ctx, c1)
	require.NoError(t, err)
	require.Len(t, flowClaim(t, s, "cip", now, 10), 1)
	c2 := newRunFor("cip", "c2", now.Add(time.Millisecond))
	c2.Concurrency = spec(batuta.ConcurrencyCancelInProgress)
	res, err = s.CreateRuns(ctx, []batuta.NewRun{c2})
	require.NoError(t, err)
	require.Equal(t, []string{c1.ID}, res[0].Canceled)
	st, err := s.ExtendLeases(ctx, []batuta.ClaimRef{{RunID: c1.ID, Task: "t", Token: 0}}, now.Add(time.Minute))
	require.NoError(t, err)
	require.Len(t, st, 1)
	cs := flowClaim(t, s, "cip", now.Add(time.Second), 10)
	require.Len(t, cs, 1)
	require.Equal(t, c2.ID, cs[0].RunID)
}

// TestFlowDeferKeepsReservation: OutcomeDefer hands the task back due
// later, records no attempt, and the next claim reports RateReserved.
func TestFlowDeferKeepsReservation(t *testing.T) {
	t.Parallel()
	s := flowStores(t, 1)[0]
	ctx := testCtx(t)
	now := time.Now()
	nr := newRunFor("rl", "e", now, batuta.TaskSpec{Name: "t", Concurrency: &batuta.ConcurrencySpec{Key: "rl/t", Max: 1}})
	_, _, err := s.CreateRun(ctx, nr)
	require.NoError(t, err)
	cs := flowClaim(t, s, "rl", now, 1)
	require.Len(t, cs, 1)
	at := now.Add(time.Hour)
	res, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeDefer, RetryAt: at, RateReserved: true, FinishedAt: now}})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	require.Empty(t, flowClaim(t, s, "rl", now, 1))
	due, err := s.NextDue(ctx, []string{"rl"}, now)
	require.NoError(t, err)
	require.WithinDuration(t, at, due, time.Millisecond)
	cs = flowClaim(t, s, "rl", at, 1)
	require.Len(t, cs, 1, "the deferred task freed its task-level slot")
	require.True(t, cs[0].RateReserved)
	require.Equal(t, 1, cs[0].Attempt, "no attempt spent")
}

var _ = pgxpool.Pool{}

// drainWork empties c and reports whether it held a signal.
func drainWork(c <-chan struct{}) bool {
	got := false
	for {
		select {
		case <-c:
			got = true
		default:
			return got
		}
	}
}

// TestFlowTaskGroupParks: the tasks of a full task-level group are parked
// out of the ready set by the claim that meets them, and unparked, one
// slot at a time, as slots free up; the counts come back to zero.
func TestFlowTaskGroupParks(t *testing.T) {
	t.Parallel()
	s := flowStores(t, 1)[0]
	ctx := testCtx(t)
	now := time.Now()
	var runs []batuta.NewRun
	for i := 0; i < 10; i++ {
		runs = append(runs, newRunFor("park", fmt.Sprint(i), now.Add(time.Duration(i)*time.Millisecond),
			batuta.TaskSpec{Name: "t", Concurrency: &batuta.ConcurrencySpec{Key: "park/t", Max: 2}}))
	}
	_, err := s.CreateRuns(ctx, runs)
	require.NoError(t, err)
	count := func(q string) int {
		var n int
		require.NoError(t, s.queryRow(ctx, q, nil, &n))
		return n
	}
	parked := func() (int, int) {
		return count("SELECT count(*) FROM " + s.schema + ".tasks WHERE hold = 5 AND state = 'pending'"),
			count("SELECT parked FROM " + s.schema + ".task_groups WHERE key = 'park/t'")
	}
	cs := flowClaim(t, s, "park", now.Add(time.Second), 10)
	require.Len(t, cs, 2, "Max 2")
	rows, counted := parked()
	require.Equal(t, 8, rows, "the others are parked")
	require.Equal(t, 8, counted)
	require.Empty(t, flowClaim(t, s, "park", now.Add(time.Second), 10), "group full")
	var order []string
	for _, c := range cs {
		order = append(order, c.Event.ID)
	}
	for len(cs) > 0 {
		flowComplete(t, s, cs[:1], now)
		next := flowClaim(t, s, "park", now.Add(time.Second), 10)
		require.LessOrEqual(t, len(next)+len(cs)-1, 2, "never more than Max running")
		for _, c := range next {
			order = append(order, c.Event.ID)
		}
		cs = append(cs[1:], next...)
	}
	require.Equal(t, []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}, order, "parked tasks come back in order")
	rows, counted = parked()
	require.Zero(t, rows)
	require.Zero(t, counted)
	require.Zero(t, count("SELECT active FROM "+s.schema+".task_groups WHERE key = 'park/t'"))
}

// TestProbeReadsOneDelayedEntry: the claim's probe finds the next delayed
// task by reading one entry of tasks_delayed, whatever the statistics say
// (before: with statistics taken while the table was empty, min(due_at)
// was planned as an aggregate over every delayed task, 5 ms per claim
// with 100,000 of them, and delayed runs started 20-30 ms late).
func TestProbeReadsOneDelayedEntry(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{DisableListen: true})
	ctx := testCtx(t)
	tasks := quoteIdent(s.Schema()) + ".tasks"
	_, err := pool.Exec(ctx, "ANALYZE "+tasks) // statistics of the empty table
	require.NoError(t, err)
	now := time.Now()
	const n = 3000
	runs := make([]batuta.NewRun, n)
	for i := range runs {
		runs[i] = newRunFor("wf", fmt.Sprintf("d%d", i), now)
		runs[i].StartAt = now.Add(time.Hour + time.Duration(i)*time.Millisecond)
	}
	_, err = s.CreateRuns(ctx, runs)
	require.NoError(t, err)
	var plan []map[string]any
	require.NoError(t, pool.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) "+s.q.probe).Scan(&plan))
	var most float64
	var walk func(node map[string]any)
	walk = func(node map[string]any) {
		if rel, _ := node["Index Name"].(string); rel == "tasks_delayed" {
			most = max(most, node["Actual Rows"].(float64))
		}
		kids, _ := node["Plans"].([]any)
		for _, k := range kids {
			walk(k.(map[string]any))
		}
	}
	require.Len(t, plan, 1)
	walk(plan[0]["Plan"].(map[string]any))
	require.Positive(t, most, "the probe did not read tasks_delayed")
	require.LessOrEqual(t, most, float64(1), "the probe scanned %v delayed tasks to find the next one", most)
}

// TestFlowHandOff: a run that frees its group's slot admits the group's
// next due run in the completing transaction (its task is in the ready set
// before any claim), in queue order, skipping a run that starts later, a
// queue entry another transaction holds, and every run of a paused workflow; what
// the completion leaves, a claim admits.
func TestFlowHandOff(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{DisableListen: true})
	ctx := testCtx(t)
	schema := quoteIdent(s.Schema())
	now := time.Now()
	spec := &batuta.ConcurrencySpec{Key: "ho:k", Max: 1}
	ids := map[string]string{}
	for i, name := range []string{"r0", "r1", "later", "r3", "held", "r5", "r6"} {
		nr := newRunFor("ho", name, now.Add(time.Duration(i)*time.Millisecond))
		nr.Concurrency = spec
		if name == "later" {
			nr.StartAt = now.Add(time.Hour)
		}
		_, _, err := s.CreateRun(ctx, nr)
		require.NoError(t, err)
		ids[name] = nr.ID
	}
	// admitted reports, straight from the tables, whether the run holds
	// the slot and its task is in the ready set, and the group's counts.
	admitted := func(name string) (bool, int, int) {
		t.Helper()
		var ok bool
		var active, waiting int
		require.NoError(t, pool.QueryRow(ctx, `
SELECT r.admit IN (1, 2) AND t.hold = 0 AND NOT EXISTS (SELECT 1 FROM `+schema+`.run_queue q WHERE q.run_id = r.id),
    g.active, g.waiting
FROM `+schema+`.runs r JOIN `+schema+`.tasks t ON t.run_id = r.id JOIN `+schema+`.run_groups g ON g.key = r.ckey
WHERE r.id = $1`, ids[name]).Scan(&ok, &active, &waiting))
		return ok, active, waiting
	}
	at := now.Add(time.Second)
	step := func(want string) {
		t.Helper()
		cs := flowClaim(t, s, "ho", at, 10)
		require.Len(t, cs, 1)
		require.Equal(t, want, cs[0].Event.ID)
		require.NoError(t, flowComplete(t, s, cs, at)[0].Err)
	}

	step("r0") // a claim admits the first run: nothing was running
	ok, active, waiting := admitted("r1")
	require.True(t, ok, "r0's completion did not hand its slot to r1")
	require.Equal(t, []int{1, 5}, []int{active, waiting})

	step("r1") // hands off to r3: "later" starts in an hour
	ok, _, _ = admitted("later")
	require.False(t, ok, "a run that starts later was admitted early")
	ok, active, waiting = admitted("r3")
	require.True(t, ok)
	require.Equal(t, []int{1, 4}, []int{active, waiting})

	// Another transaction holds "held"'s queue entry (as a cancel, a
	// debounce or a claim's admission would): the hand-off leaves it and
	// admits the next one.
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "SELECT 1 FROM "+schema+".run_queue WHERE run_id = $1 FOR UPDATE", ids["held"])
	require.NoError(t, err)
	step("r3")
	require.NoError(t, tx.Rollback(ctx))
	ok, _, _ = admitted("held")
	require.False(t, ok)
	ok, active, waiting = admitted("r5")
	require.True(t, ok)
	require.Equal(t, []int{1, 3}, []int{active, waiting})

	// Paused: the slot is freed, nothing is admitted until the resume.
	_, err = s.SetPaused(ctx, "ho", true)
	require.NoError(t, err)
	_, err = s.SetPaused(ctx, "ho", false)
	require.NoError(t, err)
	cs := flowClaim(t, s, "ho", at, 10)
	require.Len(t, cs, 1)
	require.Equal(t, "r5", cs[0].Event.ID)
	_, err = s.SetPaused(ctx, "ho", true)
	require.NoError(t, err)
	require.NoError(t, flowComplete(t, s, cs, at)[0].Err)
	ok, active, waiting = admitted("held")
	require.False(t, ok, "a paused workflow's run was admitted")
	require.Equal(t, []int{0, 3}, []int{active, waiting})
	_, err = s.SetPaused(ctx, "ho", false)
	require.NoError(t, err)
	step("held") // the claim admits the oldest due run
	ok, _, _ = admitted("r6")
	require.True(t, ok)
	step("r6")
	ok, active, waiting = admitted("later")
	require.False(t, ok)
	require.Equal(t, []int{0, 1}, []int{active, waiting})
	step2 := flowClaim(t, s, "ho", now.Add(2*time.Hour), 10)
	require.Len(t, step2, 1, "the delayed run, at its time")
	require.Equal(t, "later", step2[0].Event.ID)
}

// TestFlowCancelHandedOff: canceling a run a completion handed a slot to
// frees the slot; canceling a queued run takes it out of the queue; the
// group's counts stay exact either way.
func TestFlowCancelHandedOff(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{DisableListen: true})
	ctx := testCtx(t)
	schema := quoteIdent(s.Schema())
	now := time.Now()
	ids := map[string]string{}
	for i, name := range []string{"a", "b", "c", "d"} {
		nr := newRunFor("hc", name, now.Add(time.Duration(i)*time.Millisecond))
		nr.Concurrency = &batuta.ConcurrencySpec{Key: "hc:k", Max: 1}
		_, _, err := s.CreateRun(ctx, nr)
		require.NoError(t, err)
		ids[name] = nr.ID
	}
	counts := func() []int {
		t.Helper()
		var active, waiting int
		require.NoError(t, pool.QueryRow(ctx, "SELECT active, waiting FROM "+schema+".run_groups WHERE key = 'hc:k'").Scan(&active, &waiting))
		return []int{active, waiting}
	}
	at := now.Add(time.Second)
	cs := flowClaim(t, s, "hc", at, 10)
	require.Len(t, cs, 1)
	require.NoError(t, flowComplete(t, s, cs, at)[0].Err) // hands the slot to b
	require.Equal(t, []int{1, 2}, counts())
	_, err := s.CancelRun(ctx, ids["b"], "stop b", at)
	require.NoError(t, err)
	require.Equal(t, []int{0, 2}, counts(), "b's slot was not freed")
	_, err = s.CancelRun(ctx, ids["d"], "stop d", at)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1}, counts(), "d did not leave the queue")
	cs = flowClaim(t, s, "hc", at, 10)
	require.Len(t, cs, 1)
	require.Equal(t, "c", cs[0].Event.ID)
	require.Equal(t, []int{1, 0}, counts())
	res := flowComplete(t, s, cs, at)
	require.Equal(t, batuta.RunSucceeded, res[0].RunFinished)
	require.Equal(t, []int{0, 0}, counts())
	for name, want := range map[string]batuta.RunState{"a": batuta.RunSucceeded, "b": batuta.RunCanceled, "c": batuta.RunSucceeded, "d": batuta.RunCanceled} {
		r, err := s.GetRun(ctx, ids[name])
		require.NoError(t, err)
		require.Equal(t, want, r.State, name)
	}
}

// TestFlowHandOffRacesCancel: claimers on two instances drain groups
// (Max 1 and 2) while a third cancels queued and running runs at random:
// the hand-offs of completions, the claims' admissions and the cancels
// never deadlock or fail, every run ends, no key ever holds more than its
// Max, and the groups' counts end at zero.
func TestFlowHandOffRacesCancel(t *testing.T) {
	t.Parallel()
	stores := flowStores(t, 3)
	ctx := testCtx(t)
	now := time.Now()
	var runs []batuta.NewRun
	keyOf, maxOf := map[string]string{}, map[string]int{}
	for k := 0; k < 6; k++ {
		for i := 0; i < 15; i++ {
			nr := newRunFor("race", fmt.Sprintf("k%d-%d", k, i), now.Add(time.Duration(i)*time.Millisecond))
			key := fmt.Sprintf("race:k%d", k)
			nr.Concurrency = &batuta.ConcurrencySpec{Key: key, Max: 1 + k%2}
			keyOf[nr.ID], maxOf[key] = key, 1+k%2
			runs = append(runs, nr)
		}
	}
	_, err := stores[0].CreateRuns(ctx, runs)
	require.NoError(t, err)
	hw := newHighWater()
	var ended atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	deadline := time.Now().Add(45 * time.Second)
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			claimLoop(ctx, t, stores[w%2], fmt.Sprintf("w%d", w), "race", 2,
				func() bool { return ended.Load() < int64(len(runs)) && time.Now().Before(deadline) },
				func(cs []batuta.Claim) {
					for _, c := range cs {
						hw.enter(keyOf[c.RunID])
					}
					for _, c := range cs {
						hw.leave(keyOf[c.RunID])
					}
				},
				func(r batuta.CompleteResult) {
					if r.Err != nil && !errors.Is(r.Err, batuta.ErrLeaseLost) {
						t.Error(r.Err)
					}
				})
		}()
	}
	wg.Add(1)
	go func() { // cancels every third run, whatever its state
		defer wg.Done()
		for i := 0; i < len(runs); i += 3 {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := stores[2].CancelRun(ctx, runs[i].ID, "race", time.Now()); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	// Runs end by completion or cancel: count them from the database.
	require.Eventually(t, func() bool {
		var left int
		require.NoError(t, stores[0].queryRow(ctx, "SELECT count(*) FROM "+stores[0].schema+".runs WHERE state = 'active'", nil, &left))
		ended.Store(int64(len(runs) - left))
		return left == 0
	}, 45*time.Second, 20*time.Millisecond)
	close(stop)
	wg.Wait()
	for k, n := range hw.high {
		require.LessOrEqual(t, n, maxOf[k], "key %s held %d runs at once", k, n)
	}
	var active, waiting, queued int
	require.NoError(t, stores[0].queryRow(ctx, "SELECT coalesce(sum(active), 0), coalesce(sum(waiting), 0) FROM "+stores[0].schema+".run_groups", nil, &active, &waiting))
	require.NoError(t, stores[0].queryRow(ctx, "SELECT count(*) FROM "+stores[0].schema+".run_queue", nil, &queued))
	require.Equal(t, []int{0, 0, 0}, []int{active, waiting, queued}, "slots, waiting counts and queue entries left")
}
