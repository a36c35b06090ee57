package batutapg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/faultproxy"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// The PostgreSQL store under faults, with orchestrators: each scenario
// asserts that nothing is lost and nothing runs twice beyond what
// at-least-once allows, and logs its figures.

// faultEnv is a schema with an executions table that tasks record every
// execution in (through a pool no fault touches).
type faultEnv struct {
	t      *testing.T
	pool   *pgxpool.Pool
	schema string
	execs  string
}

func newFaultEnv(t *testing.T, prefix string) *faultEnv {
	pool := storeTestPool(t, 8)
	e := &faultEnv{t: t, pool: pool, schema: prefix + storeSuffix()}
	dropSchemaAtCleanup(t, pool, e.schema)
	ctx := testCtx(t)
	require.NoError(t, MigrateSchema(ctx, pool, e.schema))
	e.execs = quoteQualified(e.schema, "executions")
	_, err := pool.Exec(ctx, "CREATE TABLE "+e.execs+" (run_id text NOT NULL, task text NOT NULL, owner text NOT NULL DEFAULT '', at timestamptz NOT NULL DEFAULT clock_timestamp())")
	require.NoError(t, err)
	return e
}

// record records one execution of the task of in.
func (e *faultEnv) record(ctx context.Context, in *batuta.Input, owner string) error {
	_, err := e.pool.Exec(context.WithoutCancel(ctx), "INSERT INTO "+e.execs+" (run_id, task, owner) VALUES ($1, $2, $3)", in.RunID(), in.Task(), owner)
	return err
}

func (e *faultEnv) count(sql string, args ...any) int {
	var n int
	require.NoError(e.t, e.pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

func (e *faultEnv) tasks() string { return quoteQualified(e.schema, "tasks") }
func (e *faultEnv) runs() string  { return quoteQualified(e.schema, "runs") }

// checkExactlyOnce asserts that every run succeeded, every task executed,
// none more than once, and no rescue was counted.
func (e *faultEnv) checkExactlyOnce(runs int) {
	t := e.t
	require.Equal(t, runs, e.count("SELECT count(*) FROM "+e.runs()+" WHERE state = 'succeeded'"), "every run succeeded")
	require.Zero(t, e.count("SELECT count(*) FROM "+e.tasks()+" t WHERE NOT EXISTS (SELECT 1 FROM "+e.execs+
		" x WHERE x.run_id = t.run_id::text AND x.task = t.name)"), "every task executed")
	require.Zero(t, e.count("SELECT count(*) FROM (SELECT 1 FROM "+e.execs+" GROUP BY run_id, task HAVING count(*) > 1) x"),
		"no task executed twice")
	require.Zero(t, e.count("SELECT coalesce(sum(rescues), 0) FROM "+e.tasks()), "no rescue counted")
}

// states summarises the tasks' states, for failure messages.
func (e *faultEnv) states() string {
	rows, err := e.pool.Query(context.Background(), "SELECT state, rescues, count(*) FROM "+e.tasks()+" GROUP BY 1, 2 ORDER BY 1, 2")
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	out := ""
	for rows.Next() {
		var st string
		var r, n int
		_ = rows.Scan(&st, &r, &n)
		out += fmt.Sprintf("%s/rescues=%d: %d; ", st, r, n)
	}
	return out
}

// slowestRun returns the longest time from creation to finish of a run.
func (e *faultEnv) slowestRun() time.Duration {
	var ms float64
	require.NoError(e.t, e.pool.QueryRow(context.Background(),
		"SELECT coalesce(max(extract(epoch FROM finished_at - created_at)), 0) * 1000 FROM "+e.runs()).Scan(&ms))
	return time.Duration(ms * float64(time.Millisecond))
}

// runOrch runs o until the test ends.
func runOrch(t *testing.T, o *batuta.Orchestrator) {
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		require.NoError(t, <-done)
	})
}

// rescueCounter counts RescueExpired calls.
type rescueCounter struct {
	*Store
	calls atomic.Int64
}

func (r *rescueCounter) RescueExpired(ctx context.Context, now time.Time, max int) (int, int, error) {
	defer r.calls.Add(1)
	return r.Store.RescueExpired(ctx, now, max)
}

