package batutapg

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// The PostgreSQL store under faults, at the Store level: each test here
// fails on the store before issue 10's fixes.

// skewClock is the system clock shifted by d: a process on a machine whose
// clock is off.
type skewClock struct{ d time.Duration }

func (c skewClock) Now() time.Time                        { return time.Now().Add(c.d) }
func (c skewClock) NewTimer(d time.Duration) batuta.Timer { return batuta.SystemClock{}.NewTimer(d) }

// TestClockSkewedRescuerRescuesNothingHealthy: a lease of 6 s taken by an
// instance with a correct clock is not rescued by an instance whose clock
// runs 5 s ahead, 2 s later (before: its now, 5 s ahead, decided expiry).
func TestClockSkewedRescuerRescuesNothingHealthy(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	a := newTestStore(t, pool, Config{DisableListen: true})
	ctx := testCtx(t)
	b, err := New(ctx, pool, Config{Schema: a.Schema(), DisableListen: true, Clock: skewClock{5 * time.Second}})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })

	now := time.Now()
	for _, e := range []string{"e1", "e2", "e3"} {
		_, _, err := a.CreateRun(ctx, newRunFor("wf", e, now))
		require.NoError(t, err)
	}
	cs, err := a.ClaimTasks(ctx, batuta.ClaimParams{Owner: "healthy", Limit: 3, Now: now, LeaseUntil: now.Add(6 * time.Second)})
	require.NoError(t, err)
	require.Len(t, cs, 3)
	// 2 s into the lease (as the skewed instance's clock tells it, 7 s).
	n, f, err := b.RescueExpired(ctx, b.cfg.Clock.Now().Add(2*time.Second), 3)
	require.NoError(t, err)
	require.Zero(t, n+f, "healthy leases rescued by an instance whose clock runs 5 s ahead")
	// The same instance still rescues a lease that expired by the
	// database's clock (7 s in, by its clock 12 s).
	n, _, err = b.RescueExpired(ctx, b.cfg.Clock.Now().Add(7*time.Second), 3)
	require.NoError(t, err)
	require.Equal(t, 3, n)
}

// claimAll creates n runs of the two independent tasks x and y and claims
// every task for owner with the given lease.
func claimAll(t *testing.T, s *Store, n int, owner string, lease time.Duration) map[string][]batuta.Claim {
	t.Helper()
	ctx := testCtx(t)
	now := time.Now()
	for i := 0; i < n; i++ {
		_, _, err := s.CreateRun(ctx, newRunFor("wf", owner+"-"+strings.Repeat("r", i+1), now, batuta.TaskSpec{Name: "x"}, batuta.TaskSpec{Name: "y"}))
		require.NoError(t, err)
	}
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: owner, Limit: 2 * n, Now: now, LeaseUntil: now.Add(lease)})
	require.NoError(t, err)
	require.Len(t, cs, 2*n)
	byRun := map[string][]batuta.Claim{}
	for _, c := range cs {
		byRun[c.RunID] = append(byRun[c.RunID], c)
	}
	return byRun
}

// TestRescueSkipsALockedRun: a run row held by a slow CompleteInTx does
// not stop the rescue of other runs' expired tasks (before: the rescuer
// waited for the row, rescuing nothing).
func TestRescueSkipsALockedRun(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 6)
	s := newTestStore(t, pool, Config{DisableListen: true})
	ctx := testCtx(t)
	byRun := claimAll(t, s, 4, "dead", time.Minute)
	var held string
	for id := range byRun {
		held = id
		break
	}
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	require.NoError(t, s.CompleteInTx(ctx, tx, byRun[held][0].Ref(), "slow"))

	// Every lease has expired for this rescuer (an hour ahead).
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	n, f, err := s.RescueExpired(rctx, time.Now().Add(time.Hour), 3)
	require.NoError(t, err, "the rescue waited for the held run row")
	require.Equal(t, 6, n, "the other runs' tasks are rescued")
	require.Zero(t, f)
	require.NoError(t, tx.Commit(ctx))
	n, _, err = s.RescueExpired(ctx, time.Now().Add(time.Hour), 3)
	require.NoError(t, err)
	require.Equal(t, 1, n, "the held run's expired task is rescued once its row is free")
	r, err := s.GetRun(ctx, held)
	require.NoError(t, err)
	require.Equal(t, batuta.TaskSucceeded, r.Tasks[0].State)
	require.Equal(t, batuta.TaskPending, r.Tasks[1].State)
}

