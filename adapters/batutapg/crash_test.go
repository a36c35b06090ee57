package batutapg

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// The crash test runs this test binary as a child process (TestCrashChild,
// selected by these environment variables), kills it with SIGKILL in the
// middle of the work, starts it again and checks what the second life
// finished.
const (
	storeCrashModeEnv   = "BATUTAPG_CRASH_CHILD"  // "submit" or "resume"
	storeCrashSchemaEnv = "BATUTAPG_CRASH_SCHEMA" // the schema to work in
	storeCrashRuns      = 1000
	storeCrashTasks     = 5
)

// TestCrashRecovery: 1,000 runs of a 5-task workflow whose tasks record
// each execution in a table; the worker process is killed with SIGKILL in
// the middle, then started again. Every run must succeed, every task's
// effect must be recorded, no task may execute more than twice, and no
// task whose success was recorded before the kill may execute again.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	pool := storeTestPool(t, 4)
	ctx := testCtx(t)
	schema := "batuta_crash_" + storeSuffix()
	dropSchemaAtCleanup(t, pool, schema)
	require.NoError(t, MigrateSchema(ctx, pool, schema))
	execs := quoteQualified(schema, "executions")
	_, err := pool.Exec(ctx, "CREATE TABLE "+execs+" (run_id text NOT NULL, task text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())")
	require.NoError(t, err)
	count := func(sql string) int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, sql).Scan(&n))
		return n
	}

	// First life: submit everything, work, get killed midway.
	first := startStoreCrashChild(t, schema, "submit")
	require.Eventually(t, func() bool { return count("SELECT count(*) FROM "+execs) >= storeCrashRuns*storeCrashTasks/3 },
		2*time.Minute, 10*time.Millisecond, "the child made no progress")
	require.NoError(t, first.cmd.Process.Kill()) // SIGKILL: no cleanup, no released leases
	<-first.done
	var killedAt time.Time
	require.NoError(t, pool.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&killedAt))
	// What the first life recorded as done is the tasks that must never run again.
	_, err = pool.Exec(ctx, "CREATE TABLE "+quoteQualified(schema, "done_at_kill")+" AS SELECT run_id::text AS run_id, name FROM "+
		quoteQualified(schema, "tasks")+" WHERE state = 'succeeded'")
	require.NoError(t, err)
	doneAtKill := count("SELECT count(*) FROM " + quoteQualified(schema, "done_at_kill"))
	execAtKill := count("SELECT count(*) FROM " + execs)
	require.Less(t, doneAtKill, storeCrashRuns*storeCrashTasks, "the kill came too late to test anything")

	// Second life: resume and finish.
	second := startStoreCrashChild(t, schema, "resume")
	select {
	case <-second.done:
		require.NoError(t, second.err, "second life failed:\n%s", second.output())
	case <-time.After(3 * time.Minute):
		_ = second.cmd.Process.Kill()
		<-second.done
		t.Fatalf("second life did not finish:\n%s", second.output())
	}

	runs := quoteQualified(schema, "runs")
	require.Equal(t, storeCrashRuns, count("SELECT count(*) FROM "+runs))
	require.Equal(t, storeCrashRuns, count("SELECT count(*) FROM "+runs+" WHERE state = 'succeeded'"), "every run succeeded")
	require.Zero(t, count("SELECT count(*) FROM "+quoteQualified(schema, "tasks")+" t WHERE NOT EXISTS (SELECT 1 FROM "+execs+
		" e WHERE e.run_id = t.run_id::text AND e.task = t.name)"), "every task's effect is recorded")
	require.LessOrEqual(t, count("SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM "+execs+" GROUP BY run_id, task) x"), 2,
		"no task executed more than twice")
	twice := count("SELECT count(*) FROM (SELECT 1 FROM " + execs + " GROUP BY run_id, task HAVING count(*) = 2) x")
	rerunAfterSuccess := count("SELECT count(*) FROM " + execs + " e JOIN " + quoteQualified(schema, "done_at_kill") +
		" d ON d.run_id = e.run_id AND d.name = e.task WHERE e.at > '" + killedAt.UTC().Format(time.RFC3339Nano) + "'")
	require.Zero(t, rerunAfterSuccess, "a task that had recorded success ran again")
	t.Logf("killed after %d executions (%d task successes recorded); %d of %d tasks executed twice, none more",
		execAtKill, doneAtKill, twice, storeCrashRuns*storeCrashTasks)
}