// TestClockSkewedInstanceRunsNothingTwice: two instances, one whose clock
// runs 5 s ahead, 6 s leases; tasks running on the healthy instance across
// several of the skewed one's rescue passes are neither rescued nor run
// again (before: the skewed rescuer re-ran them).
func TestClockSkewedInstanceRunsNothingTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("fault scenario skipped in -short mode")
	}
	t.Parallel()
	e := newFaultEnv(t, "batuta_skew_")
	ctx := testCtx(t)
	const runs = 10
	release := make(chan struct{})
	mk := func(clock batuta.Clock, wf string, task batuta.TaskFunc) (*batuta.Orchestrator, *rescueCounter) {
		st, err := New(ctx, storeTestPool(t, 8), Config{Schema: e.schema, Logger: quiet(), Clock: clock})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, st.Close()) })
		rc := &rescueCounter{Store: st}
		o, err := batuta.New(batuta.Config{Store: rc, Clock: clock, LeaseDuration: 6 * time.Second, Workers: 16,
			NoLogHooks: true, Logger: quiet(), ShutdownGrace: 100 * time.Millisecond, ShutdownKill: 100 * time.Millisecond})
		require.NoError(t, err)
		require.NoError(t, o.Register(&batuta.Workflow{Name: wf, Tasks: []batuta.Task{{Name: "t", Run: task}}}))
		return o, rc
	}
	healthy, _ := mk(batuta.SystemClock{}, "slow", func(ctx context.Context, in *batuta.Input) (any, error) {
		if err := e.record(ctx, in, "healthy"); err != nil {
			return nil, err
		}
		select {
		case <-release:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	skewed, rc := mk(skewClock{5 * time.Second}, "idle", func(context.Context, *batuta.Input) (any, error) { return nil, nil })
	for i := 0; i < runs; i++ {
		_, err := healthy.Submit(ctx, "slow", batuta.Event{ID: fmt.Sprintf("s-%d", i)})
		require.NoError(t, err)
	}
	runOrch(t, healthy)
	require.Eventually(t, func() bool { return e.count("SELECT count(*) FROM "+e.execs) >= runs }, 30*time.Second, 10*time.Millisecond)
	runOrch(t, skewed)
	// Three rescue passes of the skewed instance (every 3 s) over tasks
	// whose leases always have 4-6 s left.
	require.Eventually(t, func() bool { return rc.calls.Load() >= 3 }, 45*time.Second, 10*time.Millisecond)
	close(release)
	require.Eventually(t, func() bool {
		return e.count("SELECT count(*) FROM "+e.runs()+" WHERE state <> 'active'") == runs
	}, 45*time.Second, 10*time.Millisecond)
	e.checkExactlyOnce(runs)
}

// flakyCompletions fails CompleteTasks while failing is set.
type flakyCompletions struct {
	*Store
	failing atomic.Bool
	fails   atomic.Int64
}

var errCompletionFault = errors.New("completion failed (test fault)")

func (f *flakyCompletions) CompleteTasks(ctx context.Context, cs []batuta.Completion) ([]batuta.CompleteResult, error) {
	if f.failing.Load() {
		f.fails.Add(1)
		return nil, errCompletionFault
	}
	return f.Store.CompleteTasks(ctx, cs)
}

func (f *flakyCompletions) CompleteTasksAndClaim(ctx context.Context, cs []batuta.Completion, p batuta.ClaimParams) ([]batuta.CompleteResult, []batuta.Claim, error) {
	if f.failing.Load() {
		f.fails.Add(1)
		return nil, nil, errCompletionFault
	}
	return f.Store.CompleteTasksAndClaim(ctx, cs, p)
}

// TestCompletionRetriedPastTheLeaseIsKept: a completion that keeps failing
// for three lease durations is retried with the lease renewed meanwhile:
// the task is neither rescued nor run again, and its result is recorded
// (before: the lease expired during the retries, the task was rescued and
// ran twice, and the first result was discarded).
func TestCompletionRetriedPastTheLeaseIsKept(t *testing.T) {
	if testing.Short() {
		t.Skip("fault scenario skipped in -short mode")
	}
	t.Parallel()
	e := newFaultEnv(t, "batuta_cr_")
	ctx := testCtx(t)
	st, err := New(ctx, storeTestPool(t, 8), Config{Schema: e.schema, Logger: quiet()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	fc := &flakyCompletions{Store: st}
	const lease = time.Second
	o, err := batuta.New(batuta.Config{Store: fc, LeaseDuration: lease, Workers: 4, NoLogHooks: true, Logger: quiet(),
		ShutdownGrace: 100 * time.Millisecond, ShutdownKill: 100 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "job", Tasks: []batuta.Task{{Name: "t",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			fc.failing.Store(true) // the store fails from the moment the task ends
			return "done", e.record(ctx, in, "")
		}}}}))
	id, err := o.Submit(ctx, "job", batuta.Event{ID: "one"})
	require.NoError(t, err)
	runOrch(t, o)
	require.Eventually(t, func() bool { return fc.fails.Load() > 0 }, 30*time.Second, time.Millisecond)
	// The completion fails for three lease durations, the rescuer running
	// every half lease meanwhile.
	var dbStart time.Time
	require.NoError(t, e.pool.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&dbStart))
	require.Eventually(t, func() bool {
		var past bool
		require.NoError(t, e.pool.QueryRow(ctx, "SELECT clock_timestamp() > $1", dbStart.Add(3*lease)).Scan(&past))
		return past
	}, 30*time.Second, 10*time.Millisecond)
	fc.failing.Store(false)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	e.checkExactlyOnce(1)
}

// proxiedPool returns a pool whose connections go through a faultproxy.
func proxiedPool(t *testing.T, maxConns int32) (*pgxpool.Pool, *faultproxy.Proxy) {
	t.Helper()
	storeTestPool(t, 1) // skips when PostgreSQL is absent
	cfg, err := pgxpool.ParseConfig(storeTestDSN())
	require.NoError(t, err)
	proxy, err := faultproxy.Start(net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })
	host, port, err := net.SplitHostPort(proxy.Addr())
	require.NoError(t, err)
	p, err := strconv.Atoi(port)
	require.NoError(t, err)
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = host, uint16(p)
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(testCtx(t), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool, proxy
}

// TestConnectionCutsLoseNothing: every connection of an orchestrator's
// store is cut again and again while 150 two-task runs execute. Claims
// whose reply is lost are released, completions re-sent after a lost reply
// are recognised: every run succeeds, every task runs exactly once and no
// rescue is counted (before: tasks of lost claim replies sat until their
// 30 s lease expired, and were rescued). Logs the slowest run.
func TestConnectionCutsLoseNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("fault scenario skipped in -short mode")
	}
	t.Parallel()
	e := newFaultEnv(t, "batuta_cut_")
	ctx := testCtx(t)
	pool, proxy := proxiedPool(t, 8)
	st, err := New(ctx, pool, Config{Schema: e.schema, Logger: debugLog()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	o, err := batuta.New(batuta.Config{Store: st, Workers: 16, PollInterval: 200 * time.Millisecond, NoLogHooks: true,
		Logger: debugLog(), ShutdownGrace: 100 * time.Millisecond, ShutdownKill: 100 * time.Millisecond})
	require.NoError(t, err)
	task := func(ctx context.Context, in *batuta.Input) (any, error) { return in.Task(), e.record(ctx, in, "") }
	require.NoError(t, o.Register(&batuta.Workflow{Name: "job", Tasks: []batuta.Task{
		{Name: "a", Run: task}, {Name: "b", Deps: []string{"a"}, Run: task},
	}}))
	const runs = 150
	for i := 0; i < runs; i++ {
		_, err := o.Submit(ctx, "job", batuta.Event{ID: fmt.Sprintf("c-%d", i)})
		require.NoError(t, err)
	}
	runOrch(t, o)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Cut at most every 250 ms, and only once some task ran since the
		// last cut, so a loaded machine (where reconnecting and claiming
		// after a cut can take seconds) still progresses between cuts; a
		// store stranded by a lost reply then makes no progress, and the
		// test fails. After maxCuts the rest runs uncut.
		const maxCuts = 100
		tk := time.NewTicker(250 * time.Millisecond)
		defer tk.Stop()
		done := -1
		for cuts := 0; cuts < maxCuts; {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			var n int
			if e.pool.QueryRow(ctx, "SELECT count(*) FROM "+e.execs).Scan(&n) != nil {
				continue
			}
			if n > done {
				proxy.CutAll()
				done = n
				cuts++
			}
		}
	}()
	if !waitUntil(50*time.Second, func() bool {
		return e.count("SELECT count(*) FROM "+e.runs()+" WHERE state <> 'active'") == runs
	}) {
		t.Logf("goroutines:\n%s", goroutines())
		t.Fatalf("runs left unfinished (stranded by lost replies?): %s; %d executions", e.states(), e.count("SELECT count(*) FROM "+e.execs))
	}
	close(stop)
	wg.Wait()
	e.checkExactlyOnce(runs)
	t.Logf("%d connections cut; slowest run %s", proxy.Cuts(), e.slowestRun())
}