// TestCompletionBatchNotBlockedByALockedRun: with one flush at a time, a
// completion of a run whose row a slow CompleteInTx holds does not hold up
// another run's completion queued behind it past CompletionLockWait
// (before: the second call waited for the first transaction to end).
func TestCompletionBatchNotBlockedByALockedRun(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 6)
	s := newTestStore(t, pool, Config{DisableListen: true, MaxFlushes: 1, CompletionLockWait: 200 * time.Millisecond})
	ctx := testCtx(t)
	byRun := claimAll(t, s, 2, "w", time.Minute)
	var ids []string
	for id := range byRun {
		ids = append(ids, id)
	}
	held, free := byRun[ids[0]], byRun[ids[1]]

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	require.NoError(t, s.CompleteInTx(ctx, tx, held[0].Ref(), "slow"))

	ok := func(c batuta.Claim) batuta.Completion {
		return batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: 1, StartedAt: time.Now(), FinishedAt: time.Now()}
	}
	first := make(chan error, 1)
	go func() {
		res, err := s.CompleteTasks(ctx, []batuta.Completion{ok(held[1])})
		if err == nil {
			err = res[0].Err
		}
		first <- err
	}()
	// Wait until the first completion waits for the held row.
	require.Eventually(t, func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%'||$1||'%'`, s.Schema()).Scan(&n)
		return err == nil && n > 0
	}, 20*time.Second, 5*time.Millisecond)

	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	res, err := s.CompleteTasks(cctx, []batuta.Completion{ok(free[0]), ok(free[1])})
	require.NoError(t, err, "a completion of another run waited for the held run row")
	require.NoError(t, res[0].Err)
	require.NoError(t, res[1].Err)
	require.Equal(t, batuta.RunSucceeded, res[0].RunFinished+res[1].RunFinished)
	select {
	case err := <-first:
		t.Fatalf("the held run's completion returned while its row was held: %v", err)
	default:
	}
	require.NoError(t, tx.Commit(ctx))
	require.NoError(t, <-first)
	r, err := s.GetRun(ctx, ids[0])
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
}

// replyLoser wraps the connections of a pool: once armed, the connection
// that next sends a statement containing marker passes the server's
// replies through up to the next COMMIT's, then fails. The transaction
// committed; its reply is lost.
type replyLoser struct {
	marker string
	armed  atomic.Bool
	fired  atomic.Int64
}

func (l *replyLoser) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &lossyConn{Conn: c, l: l}, nil
}

type lossyConn struct {
	net.Conn
	l          *replyLoser
	mu         sync.Mutex
	swallowing bool
	raw, out   []byte
}

var errReplyLost = errors.New("reply lost (test fault)")

