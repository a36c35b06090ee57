package batutapg

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// Volume tests of waits and listing (BATUTA_VOLUME=1). They log the figures
// BENCHMARKS.md quotes; they assert the properties, not timings.
//
//	BATUTA_VOLUME=1 go test -run 'TestVolume' -v -count=1 ./adapters/batutapg

// TestVolumeWaitingTimers: 100,000 runs waiting on timers cost rows and
// index space only (the claim and NextDue do not scan them), and 10,000
// timers due in the same second fire (are claimed) as soon as they are due.
func TestVolumeWaitingTimers(t *testing.T) {
	if !volumeTests() {
		t.Skip("set BATUTA_VOLUME=1")
	}
	const total, due = 100000, 10000
	pool := storeTestPool(t, 16)
	s := newTestStore(t, pool, Config{Logger: quiet()})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	size := func() (rows, bytes int64) {
		var r, b int64
		require.NoError(t, s.queryRow(ctx, `SELECT (SELECT count(*) FROM `+s.schema+`.runs) + (SELECT count(*) FROM `+s.schema+`.tasks),
			pg_total_relation_size('`+s.schema+`.runs') + pg_total_relation_size('`+s.schema+`.tasks')`, nil, &r, &b))
		return r, b
	}
	rows0, bytes0 := size()
	start := time.Now()
	createBenchRuns(t, s, "timers", total, []batuta.TaskSpec{{Name: "sleep"}}, start)
	t.Logf("created %d runs in %v", total, time.Since(start).Round(time.Millisecond))

	// Every task claims and waits: the first total-due for an hour, the
	// last due until a second a few seconds from now.
	waitAll := func(n int, retryAt func() time.Time) {
		left := n
		for left > 0 {
			now := time.Now()
			cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "setup", Limit: min(left, 1000), Now: now, LeaseUntil: now.Add(5 * time.Minute)})
			require.NoError(t, err)
			require.NotEmpty(t, cs)
			at := retryAt()
			comps := make([]batuta.Completion, len(cs))
			for i, c := range cs {
				comps[i] = waitDone(c, now, at, "timer")
			}
			res, err := s.CompleteTasks(ctx, comps)
			require.NoError(t, err)
			for _, r := range res {
				require.NoError(t, r.Err)
			}
			left -= len(cs)
		}
	}
	t0 := time.Now()
	waitAll(total-due, func() time.Time { return t0.Add(time.Hour) })
	var dueAt time.Time
	var dueOnce sync.Once
	waitAll(due, func() time.Time {
		dueOnce.Do(func() { dueAt = time.Now().Add(8 * time.Second).Truncate(time.Second).Add(time.Second) })
		return dueAt
	})
	t.Logf("%d runs waiting (claimed and handed back) in %v; %d due at %v", total, time.Since(t0).Round(time.Millisecond), due, dueAt.Format(time.RFC3339Nano))
	_, err := pool.Exec(ctx, "VACUUM ANALYZE "+s.schema+".tasks, "+s.schema+".runs")
	require.NoError(t, err)
	rows1, bytes1 := size()
	t.Logf("waiting runs: %.1f rows and %.0f bytes (tables and indexes, after VACUUM) per waiting run",
		float64(rows1-rows0)/total, float64(bytes1-bytes0)/total)

	// While they wait, an idle claim and NextDue read no waiting task.
	var lat []time.Duration
	for i := 0; i < 200 && time.Now().Before(dueAt.Add(-2*time.Second)); i++ {
		now := time.Now()
		cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "idle", Limit: 100, Now: now, LeaseUntil: now.Add(time.Minute)})
		require.NoError(t, err)
		require.Empty(t, cs)
		lat = append(lat, time.Since(now))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("idle ClaimTasks with %d runs waiting: median %v over %d calls", total, lat[len(lat)/2], len(lat))
	next, err := s.NextDue(ctx, nil, time.Now())
	require.NoError(t, err)
	require.True(t, next.Equal(dueAt), "NextDue %v, want %v", next, dueAt)
	var buf strings.Builder
	err = s.query(ctx, `EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY OFF) `+s.q.claimPlain,
		[]any{time.Now(), nil, 100, "explain", time.Now().Add(time.Minute), int64(1)}, func(r pgx.Rows) error {
			var line string
			if err := r.Scan(&line); err != nil {
				return err
			}
			buf.WriteString(line + "\n")
			return nil
		})
	require.NoError(t, err)
	t.Logf("idle claim plan:\n%s", buf.String())
	require.NotContains(t, buf.String(), "Seq Scan on tasks")

	// The due second: 2 claimers (as an orchestrator's claim loop, 500 at
	// a time) start the tasks; 4 workers complete them, as task functions
	// returning would.
	var claimed, done, claimCalls, claimTime atomic.Int64
	var maxLag atomic.Int64
	started := make(chan []batuta.Claim, 64)
	var claimers, workers sync.WaitGroup
	time.Sleep(time.Until(dueAt.Add(-50 * time.Millisecond)))
	for w := 0; w < 2; w++ {
		claimers.Add(1)
		go func() {
			defer claimers.Done()
			for claimed.Load() < due && ctx.Err() == nil {
				now := time.Now()
				cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: fmt.Sprint("fire-", w), Limit: 500, Now: now, LeaseUntil: now.Add(time.Minute)})
				claimCalls.Add(1)
				claimTime.Add(int64(time.Since(now)))
				if err != nil {
					t.Error(err)
					return
				}
				if len(cs) == 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				if lag := time.Since(dueAt); int64(lag) > maxLag.Load() {
					maxLag.Store(int64(lag))
				}
				claimed.Add(int64(len(cs)))
				started <- cs
			}
		}()
	}
	for w := 0; w < 4; w++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for cs := range started {
				comps := make([]batuta.Completion, len(cs))
				for i, c := range cs {
					comps[i] = succeed(c, time.Now(), "null")
				}
				res, err := s.CompleteTasks(ctx, comps)
				if err != nil {
					t.Error(err)
					return
				}
				for _, r := range res {
					if r.Err != nil {
						t.Error(r.Err)
						return
					}
				}
				done.Add(int64(len(cs)))
			}
		}()
	}
	claimers.Wait()
	lastClaim := time.Duration(maxLag.Load())
	close(started)
	workers.Wait()
	require.EqualValues(t, due, claimed.Load())
	require.EqualValues(t, due, done.Load())
	t.Logf("%d timers due at the same second: the last claimed (started) %v after the due time, all completed %v after it (%d ClaimTasks calls, %v each on average)",
		due, lastClaim.Round(time.Millisecond), time.Since(dueAt).Round(time.Millisecond), claimCalls.Load(),
		(time.Duration(claimTime.Load()) / time.Duration(max(claimCalls.Load(), 1))).Round(time.Microsecond))
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "after", Limit: 10, Now: time.Now(), LeaseUntil: time.Now().Add(time.Minute)})
	require.NoError(t, err)
	require.Empty(t, cs, "the other timers are not due")
}