// TestListenTerminatedLoopLosesNothing: the LISTEN backend of the working
// instance is terminated every 50 ms while another instance submits runs
// (polling every 10 s, so the wake-ups matter): every run succeeds, once.
// Logs the slowest run.
func TestListenTerminatedLoopLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("fault scenario skipped in -short mode")
	}
	t.Parallel()
	e := newFaultEnv(t, "batuta_lt_")
	ctx := testCtx(t)
	mk := func() (*Store, *batuta.Orchestrator) {
		st, err := New(ctx, storeTestPool(t, 8), Config{Schema: e.schema, Logger: quiet()})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, st.Close()) })
		o, err := batuta.New(batuta.Config{Store: st, Workers: 8, PollInterval: 10 * time.Second, NoLogHooks: true,
			Logger: quiet(), ShutdownGrace: 100 * time.Millisecond, ShutdownKill: 100 * time.Millisecond})
		require.NoError(t, err)
		require.NoError(t, o.Register(&batuta.Workflow{Name: "job", Tasks: []batuta.Task{{Name: "t",
			Run: func(ctx context.Context, in *batuta.Input) (any, error) { return nil, e.record(ctx, in, "") }}}}))
		return st, o
	}
	worker, wo := mk()
	_, producer := mk() // submits only
	require.Eventually(t, worker.Listening, 20*time.Second, 5*time.Millisecond)
	runOrch(t, wo)
	stop := make(chan struct{})
	var kills atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				var ok bool
				if pid := worker.listenPID.Load(); pid != 0 &&
					e.pool.QueryRow(ctx, "SELECT pg_terminate_backend($1)", int32(pid)).Scan(&ok) == nil && ok {
					kills.Add(1)
				}
			}
		}
	}()
	const runs = 200
	for i := 0; i < runs; i++ {
		_, err := producer.Submit(ctx, "job", batuta.Event{ID: fmt.Sprintf("l-%d", i)})
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond) // spread the submissions over the kills
	}
	require.Eventually(t, func() bool {
		return e.count("SELECT count(*) FROM "+e.runs()+" WHERE state <> 'active'") == runs
	}, 50*time.Second, 20*time.Millisecond)
	close(stop)
	wg.Wait()
	e.checkExactlyOnce(runs)
	t.Logf("LISTEN backend terminated %d times; slowest run %s", kills.Load(), e.slowestRun())
}