func (c *lossyConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if strings.Contains(string(p), c.l.marker) && c.l.armed.CompareAndSwap(true, false) {
		c.swallowing = true
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *lossyConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	sw := c.swallowing
	c.mu.Unlock()
	if !sw {
		return c.Conn.Read(p)
	}
	// Pass whole backend messages through until CommandComplete "COMMIT".
	tmp := make([]byte, 4096)
	for len(c.out) == 0 {
		for len(c.raw) >= 5 {
			n := int(binary.BigEndian.Uint32(c.raw[1:5])) + 1
			if len(c.raw) < n {
				break
			}
			msg := c.raw[:n]
			if msg[0] == 'C' && strings.HasPrefix(string(msg[5:]), "COMMIT") {
				c.l.fired.Add(1)
				c.mu.Lock()
				c.swallowing = false // the connection is gone: later reads fail
				c.mu.Unlock()
				_ = c.Conn.Close()
				return 0, errReplyLost
			}
			c.out = append(c.out, msg...)
			c.raw = c.raw[n:]
		}
		if len(c.out) > 0 {
			break
		}
		k, err := c.Conn.Read(tmp)
		c.raw = append(c.raw, tmp[:k]...)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// lossyPool returns a pool whose replies l can swallow.
func lossyPool(t *testing.T, l *replyLoser) *pgxpool.Pool {
	t.Helper()
	storeTestPool(t, 1) // skips when PostgreSQL is absent
	cfg, err := pgxpool.ParseConfig(storeTestDSN())
	require.NoError(t, err)
	cfg.MaxConns = 4
	cfg.ConnConfig.DialFunc = l.dial
	// Every execution sends its SQL text (no statement cache), so the
	// marker is seen on every execution of the statement it names.
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeDescribeExec
	pool, err := pgxpool.NewWithConfig(testCtx(t), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// TestLostClaimReplyReleasesTheTasks: a claim that committed but whose
// reply was lost leaves nothing stranded: the tasks are claimable at once,
// with no rescue and no attempt counted (before: they stayed leased until
// the lease expired, and the rescue counted toward MaxRescues).
func TestLostClaimReplyReleasesTheTasks(t *testing.T) {
	t.Parallel()
	direct := storeTestPool(t, 4)
	l := &replyLoser{marker: "claim_req = $6"}
	schema := "batuta_st_" + storeSuffix()
	dropSchemaAtCleanup(t, direct, schema)
	ctx := testCtx(t)
	s, err := New(ctx, lossyPool(t, l), Config{Schema: schema, DisableListen: true})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	now := time.Now()
	for _, e := range []string{"e1", "e2", "e3"} {
		_, _, err := s.CreateRun(ctx, newRunFor("wf", e, now))
		require.NoError(t, err)
	}
	l.armed.Store(true)
	_, err = s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 3, Now: now, LeaseUntil: now.Add(time.Hour)})
	require.Error(t, err)
	require.EqualValues(t, 1, l.fired.Load(), "the claim's reply was swallowed after its COMMIT")

	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 3, Now: now, LeaseUntil: now.Add(time.Hour)})
	require.NoError(t, err)
	require.Len(t, cs, 3, "the tasks of the lost claim are claimable again at once")
	for _, c := range cs {
		require.Zero(t, c.Rescues, "a claim that never reached its worker counts no rescue")
		require.Equal(t, 1, c.Attempt)
	}
}

// TestLostClaimCommittedLateIsReleased: a claim whose reply was lost may
// commit only after the store looked for its tasks (the server still runs
// the statements and COMMIT it had received when the connection failed).
// The store keeps looking on its liveness beats, and releases the tasks
// when they show up (before: the request was forgotten after the first
// look found nothing, and the tasks stayed leased until the lease expired
// and were rescued; seen in TestConnectionCutsLoseNothing under load).
func TestLostClaimCommittedLateIsReleased(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{DisableListen: true, LivenessInterval: 50 * time.Millisecond, LivenessTimeout: time.Second})
	ctx := testCtx(t)
	now := time.Now()
	id, _, err := s.CreateRun(ctx, newRunFor("wf", "late", now))
	require.NoError(t, err)
	const req = 4242
	s.lostClaims([]int64{req}) // looked for at once: nothing taken yet
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 1, Now: now, LeaseUntil: now.Add(time.Hour)})
	require.NoError(t, err)
	require.Len(t, cs, 1)
	// The lost request's claim commits now.
	_, err = pool.Exec(ctx, `UPDATE `+quoteIdent(s.Schema())+`.tasks SET claim_req = $1 WHERE run_id = $2`, req, id)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var st string
		require.NoError(t, pool.QueryRow(ctx, `SELECT state FROM `+quoteIdent(s.Schema())+`.tasks WHERE run_id = $1`, id).Scan(&st))
		return st != "running"
	}, 10*time.Second, 10*time.Millisecond, "the late claim of a lost request was not released")
	again, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 1, Now: time.Now(), LeaseUntil: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	require.Len(t, again, 1, "the released task is claimable")
	require.Zero(t, again[0].Rescues, "a release counts no rescue")
	require.Equal(t, 1, again[0].Attempt, "a release spends no attempt")
}

