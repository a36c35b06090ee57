package batutapg

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/faultproxy"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// syncBuffer is a bytes.Buffer safe for the logger's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newRunFor(wf, eventID string, at time.Time, tasks ...batuta.TaskSpec) batuta.NewRun {
	if len(tasks) == 0 {
		tasks = []batuta.TaskSpec{{Name: "t"}}
	}
	return batuta.NewRun{ID: newRunID(), Workflow: wf, Event: batuta.Event{ID: eventID, Time: at}, Tasks: tasks, CreatedAt: at}
}

var runIDSeq struct {
	sync.Mutex
	n uint64
}

// newRunID returns a unique UUIDv7-shaped ID, increasing over time.
func newRunID() string {
	runIDSeq.Lock()
	runIDSeq.n++
	n := runIDSeq.n
	runIDSeq.Unlock()
	var u [16]byte
	ms := uint64(time.Now().UnixMilli())
	for i := 0; i < 6; i++ {
		u[i] = byte(ms >> (40 - 8*i))
	}
	u[6] = 0x70 | byte(n>>56)&0x0f
	u[7] = byte(n >> 48)
	u[8] = 0x80 | byte(n>>40)&0x3f
	for i := 9; i < 16; i++ {
		u[i] = byte(n >> (8 * (15 - i)))
	}
	return formatUUID(u)
}

func TestMigrateConcurrentAndIdempotent(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 8)
	schema := "batuta_mig_" + storeSuffix()
	dropSchemaAtCleanup(t, pool, schema)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = MigrateSchema(ctx, pool, schema)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, MigrateSchema(ctx, pool, schema))
	var n, v int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*), max(version) FROM "+quoteIdent(schema)+".store_migrations").Scan(&n, &v))
	ms, err := migrations()
	require.NoError(t, err)
	require.Equal(t, len(ms), n, "each migration recorded once")
	require.Equal(t, SchemaVersion(), v)
	// Several Stores starting together on a fresh schema.
	schema2 := "batuta_mig_" + storeSuffix()
	dropSchemaAtCleanup(t, pool, schema2)
	stores := make([]*Store, 4)
	for i := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stores[i], errs[i] = New(ctx, pool, Config{Schema: schema2, DisableListen: true})
		}()
	}
	wg.Wait()
	for i, s := range stores {
		require.NoError(t, errs[i])
		require.NoError(t, s.Close())
	}
}

func TestManualMigrate(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	schema := "batuta_man_" + storeSuffix()
	dropSchemaAtCleanup(t, pool, schema)
	ctx := testCtx(t)
	_, err := New(ctx, pool, Config{Schema: schema, ManualMigrate: true})
	require.ErrorContains(t, err, "apply the migrations")
	var exists bool
	require.NoError(t, pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists))
	require.False(t, exists, "ManualMigrate must not create the schema")
	require.NoError(t, MigrateSchema(ctx, pool, schema))
	s, err := New(ctx, pool, Config{Schema: schema, ManualMigrate: true, DisableListen: true})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close twice")
}

// TestHostileSchemaName: a schema name full of quotes and SQL is just a
// name.
func TestHostileSchemaName(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	schema := `bt "x"; DROP TABLE y;-- ` + storeSuffix()
	s := newTestStore(t, pool, Config{Schema: schema})
	ctx := testCtx(t)
	now := time.Now()
	id, created, err := s.CreateRun(ctx, newRunFor("wf", "e1", now))
	require.NoError(t, err)
	require.True(t, created)
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 10, Now: now, LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, cs, 1)
	res, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: 1, StartedAt: now, FinishedAt: now}})
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, res[0].RunFinished)
	r, err := s.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.Eventually(t, s.Listening, 10*time.Second, 5*time.Millisecond, "LISTEN on the quoted channel")
}

func TestRefusesBadInput(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{DisableListen: true})
	ctx := testCtx(t)
	now := time.Now()
	tests := []struct {
		name string
		nr   batuta.NewRun
		want error
	}{
		{"NUL in event ID", newRunFor("wf", "a\x00b", now), batuta.ErrInvalidPayload},
		{"invalid UTF-8 workflow", newRunFor("w\xfff", "e", now), batuta.ErrInvalidPayload},
		{"NUL in task name", newRunFor("wf", "e", now, batuta.TaskSpec{Name: "a\x00"}), batuta.ErrInvalidPayload},
	}
	for _, tc := range tests {
		_, _, err := s.CreateRun(ctx, tc.nr)
		require.ErrorIs(t, err, tc.want, tc.name)
	}
	bad := newRunFor("wf", "e", now)
	bad.ID = "not-a-uuid"
	_, _, err := s.CreateRun(ctx, bad)
	require.ErrorContains(t, err, "not a UUID")
	bad = newRunFor("wf", "e", now, batuta.TaskSpec{Name: "a", Deps: []int{5}})
	_, _, err = s.CreateRun(ctx, bad)
	require.ErrorContains(t, err, "invalid dependency")
	_, err = s.GetRun(ctx, "not-a-uuid")
	require.ErrorIs(t, err, batuta.ErrRunNotFound)
	// A malformed output is refused for its item only.
	id, _, err := s.CreateRun(ctx, newRunFor("wf", "ok", now))
	require.NoError(t, err)
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	res, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeSucceeded, Output: json.RawMessage(`{"x":`), Attempt: 1}})
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, batuta.ErrInvalidPayload)
	r, err := s.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.TaskRunning, r.Tasks[0].State, "nothing written for the refused item")
}

