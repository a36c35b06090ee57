package batutapg

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// TestFlowMigrationUpgradesInPlace: a schema at version 3 holding a ready
// task and a retry due later is upgraded to 4 by New: the ready task is
// claimable, the retry is in the delayed set (NextDue names it, no claim
// before it), and snapshots read the new columns' defaults.
func TestFlowMigrationUpgradesInPlace(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	schema := "batuta_up_" + storeSuffix()
	dropSchemaAtCleanup(t, pool, schema)
	ctx := testCtx(t)
	ms, err := migrations()
	require.NoError(t, err)
	var v3 []migration
	for _, m := range ms {
		if m.version <= 3 {
			v3 = append(v3, m)
		}
	}
	require.Len(t, v3, 3)
	require.NoError(t, migrate(ctx, pool, schema, v3))
	now := time.Now().UTC().Truncate(time.Microsecond)
	retryAt := now.Add(time.Hour)
	ready, retry := newRunID(), newRunID()
	for _, r := range []struct {
		id  string
		due time.Time
		att int
	}{{ready, now.Add(-time.Minute), 0}, {retry, retryAt, 1}} {
		_, err := pool.Exec(ctx, `INSERT INTO `+quoteIdent(schema)+`.runs (id, workflow, event_id, event, created_at, tasks_total, tasks_left)
			VALUES ($1::uuid, 'old', $3, '{}', $2, 1, 1)`, r.id, now, r.id)
		require.NoError(t, err)
		_, err = pool.Exec(ctx, `INSERT INTO `+quoteIdent(schema)+`.tasks (run_id, idx, name, workflow, deps, dependents, pending_deps, solo, state, due_at, attempt)
			VALUES ($1::uuid, 0, 't', 'old', '{}', '{}', 0, true, 'pending', $2, $3)`, r.id, r.due, r.att)
		require.NoError(t, err)
	}
	_, err = New(ctx, pool, Config{Schema: schema, ManualMigrate: true})
	require.Error(t, err, "a version-3 schema is refused without migrating")
	s, err := New(ctx, pool, Config{Schema: schema, Logger: quiet()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	require.GreaterOrEqual(t, SchemaVersion(), 4)

	cs := flowClaim(t, s, "old", now, 10)
	require.Len(t, cs, 1)
	require.Equal(t, ready, cs[0].RunID)
	due, err := s.NextDue(ctx, []string{"old"}, now)
	require.NoError(t, err)
	require.True(t, due.Equal(retryAt), "NextDue %v, want the old retry's %v", due, retryAt)
	r, err := s.GetRun(ctx, retry)
	require.NoError(t, err)
	require.True(t, r.StartAt.IsZero())
	require.Zero(t, r.Priority)
	require.Empty(t, r.ConcurrencyKey)
	require.True(t, r.Tasks[0].NotBefore.Equal(retryAt))
	cs = flowClaim(t, s, "old", retryAt, 10)
	require.Len(t, cs, 1, "the old retry is promoted when due")
	require.Equal(t, 2, cs[0].Attempt)
}

// TestFlowLostClaimReplyFreesTheSlots: a claim of limited runs that
// committed but whose reply was lost (the connection failed) gives back
// the task-level slot at once; the run stays admitted (it holds its
// workflow-level slot) and its task is claimable again.
func TestFlowLostClaimReplyFreesTheSlots(t *testing.T) {
	t.Parallel()
	direct := storeTestPool(t, 4)
	l := &replyLoser{marker: "claim_req = $6"}
	schema := "batuta_st_" + storeSuffix()
	dropSchemaAtCleanup(t, direct, schema)
	ctx := testCtx(t)
	s, err := New(ctx, lossyPool(t, l), Config{Schema: schema, DisableListen: true, Logger: quiet()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	now := time.Now()
	var ids []string
	for _, e := range []string{"e1", "e2"} {
		nr := newRunFor("wf", e, now, batuta.TaskSpec{Name: "t", Concurrency: &batuta.ConcurrencySpec{Key: "wf/t", Max: 1}})
		nr.Concurrency = &batuta.ConcurrencySpec{Key: "wf:g", Max: 1}
		_, _, err := s.CreateRun(ctx, nr)
		require.NoError(t, err)
		ids = append(ids, nr.ID)
	}
	counts := func() (runActive, runWaiting, taskActive int) {
		require.NoError(t, direct.QueryRow(ctx, "SELECT active, waiting FROM "+quoteIdent(schema)+".run_groups WHERE key = 'wf:g'").Scan(&runActive, &runWaiting))
		require.NoError(t, direct.QueryRow(ctx, "SELECT active FROM "+quoteIdent(schema)+".task_groups WHERE key = 'wf/t'").Scan(&taskActive))
		return
	}
	l.armed.Store(true)
	_, err = s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 2, Now: now, LeaseUntil: now.Add(time.Hour)})
	require.Error(t, err)
	require.EqualValues(t, 1, l.fired.Load())
	ra, rw, ta := counts()
	require.Equal(t, [3]int{1, 1, 0}, [3]int{ra, rw, ta}, "run admitted, one queued, the task slot given back")
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 2, Now: now, LeaseUntil: now.Add(time.Hour)})
	require.NoError(t, err)
	require.Len(t, cs, 1, "Max 1: only the admitted run's task")
	require.Equal(t, ids[0], cs[0].RunID)
	require.Zero(t, cs[0].Rescues)
	flowComplete(t, s, cs, now)
	cs, err = s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 2, Now: now, LeaseUntil: now.Add(time.Hour)})
	require.NoError(t, err)
	require.Len(t, cs, 1)
	require.Equal(t, ids[1], cs[0].RunID)
	flowComplete(t, s, cs, now)
	ra, rw, ta = counts()
	require.Equal(t, [3]int{0, 0, 0}, [3]int{ra, rw, ta})
}