type storeCrashChild struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process exited
	err  error         // its exit status, once done
	mu   sync.Mutex
	out  []byte
}

func (c *storeCrashChild) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out = append(c.out, p...)
	return len(p), nil
}

func (c *storeCrashChild) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.out)
}

func startStoreCrashChild(t *testing.T, schema, mode string) *storeCrashChild {
	t.Helper()
	c := &storeCrashChild{done: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.v")
	c.cmd.Env = append(os.Environ(), storeCrashModeEnv+"="+mode, storeCrashSchemaEnv+"="+schema)
	c.cmd.Stdout, c.cmd.Stderr = c, c
	require.NoError(t, c.cmd.Start())
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		<-c.done
		if t.Failed() {
			t.Logf("child (%s) output:\n%s", mode, c.output())
		}
	})
	return c
}

// TestCrashChild is the worker process of TestCrashRecovery; it does
// nothing unless started by it.
func TestCrashChild(t *testing.T) {
	mode := os.Getenv(storeCrashModeEnv)
	if mode == "" {
		t.Skip("helper process of TestCrashRecovery")
	}
	schema := os.Getenv(storeCrashSchemaEnv)
	pool := storeTestPool(t, 16)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := New(ctx, pool, Config{Schema: schema, ManualMigrate: true, Logger: quiet()})
	require.NoError(t, err)
	defer func() { require.NoError(t, st.Close()) }()
	o, err := batuta.New(batuta.Config{
		Store: st, Workers: 16, LeaseDuration: 3 * time.Second, PollInterval: 100 * time.Millisecond,
		MaxInFlightRuns: -1, NoLogHooks: true, Logger: quiet(),
	})
	require.NoError(t, err)
	execs := quoteQualified(schema, "executions")
	task := func(ctx context.Context, in *batuta.Input) (any, error) {
		// The effect: record this execution (committed on its own, so an
		// execution whose success was not recorded shows up twice).
		if _, err := pool.Exec(ctx, "INSERT INTO "+execs+" (run_id, task) VALUES ($1, $2)", in.RunID(), in.Task()); err != nil {
			return nil, err
		}
		time.Sleep(2 * time.Millisecond) // a little work, so the kill lands mid-task
		return in.Task(), nil
	}
	// a -> (b, c) -> d -> e
	require.NoError(t, o.Register(&batuta.Workflow{Name: "crash", Tasks: []batuta.Task{
		{Name: "a", Run: task},
		{Name: "b", Deps: []string{"a"}, Run: task},
		{Name: "c", Deps: []string{"a"}, Run: task},
		{Name: "d", Deps: []string{"b", "c"}, Run: task},
		{Name: "e", Deps: []string{"d"}, Run: task},
	}}))
	if mode == "submit" {
		for i := 0; i < storeCrashRuns; i++ {
			_, err := o.Submit(ctx, "crash", batuta.Event{ID: fmt.Sprintf("crash-%d", i)})
			require.NoError(t, err)
		}
	}
	rctx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- o.Run(rctx) }()
	// The first life is killed long before this; the second one stops when
	// every run has finished.
	require.Eventually(t, func() bool {
		var active int
		err := pool.QueryRow(ctx, "SELECT count(*) FROM "+quoteQualified(schema, "runs")+" WHERE state = 'active'").Scan(&active)
		return err == nil && active == 0
	}, 4*time.Minute, 20*time.Millisecond)
	stop()
	require.NoError(t, <-runErr)
}