// TestNotifyAcrossStores: a run created through one Store wakes another
// Store's WorkAvailable through LISTEN/NOTIFY.
func TestNotifyAcrossStores(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	a := newTestStore(t, pool, Config{})
	pool2 := storeTestPool(t, 4)
	ctx := testCtx(t)
	b, err := New(ctx, pool2, Config{Schema: a.Schema(), DisableListen: true})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	require.Eventually(t, a.Listening, 10*time.Second, 5*time.Millisecond)
	drain(a.WorkAvailable())
	_, _, err = b.CreateRun(ctx, newRunFor("wf", "e1", time.Now()))
	require.NoError(t, err)
	select {
	case <-a.WorkAvailable():
	case <-time.After(10 * time.Second):
		t.Fatal("no wake-up through LISTEN/NOTIFY")
	}
	// b does not listen, but it still sees its own work at once.
	select {
	case <-b.WorkAvailable():
	default:
		t.Fatal("a store did not signal the work it created itself")
	}
}

func drain(c <-chan struct{}) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

// TestListenSelfCheckFallback: when notifications do not come back (here:
// a check timeout too short for any round trip), the store warns and falls
// back to polling, and keeps working.
func TestListenSelfCheckFallback(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	var logs syncBuffer
	s := newTestStore(t, pool, Config{ListenCheckTimeout: time.Nanosecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "falling back to polling") }, 10*time.Second, 5*time.Millisecond)
	require.False(t, s.Listening())
	_, created, err := s.CreateRun(testCtx(t), newRunFor("wf", "e", time.Now()))
	require.NoError(t, err)
	require.True(t, created)
}

// TestListenerReconnects: the listener's connection is cut; it reconnects,
// signals a re-scan, and relays notifications again.
func TestListenerReconnects(t *testing.T) {
	t.Parallel()
	direct := storeTestPool(t, 4)
	cfg, err := pgxpool.ParseConfig(storeTestDSN())
	require.NoError(t, err)
	proxy, err := faultproxy.Start(net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })
	host, port, err := net.SplitHostPort(proxy.Addr())
	require.NoError(t, err)
	cfg.ConnConfig.Host = host
	p, err := strconv.Atoi(port)
	require.NoError(t, err)
	cfg.ConnConfig.Port = uint16(p)
	cfg.MaxConns = 4
	ctx := testCtx(t)
	proxied, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(proxied.Close)

	var logs syncBuffer
	schema := "batuta_st_" + storeSuffix()
	dropSchemaAtCleanup(t, direct, schema) // the proxied pool's connections are cut
	s, err := New(ctx, proxied, Config{Schema: schema, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	other, err := New(ctx, direct, Config{Schema: s.Schema(), DisableListen: true})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, other.Close()) })
	require.Eventually(t, s.Listening, 10*time.Second, 5*time.Millisecond)

	require.Positive(t, proxy.CutAll())
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "reconnecting") }, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, s.Listening, 10*time.Second, 5*time.Millisecond)
	drain(s.WorkAvailable())
	_, _, err = other.CreateRun(ctx, newRunFor("wf", "after-cut", time.Now()))
	require.NoError(t, err)
	select {
	case <-s.WorkAvailable():
	case <-time.After(10 * time.Second):
		t.Fatal("no notification after the listener reconnected")
	}
}

// TestNewFromDBListens: a Store on a *sql.DB dials its listener with the
// DB's connection settings and relays notifications.
func TestNewFromDBListens(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	db := stdlib.OpenDBFromPool(pool)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	schema := "batuta_sq_" + storeSuffix()
	dropSchemaAtCleanup(t, pool, schema)
	ctx := testCtx(t)
	s, err := NewFromDB(ctx, db, Config{Schema: schema})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	require.Eventually(t, s.Listening, 10*time.Second, 5*time.Millisecond)
	b, err := New(ctx, pool, Config{Schema: schema, DisableListen: true})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	drain(s.WorkAvailable())
	_, _, err = b.CreateRun(ctx, newRunFor("wf", "e", time.Now()))
	require.NoError(t, err)
	select {
	case <-s.WorkAvailable():
	case <-time.After(10 * time.Second):
		t.Fatal("no wake-up through LISTEN/NOTIFY on a NewFromDB store")
	}
}

// TestRepeatedCompletion: a terminal completion sent again (its reply was
// lost) is recognised, changes nothing and reports what the first did; a
// different outcome under the same token is fenced off.
func TestRepeatedCompletion(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{DisableListen: true})
	ctx := testCtx(t)
	now := time.Now()
	id, _, err := s.CreateRun(ctx, newRunFor("wf", "e", now))
	require.NoError(t, err)
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, cs, 1)
	failed := batuta.Completion{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeFailed, Attempt: 1, Error: "boom", StartedAt: now, FinishedAt: now}
	for i := 0; i < 2; i++ {
		res, err := s.CompleteTasks(ctx, []batuta.Completion{failed})
		require.NoError(t, err)
		require.NoError(t, res[0].Err, "completion %d", i)
		require.Equal(t, batuta.RunFailed, res[0].RunFinished, "completion %d", i)
	}
	res, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: 1}})
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, batuta.ErrLeaseLost)
	r, err := s.GetRun(ctx, id)
	require.NoError(t, err)
	require.Len(t, r.Tasks[0].Attempts, 1, "the repeat recorded no attempt")
	require.Equal(t, "task t failed: boom", r.Error)
}