// The kill -9 scenario: a child process (this test binary, selected by
// these variables) runs an instance at default settings whose tasks hold
// on; the parent SIGKILLs it and measures how long its tasks take to be
// rescued by a live instance, whose own long task must keep its lease.
const (
	liveChildEnv       = "BATUTAPG_LIVE_CHILD" // the schema to work in
	liveChildRuns      = 4
	livenessRescueNote = "rescue after kill -9"
)

// TestKilledInstanceRescuedWithinSeconds: at default settings (30 s
// leases, 1 s liveness interval, 4 s timeout), the tasks of an instance
// killed with SIGKILL are rescued by a live instance in about 5 s, well
// before their leases (renewed every 10 s, so at least 20 s left at the
// kill) could expire; the live instance's own task, running through it,
// is not rescued. Logs the rescue time.
func TestKilledInstanceRescuedWithinSeconds(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	t.Parallel()
	e := newFaultEnv(t, "batuta_kill_")
	ctx := testCtx(t)

	child := &storeCrashChild{done: make(chan struct{})}
	child.cmd = exec.Command(os.Args[0], "-test.run=^TestLivenessChild$", "-test.count=1", "-test.v")
	child.cmd.Env = append(os.Environ(), liveChildEnv+"="+e.schema)
	child.cmd.Stdout, child.cmd.Stderr = child, child
	require.NoError(t, child.cmd.Start())
	go func() {
		child.err = child.cmd.Wait()
		close(child.done)
	}()
	t.Cleanup(func() {
		_ = child.cmd.Process.Kill()
		<-child.done
		if t.Failed() {
			t.Logf("child output:\n%s", child.output())
		}
	})
	require.Eventually(t, func() bool { return e.count("SELECT count(*) FROM "+e.execs+" WHERE owner = 'child'") >= liveChildRuns },
		60*time.Second, 10*time.Millisecond, "the child did not start its tasks")

	// The live instance, at defaults, with a long task of its own.
	st, err := New(ctx, storeTestPool(t, 8), Config{Schema: e.schema, Logger: quiet()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	o, err := batuta.New(batuta.Config{Store: st, NoLogHooks: true, Logger: quiet(),
		ShutdownGrace: 100 * time.Millisecond, ShutdownKill: 100 * time.Millisecond})
	require.NoError(t, err)
	rescuedAll := make(chan struct{})
	require.NoError(t, o.Register(&batuta.Workflow{Name: "hold", Tasks: []batuta.Task{{Name: "t",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) { return nil, e.record(ctx, in, "live") }}}}))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "long", Tasks: []batuta.Task{{Name: "t",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			if err := e.record(ctx, in, "live"); err != nil {
				return nil, err
			}
			select {
			case <-rescuedAll:
				return nil, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}}}}))
	longID, err := o.Submit(ctx, "long", batuta.Event{ID: "long"})
	require.NoError(t, err)
	runOrch(t, o)
	require.Eventually(t, func() bool {
		return e.count("SELECT count(*) FROM "+e.execs+" WHERE run_id = $1", longID) == 1
	}, 30*time.Second, 10*time.Millisecond)

	require.NoError(t, child.cmd.Process.Kill()) // SIGKILL
	<-child.done
	var killedAt time.Time
	require.NoError(t, e.pool.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&killedAt))

	require.Eventually(t, func() bool {
		return e.count("SELECT count(*) FROM "+e.runs()+" r WHERE r.workflow = 'hold' AND r.state = 'succeeded'") == liveChildRuns
	}, 40*time.Second, 10*time.Millisecond, "the killed instance's runs did not finish")
	var worst float64
	require.NoError(t, e.pool.QueryRow(ctx, "SELECT extract(epoch FROM max(at) - $1) FROM "+e.execs+" WHERE owner = 'live' AND run_id <> $2",
		killedAt, longID).Scan(&worst))
	rescue := time.Duration(worst * float64(time.Second))
	t.Logf("%s at default settings: %d tasks rescued and re-run within %s of the kill", livenessRescueNote, liveChildRuns, rescue.Round(time.Millisecond))
	require.Less(t, rescue, 20*time.Second, "rescued only when the lease expired, not by liveness")
	close(rescuedAll)
	r, err := o.Wait(ctx, longID)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.Zero(t, r.Tasks[0].Rescues, "the live instance's long task was rescued")
	require.Equal(t, 1, e.count("SELECT count(*) FROM "+e.execs+" WHERE run_id = $1", longID), "the long task ran once")
	// At-least-once: each killed task ran once in the child and once after.
	require.Zero(t, e.count("SELECT count(*) FROM (SELECT 1 FROM "+e.execs+" GROUP BY run_id, task HAVING count(*) > 2) x"))
	require.Equal(t, liveChildRuns, e.count("SELECT count(*) FROM "+e.tasks()+" WHERE rescues = 1"))
}