// TestRepeatedRetryCompletionIsItsOwn: a retry (or snooze, or release)
// completion re-sent after its reply was lost is recognised as its own and
// reports success (before: ErrLeaseLost, logged as "lease lost to another
// worker"); a stale worker's different outcome is still fenced off.
func TestRepeatedRetryCompletionIsItsOwn(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{DisableListen: true})
	ctx := testCtx(t)
	now := time.Now()
	_, _, err := s.CreateRun(ctx, newRunFor("wf", "e", now))
	require.NoError(t, err)
	for _, oc := range []batuta.Outcome{batuta.OutcomeRetry, batuta.OutcomeSnooze, batuta.OutcomeRelease} {
		cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 1, Now: now.Add(time.Hour), LeaseUntil: now.Add(2 * time.Hour)})
		require.NoError(t, err)
		require.Len(t, cs, 1, "%s", oc)
		c := batuta.Completion{ClaimRef: cs[0].Ref(), Outcome: oc, Attempt: cs[0].Attempt, Error: "again",
			StartedAt: now, FinishedAt: now, RetryAt: now}
		for i := 0; i < 2; i++ {
			res, err := s.CompleteTasks(ctx, []batuta.Completion{c})
			require.NoError(t, err)
			require.NoError(t, res[0].Err, "%s, sent %d times", oc, i+1)
		}
		res, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: 1}})
		require.NoError(t, err)
		require.ErrorIs(t, res[0].Err, batuta.ErrLeaseLost, "%s", oc)
	}
}

// TestListenerBackoffResetsAfterEachLoss: the listener whose working
// connection is terminated again and again reconnects after the minimum
// backoff every time (before: the backoff doubled up to 5 s, as it reset
// only after a connection had lived a minute).
func TestListenerBackoffResetsAfterEachLoss(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{})
	ctx := testCtx(t)
	for i := 0; i < 6; i++ {
		require.Eventually(t, s.Listening, 20*time.Second, 5*time.Millisecond)
		pid := s.listenPID.Load()
		var ok bool
		require.NoError(t, pool.QueryRow(ctx, "SELECT pg_terminate_backend($1)", int32(pid)).Scan(&ok))
		require.True(t, ok)
		require.Eventually(t, func() bool { return s.listenPID.Load() != pid && s.Listening() }, 20*time.Second, 5*time.Millisecond)
		require.Equal(t, listenBackoffMin, time.Duration(s.listenDelay.Load()), "reconnect delay after loss %d", i+1)
	}
}

// TestMigrationBelowTheNewestIsApplied: a migration numbered below the
// newest applied one (two branches adding 0002 and 0003, merged in either
// order) is still applied, once (before: only versions above the newest
// recorded were applied, so 0002 would be skipped for good).
func TestMigrationBelowTheNewestIsApplied(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	schema := "batuta_mig_" + storeSuffix()
	dropSchemaAtCleanup(t, pool, schema)
	ctx := testCtx(t)
	m1 := migration{version: 1, name: "0001_a.sql", sql: "CREATE TABLE a (x int)"}
	m2 := migration{version: 2, name: "0002_b.sql", sql: "CREATE TABLE b (x int)"}
	m3 := migration{version: 3, name: "0003_c.sql", sql: "CREATE TABLE c (x int)"}
	require.NoError(t, migrate(ctx, pool, schema, []migration{m1, m3}))
	require.NoError(t, migrate(ctx, pool, schema, []migration{m1, m2, m3}))
	require.NoError(t, migrate(ctx, pool, schema, []migration{m1, m2, m3}))
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+quoteIdent(schema)+".store_migrations").Scan(&n))
	require.Equal(t, 3, n)
	_, err := pool.Exec(ctx, "INSERT INTO "+quoteQualified(schema, "b")+" VALUES (1)")
	require.NoError(t, err, "0002 was applied")
}
