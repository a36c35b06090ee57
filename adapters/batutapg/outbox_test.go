package batutapg

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// outboxTestDSN is the server the outbox tests use: BATUTA_PG_DSN, or the
// local test database.
func outboxTestDSN() string {
	if dsn := os.Getenv("BATUTA_PG_DSN"); dsn != "" {
		return dsn
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// outboxEnv is a fresh schema on the test server, dropped at cleanup.
type outboxEnv struct {
	pool   *pgxpool.Pool
	schema string
	ob     Outbox
}

// newOutboxEnv connects to PostgreSQL (skipping the test if it is
// unreachable, failing it if BATUTA_REQUIRE_SERVICES=1) and creates a
// schema with a random name, with an orders table in it.
func newOutboxEnv(t *testing.T) *outboxEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(outboxTestDSN())
	require.NoError(t, err)
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		if os.Getenv("BATUTA_REQUIRE_SERVICES") == "1" {
			t.Fatalf("PostgreSQL unreachable and BATUTA_REQUIRE_SERVICES=1: %v", err)
		}
		t.Skipf("PostgreSQL unreachable (set BATUTA_PG_DSN; BATUTA_REQUIRE_SERVICES=1 makes this fatal): %v", err)
	}
	env := &outboxEnv{pool: pool, schema: "batuta_ob_" + randomSuffix()}
	env.ob = Outbox{Schema: env.schema}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := pool.Exec(ctx, `DROP SCHEMA `+quoteIdent(env.schema)+` CASCADE`)
		pool.Close()
		require.NoError(t, err)
	})
	env.exec(t, `CREATE SCHEMA `+quoteIdent(env.schema))
	env.exec(t, `CREATE TABLE `+quoteQualified(env.schema, "orders")+` (
		id bigserial PRIMARY KEY, writer int NOT NULL DEFAULT 0, amount int NOT NULL DEFAULT 0,
		status text NOT NULL DEFAULT 'new', note text)`)
	return env
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (e *outboxEnv) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	_, err := e.pool.Exec(context.Background(), sql, args...)
	require.NoError(t, err, sql)
}

func (e *outboxEnv) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, e.pool.QueryRow(context.Background(), sql, args...).Scan(&n), sql)
	return n
}

// orders returns the quoted name of the test's orders table.
func (e *outboxEnv) orders() string { return quoteQualified(e.schema, "orders") }

// outboxRows counts the rows left in the outbox.
func (e *outboxEnv) outboxRows(t *testing.T, ob Outbox) int {
	t.Helper()
	return e.count(t, `SELECT count(*) FROM `+ob.withDefaults().quoted())
}

func TestEmitDeliversOnlyCommitted(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	ctx := context.Background()
	require.NoError(t, InstallOutbox(ctx, env.pool, env.ob))

	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	emit := func(ev batuta.Event, commit bool) {
		tx, err := env.pool.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `INSERT INTO `+env.orders()+` (amount) VALUES (42)`)
		require.NoError(t, err)
		require.NoError(t, Emit(ctx, tx, env.ob, ev))
		if commit {
			require.NoError(t, tx.Commit(ctx))
		} else {
			require.NoError(t, tx.Rollback(ctx))
		}
	}
	emit(batuta.Event{ID: "order-1", Type: "order.placed", Subject: "1", Time: at,
		Data: []byte(`{"order":1}`), Metadata: map[string]string{"traceparent": "00-abc"}}, true)
	emit(batuta.Event{ID: "order-2", Type: "order.placed"}, false)
	emit(batuta.Event{Type: "order.placed", Data: []byte{0xff, 0x00}}, true) // no ID: derived from the row

	runs := newFakeRuns(true)
	stop := startTrigger(t, TriggerConfig{Pool: env.pool, Outbox: env.ob}, runs)
	waitFor(t, "two events", func() bool { return runs.accepted() == 2 })
	stop()
	require.Zero(t, env.outboxRows(t, env.ob))

	ev, ok := runs.event("order-1")
	require.True(t, ok)
	require.Equal(t, "order.placed", ev.Type)
	require.Equal(t, "1", ev.Subject)
	require.Equal(t, "postgres/"+env.schema+".batuta_outbox", ev.Source)
	require.True(t, at.Equal(ev.Time), "time %v", ev.Time)
	require.JSONEq(t, `{"order":1}`, string(ev.Data))
	require.Equal(t, "00-abc", ev.Metadata["traceparent"])
	require.NotEmpty(t, ev.Metadata["pgoutboxid"])

	_, ok = runs.event("order-2")
	require.False(t, ok, "rolled-back emit delivered")
	var derived batuta.Event
	for _, e := range runs.events() {
		if e.ID != "order-1" {
			derived = e
		}
	}
	require.Equal(t, "pg/"+env.schema+".batuta_outbox/"+derived.Metadata["pgoutboxid"], derived.ID)
	require.Equal(t, []byte{0xff, 0x00}, derived.Data)
	require.False(t, derived.Time.IsZero())
}