// The kill -9 test runs this test binary as a child (TestFlowCrashChild)
// that creates waiting runs of every kind, claims one limited task and
// blocks; it is killed with SIGKILL and a new Store finishes everything.
const flowCrashSchemaEnv = "BATUTAPG_FLOW_CRASH_SCHEMA"

// TestFlowKilledWhileRunsWait: nothing waiting is lost across SIGKILL: a
// delayed run starts at its time, the queued runs of a full group are
// admitted one at a time once the dead instance's claim is rescued, a
// paused workflow stays paused and its runs start when resumed, and a rate
// key's backlog survives.
func TestFlowKilledWhileRunsWait(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	t.Parallel()
	pool := storeTestPool(t, 4)
	ctx := testCtx(t)
	schema := "batuta_fcrash_" + storeSuffix()
	dropSchemaAtCleanup(t, pool, schema)
	require.NoError(t, MigrateSchema(ctx, pool, schema))

	cmd := exec.Command(os.Args[0], "-test.run=^TestFlowCrashChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), flowCrashSchemaEnv+"="+schema)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = cmd.Stdout
	require.NoError(t, cmd.Start())
	waited := make(chan struct{})
	var startAt time.Time
	var lines []string
	go func() {
		defer close(waited)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if s, ok := strings.CutPrefix(sc.Text(), "FLOW-READY "); ok {
				startAt, _ = time.Parse(time.RFC3339Nano, s)
				return
			}
		}
	}()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
	}
	require.False(t, startAt.IsZero(), "the child did not get ready: %s", strings.Join(lines, "\n"))
	require.NoError(t, cmd.Process.Kill()) // SIGKILL: the claim's lease and liveness row stay behind
	_ = cmd.Wait()

	s, err := New(ctx, pool, Config{Schema: schema, Logger: quiet(), LivenessInterval: 200 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	p, err := s.PausedWorkflows(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"paused"}, p)
	slot, err := s.ReserveRate(ctx, batuta.RateSpec{Key: "r", Limit: 1, Per: time.Hour, Burst: 1}, time.Now())
	require.NoError(t, err)
	require.Greater(t, time.Until(slot), 50*time.Minute, "the rate key's reservation survived")

	// Claim until the queued and delayed runs are done; the dead child's
	// claim is rescued by liveness (its owner row goes stale).
	done := map[string]bool{}
	held := 0
	deadline := time.Now().Add(40 * time.Second)
	for len(done) < 4+2 && time.Now().Before(deadline) {
		now := time.Now()
		cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "survivor", Workflows: []string{"queued", "later"}, Limit: 10, Now: now, LeaseUntil: now.Add(time.Minute)})
		require.NoError(t, err)
		queued := 0
		for _, c := range cs {
			if c.Workflow == "later" {
				require.False(t, now.Before(startAt), "a delayed run started before its time")
			} else {
				queued++
			}
		}
		require.LessOrEqual(t, queued+held, 1, "Max 1 held across the crash")
		for i, r := range flowComplete(t, s, cs, now) {
			require.NoError(t, r.Err)
			if r.RunFinished != "" {
				done[cs[i].RunID] = true
			}
		}
		if len(cs) == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	require.Len(t, done, 6, "4 queued runs (one of them rescued from the dead child) and 2 delayed runs finished")
	require.Empty(t, flowClaim(t, s, "paused", time.Now(), 10), "still paused")
	_, err = s.SetPaused(ctx, "paused", false)
	require.NoError(t, err)
	require.Len(t, flowClaim(t, s, "paused", time.Now(), 10), 2)
}

// TestFlowCrashChild is the process TestFlowKilledWhileRunsWait kills.
func TestFlowCrashChild(t *testing.T) {
	schema := os.Getenv(flowCrashSchemaEnv)
	if schema == "" {
		t.Skip("helper process of TestFlowKilledWhileRunsWait")
	}
	pool := storeTestPool(t, 4)
	ctx := testCtx(t)
	s, err := New(ctx, pool, Config{Schema: schema, ManualMigrate: true, Logger: quiet(), LivenessInterval: 200 * time.Millisecond})
	require.NoError(t, err)
	now := time.Now()
	startAt := now.Add(3 * time.Second)
	var runs []batuta.NewRun
	for i := 0; i < 4; i++ {
		nr := newRunFor("queued", fmt.Sprint(i), now)
		nr.Concurrency = &batuta.ConcurrencySpec{Key: "queued:g", Max: 1}
		runs = append(runs, nr)
	}
	for i := 0; i < 2; i++ {
		nr := newRunFor("later", fmt.Sprint(i), now)
		nr.StartAt = startAt
		runs = append(runs, nr)
	}
	_, err = s.SetPaused(ctx, "paused", true)
	require.NoError(t, err)
	for i := 0; i < 2; i++ {
		runs = append(runs, newRunFor("paused", fmt.Sprint(i), now))
	}
	_, err = s.CreateRuns(ctx, runs)
	require.NoError(t, err)
	_, err = s.ReserveRate(ctx, batuta.RateSpec{Key: "r", Limit: 1, Per: time.Hour, Burst: 1}, now)
	require.NoError(t, err)
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "child", Workflows: []string{"queued"}, Limit: 10, Now: now, LeaseUntil: now.Add(time.Hour)})
	require.NoError(t, err)
	require.Len(t, cs, 1, "Max 1")
	fmt.Println("FLOW-READY " + startAt.Format(time.RFC3339Nano))
	<-context.Background().Done() // killed here
}