// TestLivenessChild is the instance TestKilledInstanceRescuedWithinSeconds
// kills; it does nothing unless started by it.
func TestLivenessChild(t *testing.T) {
	schema := os.Getenv(liveChildEnv)
	if schema == "" {
		t.Skip("helper process of TestKilledInstanceRescuedWithinSeconds")
	}
	pool := storeTestPool(t, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := New(ctx, pool, Config{Schema: schema, ManualMigrate: true, Logger: quiet()})
	require.NoError(t, err)
	defer func() { require.NoError(t, st.Close()) }()
	o, err := batuta.New(batuta.Config{Store: st, NoLogHooks: true, Logger: quiet()})
	require.NoError(t, err)
	execs := quoteQualified(schema, "executions")
	require.NoError(t, o.Register(&batuta.Workflow{Name: "hold", Tasks: []batuta.Task{{Name: "t",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			if _, err := pool.Exec(ctx, "INSERT INTO "+execs+" (run_id, task, owner) VALUES ($1, $2, 'child')", in.RunID(), in.Task()); err != nil {
				return nil, err
			}
			<-ctx.Done() // holds on until killed
			return nil, ctx.Err()
		}}}}))
	for i := 0; i < liveChildRuns; i++ {
		_, err := o.Submit(ctx, "hold", batuta.Event{ID: fmt.Sprintf("hold-%d", i)})
		require.NoError(t, err)
	}
	require.NoError(t, o.Run(ctx))
}

