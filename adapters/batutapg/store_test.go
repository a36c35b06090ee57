package batutapg

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"
)

// storeTestDSN is the server the store tests use: BATUTA_PG_DSN, or the
// local test database.
func storeTestDSN() string {
	if dsn := os.Getenv("BATUTA_PG_DSN"); dsn != "" {
		return dsn
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// storeTestPool connects to PostgreSQL, skipping the test if it is
// unreachable (failing it if BATUTA_REQUIRE_SERVICES=1). The pool is closed
// at cleanup.
func storeTestPool(t testing.TB, maxConns int32) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(storeTestDSN())
	require.NoError(t, err)
	cfg.MaxConns = maxConns
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
	t.Cleanup(pool.Close)
	return pool
}

// volumeTests reports whether the big-volume variants run
// (BATUTA_VOLUME=1).
func volumeTests() bool { return os.Getenv("BATUTA_VOLUME") == "1" }

func storeSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// dropSchemaAtCleanup drops schema when the test ends.
func dropSchemaAtCleanup(t testing.TB, pool *pgxpool.Pool, schema string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+quoteIdent(schema)+` CASCADE`)
		require.NoError(t, err)
	})
}

// newTestStore returns a Store on a fresh schema (cfg.Schema, if empty, a
// random one), closed and dropped at cleanup.
func newTestStore(t testing.TB, pool *pgxpool.Pool, cfg Config) *Store {
	t.Helper()
	if cfg.Schema == "" {
		cfg.Schema = "batuta_st_" + storeSuffix()
	}
	dropSchemaAtCleanup(t, pool, cfg.Schema)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := New(ctx, pool, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// TestConformanceSQLDB runs the suite on a *sql.DB of the pgx stdlib
// driver (NewFromDB).
func TestConformanceSQLDB(t *testing.T) {
	pool := storeTestPool(t, 16)
	db := stdlib.OpenDBFromPool(pool)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	batutatest.TestStore(t, batutatest.StoreSuite{
		New: func(t *testing.T) batuta.Store {
			schema := "batuta_sq_" + storeSuffix()
			dropSchemaAtCleanup(t, pool, schema)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s, err := NewFromDB(ctx, db, Config{Schema: schema})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, s.Close()) })
			return s
		},
	})
}

func TestNewFromDBRefusesOtherDrivers(t *testing.T) {
	t.Parallel()
	_, err := NewFromDB(context.Background(), nil, Config{})
	var ce *batuta.ConfigError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "db", ce.Field)
}

// TestFlow runs the flow controls end to end through an orchestrator on the
// PostgreSQL store.
func TestFlow(t *testing.T) {
	pool := storeTestPool(t, 16)
	batutatest.TestFlow(t, func(t *testing.T) batuta.Store { return newTestStore(t, pool, Config{}) })
}

func TestConformance(t *testing.T) {
	pool := storeTestPool(t, 16)
	batutatest.TestStore(t, batutatest.StoreSuite{
		New: func(t *testing.T) batuta.Store { return newTestStore(t, pool, Config{}) },
		Reopen: func(t *testing.T, s batuta.Store) batuta.Store {
			old := s.(*Store)
			require.NoError(t, old.Close())
			// A restarted process: a new pool, a new Store on the same schema.
			pool2 := storeTestPool(t, 4)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s2, err := New(ctx, pool2, Config{Schema: old.Schema()})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, s2.Close()) })
			return s2
		},
	})
}