// indexUse finds the indexes a plan reads.
var indexUse = regexp.MustCompile(`(?:Scan(?: Backward)? using|Bitmap Index Scan on) (\w+)`)

// TestVolumeListRuns: ListRuns pages (keyset, from a cursor in the middle)
// and WorkflowStats over 1,000,000 runs walk indexes, never a sequential
// scan of runs; it logs each plan's execution time.
func TestVolumeListRuns(t *testing.T) {
	if !volumeTests() {
		t.Skip("set BATUTA_VOLUME=1")
	}
	const n = 1000000
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{Logger: quiet(), DisableListen: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	base := time.Now().Add(-24 * time.Hour).Truncate(time.Second)
	start := time.Now()
	// Runs i = 1..n, one task each, IDs increasing with i: 1% failed, 1%
	// canceled, 1% unfinished, the rest succeeded; 10 workflows.
	_, err := pool.Exec(ctx, strings.NewReplacer("{s}", s.schema).Replace(`
INSERT INTO {s}.runs (id, workflow, event_id, event, created_at, tasks_total, tasks_left, state, error, finished_at)
SELECT ('0190' || lpad(to_hex(i), 28, '0'))::uuid, 'wf' || (i % 10), 'e' || i,
    json_build_object('subject', 'order-' || (i % 50000)), $1::timestamptz + i * interval '50 ms', 1,
    CASE WHEN i % 100 = 2 THEN 1 ELSE 0 END,
    CASE i % 100 WHEN 0 THEN 'failed' WHEN 1 THEN 'canceled' WHEN 2 THEN 'active' ELSE 'succeeded' END,
    CASE WHEN i % 100 = 0 THEN 'boom ' || i ELSE '' END,
    CASE WHEN i % 100 = 2 THEN NULL ELSE $1::timestamptz + i * interval '50 ms' + (i % 1000) * interval '1 ms' END
FROM generate_series(1, $2::int) AS i`), base, n)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, strings.NewReplacer("{s}", s.schema).Replace(`
INSERT INTO {s}.run_states (run_id, workflow, state, created_at, finished_at)
SELECT id, workflow, state, created_at, finished_at FROM {s}.runs`))
	require.NoError(t, err)
	_, err = pool.Exec(ctx, strings.NewReplacer("{s}", s.schema).Replace(`
INSERT INTO {s}.tasks (run_id, idx, name, workflow, deps, dependents, pending_deps, solo, state, due_at, first_claimed_at, claimed_at)
SELECT id, 0, 't', workflow, '{}', '{}', 0, true, CASE WHEN state = 'active' THEN 'running' ELSE state END,
    created_at, created_at, created_at
FROM {s}.runs`))
	require.NoError(t, err)
	_, err = pool.Exec(ctx, "VACUUM ANALYZE "+s.schema+".runs, "+s.schema+".tasks, "+s.schema+".run_states")
	require.NoError(t, err)
	t.Logf("loaded %d runs in %v", n, time.Since(start).Round(time.Millisecond))
	mid := fmt.Sprintf("0190%028x", n/2)
	mid = mid[:8] + "-" + mid[8:12] + "-" + mid[12:16] + "-" + mid[16:20] + "-" + mid[20:]

	explain := func(name, sql string, args []any) {
		t.Helper()
		var b strings.Builder
		err := s.query(ctx, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) "+sql, args, func(r pgx.Rows) error {
			var line string
			if err := r.Scan(&line); err != nil {
				return err
			}
			b.WriteString(line + "\n")
			return nil
		})
		require.NoError(t, err)
		plan := b.String()
		// runs, and run_states (migration 6) where the states are read
		require.NotContains(t, plan, "Seq Scan on run", "%s:\n%s", name, plan)
		exec := plan[strings.LastIndex(plan, "Execution Time"):]
		var used []string
		for _, m := range indexUse.FindAllStringSubmatch(plan, -1) {
			if !slices.Contains(used, m[1]) {
				used = append(used, m[1])
			}
		}
		t.Logf("%-40s %s (%s)", name, strings.TrimSpace(exec), strings.Join(used, ", "))
	}
	for _, c := range []struct {
		name string
		f    batuta.RunFilter
	}{
		{"page, newest first", batuta.RunFilter{After: mid}},
		{"page, oldest first", batuta.RunFilter{After: mid, Ascending: true}},
		{"workflow", batuta.RunFilter{After: mid, Workflow: "wf3"}},
		{"state failed", batuta.RunFilter{After: mid, State: batuta.RunFailed}},
		{"workflow and state failed", batuta.RunFilter{After: mid, Workflow: "wf0", State: batuta.RunFailed}},
		{"states failed, canceled", batuta.RunFilter{After: mid, States: []batuta.RunState{batuta.RunFailed, batuta.RunCanceled}}},
		{"state running", batuta.RunFilter{After: mid, State: batuta.RunRunning}},
		{"subject", batuta.RunFilter{Subject: "order-123"}},
		{"event ID", batuta.RunFilter{EventID: "e777"}},
		{"created between", batuta.RunFilter{CreatedAfter: base.Add(time.Hour), CreatedBefore: base.Add(2 * time.Hour)}},
		{"state failed, error contains", batuta.RunFilter{After: mid, State: batuta.RunFailed, ErrorContains: "BOOM 4"}},
	} {
		sql, args, ok, err := listRunsQuery(s.schema, s.q.runSelect, c.f)
		require.NoError(t, err)
		require.True(t, ok)
		explain("ListRuns "+c.name, sql, args)
		runs, err := s.ListRuns(ctx, c.f)
		require.NoError(t, err)
		require.NotEmpty(t, runs, c.name)
	}
	now := base.Add(time.Duration(n) * 50 * time.Millisecond)
	explain("WorkflowStats finished (last hour)", s.oq.statsFinished, []any{now.Add(-time.Hour), now})
	explain("WorkflowStats unfinished", s.oq.statsOpen, []any{now})
	t0 := time.Now()
	st, err := s.WorkflowStats(ctx, now.Add(-time.Hour), now)
	require.NoError(t, err)
	require.Len(t, st, 10)
	t.Logf("WorkflowStats over %d runs (last hour): %v", n, time.Since(t0).Round(time.Millisecond))
}