// waitUntil polls cond every 20 ms until it holds (true) or d passed
// (false).
func waitUntil(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

// goroutines returns every goroutine's stack, for the report of a test
// that found the orchestrator stuck.
func goroutines() string {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
	return b.String()
}

func debugLog() *slog.Logger {
	if os.Getenv("BATUTAPG_FAULT_LOG") == "1" {
		return slog.Default()
	}
	return quiet()
}

// TestLostCompletionReplyIsNotLeaseLost: the reply to a retry completion is
// lost after its commit; the orchestrator sends it again, and the store
// recognises it as its own: no "lease lost to another worker", and the task
// runs its second attempt once (before: the re-sent completion got
// ErrLeaseLost and was logged as a lease lost to another worker).
func TestLostCompletionReplyIsNotLeaseLost(t *testing.T) {
	t.Parallel()
	e := newFaultEnv(t, "batuta_lr_")
	ctx := testCtx(t)
	l := &replyLoser{marker: "failed_tasks = r.failed_tasks + rc.f"}
	var logs syncBuffer
	st, err := New(ctx, lossyPool(t, l), Config{Schema: e.schema, Logger: quiet()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	// One worker: it re-sends the lost completion before it can take the
	// second attempt. With two, the second attempt (due 10 ms after the
	// first) could finish before the re-send (20 ms after), which then
	// finds another claim's completion recorded and is rightly refused:
	// the test failed so under load.
	o, err := batuta.New(batuta.Config{Store: st, Workers: 1, NoLogHooks: true, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		ShutdownGrace: 100 * time.Millisecond, ShutdownKill: 100 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "job", Tasks: []batuta.Task{{Name: "t",
		Retry: batuta.RetryPolicy{MaxAttempts: 2, InitialDelay: 10 * time.Millisecond},
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			if err := e.record(ctx, in, ""); err != nil {
				return nil, err
			}
			if in.Attempt() == 1 {
				l.armed.Store(true) // the reply to this attempt's completion is lost
				return nil, errors.New("first attempt fails")
			}
			return "ok", nil
		}}}}))
	id, err := o.Submit(ctx, "job", batuta.Event{ID: "one"})
	require.NoError(t, err)
	runOrch(t, o)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.EqualValues(t, 1, l.fired.Load(), "the first completion's reply was lost after its commit")
	require.NotContains(t, logs.String(), "lease was lost", "its own completion, re-sent, was taken for another worker's")
	require.Len(t, r.Tasks[0].Attempts, 2)
	require.Equal(t, 2, e.count("SELECT count(*) FROM "+e.execs), "two attempts, each run once")
}