func TestEmitRefusesBadInputBeforeWriting(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	ctx := context.Background()
	ob := env.ob
	ob.MaxEmitBytes = 10
	require.NoError(t, InstallOutbox(ctx, env.pool, ob))

	tests := []struct {
		name string
		ob   Outbox
		ev   batuta.Event
		want error
	}{
		{"data over the cap", ob, batuta.Event{Data: []byte("01234567890")}, batuta.ErrPayloadTooLarge},
		{"NUL in type", ob, batuta.Event{Type: "a\x00b"}, batuta.ErrInvalidPayload},
		{"invalid UTF-8 in ID", ob, batuta.Event{ID: "\xff"}, batuta.ErrInvalidPayload},
		{"NUL in metadata", ob, batuta.Event{Metadata: map[string]string{"k": "\x00"}}, batuta.ErrInvalidPayload},
		{"hostile-long outbox name", Outbox{Schema: env.schema, Table: strings.Repeat("x", 64)}, batuta.Event{}, batuta.ErrInvalidIdentifier},
		{"NUL in channel", Outbox{Schema: env.schema, Channel: "c\x00"}, batuta.Event{}, batuta.ErrInvalidIdentifier},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := pgx.BeginFunc(ctx, env.pool, func(tx pgx.Tx) error {
				return Emit(ctx, tx, tt.ob, tt.ev)
			})
			require.ErrorIs(t, err, tt.want)
			require.ErrorContains(t, err, "batutapg:")
		})
	}
	require.Zero(t, env.outboxRows(t, ob))
}

func TestOutboxRowEvent(t *testing.T) {
	t.Parallel()
	ob := Outbox{}.withDefaults()
	at := time.Date(2026, 5, 6, 7, 8, 9, 123456000, time.UTC)
	str := func(s string) *string { return &s }
	tests := []struct {
		name     string
		row      outboxRow
		wantID   string
		wantType string
		wantSrc  string
		wantData string
	}{
		{
			name:     "insert",
			row:      outboxRow{id: 7, op: "insert", schema: str("shop"), table: str("orders"), newRow: []byte(`{"id": 1}`), createdAt: at, deliveries: 1},
			wantID:   "pg/public.batuta_outbox/7",
			wantType: "orders.insert",
			wantSrc:  "postgres/shop.orders",
			wantData: `{"op":"insert","schema":"shop","table":"orders","new":{"id":1},"old":null,"at":"2026-05-06T07:08:09.123456Z"}`,
		},
		{
			name:     "delete",
			row:      outboxRow{id: 8, op: "delete", schema: str("shop"), table: str("orders"), oldRow: []byte(`{"id": 1}`), createdAt: at},
			wantID:   "pg/public.batuta_outbox/8",
			wantType: "orders.delete",
			wantSrc:  "postgres/shop.orders",
			wantData: `{"op":"delete","schema":"shop","table":"orders","new":null,"old":{"id":1},"at":"2026-05-06T07:08:09.123456Z"}`,
		},
		{
			name:     "emit with defaults",
			row:      outboxRow{id: 9, op: "emit", typ: str("order.placed"), data: []byte(`{"x":1}`), createdAt: at},
			wantID:   "pg/public.batuta_outbox/9",
			wantType: "order.placed",
			wantSrc:  "postgres/public.batuta_outbox",
			wantData: `{"x":1}`,
		},
		{
			name:     "emit with its own ID and source",
			row:      outboxRow{id: 10, op: "emit", eventID: str("order-10"), source: str("shop/api"), data: []byte(`{}`), createdAt: at},
			wantID:   "order-10",
			wantSrc:  "shop/api",
			wantData: `{}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := tt.row.event(ob)
			require.NoError(t, err)
			require.Equal(t, tt.wantID, ev.ID)
			require.Equal(t, tt.wantType, ev.Type)
			require.Equal(t, tt.wantSrc, ev.Source)
			require.JSONEq(t, tt.wantData, string(ev.Data))
			require.True(t, at.Equal(ev.Time))
			if tt.row.op != "emit" {
				var cd ChangeData
				require.NoError(t, json.Unmarshal(ev.Data, &cd))
				require.Equal(t, tt.row.op, cd.Op)
				require.True(t, at.Equal(cd.At))
			}
		})
	}

	bad := outboxRow{id: 11, op: "emit", metadata: []byte(`{"k": 1}`), createdAt: at}
	_, err := bad.event(ob)
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)
}
