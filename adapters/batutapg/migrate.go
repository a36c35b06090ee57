package batutapg

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// migrationFiles are the store's schema migrations, applied in version
// order. A file is named NNNN_description.sql and holds unqualified names:
// it runs with search_path set to the configured schema.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded migrations in version order.
func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("batutapg: migration file %q is not named NNNN_name.sql", e.Name())
		}
		b, err := migrationFiles.ReadFile("migrations/" + e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: e.Name(), sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out, nil
}

// SchemaVersion is the schema version this build of the store needs: the
// number of its newest migration.
func SchemaVersion() int {
	ms, err := migrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].version
}

// A Beginner starts transactions: *pgxpool.Pool, *pgx.Conn and pgx.Tx
// (a savepoint) all are.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// migrateLockKey is the advisory lock key that serialises migrations of one
// schema across processes.
func migrateLockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("batutapg.store.migrate:" + schema))
	return int64(h.Sum64())
}

// MigrateSchema creates the named schema if missing and applies the store's
// pending migrations to it, all in one transaction that holds a
// transaction-level advisory lock keyed by the schema name. It is
// idempotent, and safe when several processes run it at once: the others
// wait for the lock, then find nothing left to do. A database migrated by
// a newer build (versions this build does not know) is left alone.
//
// Applying migrations needs CREATE on the database (for the schema) or an
// existing schema the role owns.
func MigrateSchema(ctx context.Context, db Beginner, schema string) error {
	if err := validIdent("schema", schema); err != nil {
		return err
	}
	ms, err := migrations()
	if err != nil {
		return err
	}
	for try := 0; ; try++ {
		err = migrate(ctx, db, schema, ms)
		var pe *pgconn.PgError
		// Another component creating the same schema at the same moment
		// (under its own lock) loses a race on the catalog: try again.
		if try < 3 && errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "42P06") {
			continue
		}
		return err
	}
}

func migrate(ctx context.Context, db Beginner, schema string, ms []migration) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("batutapg: migrate: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	q := quoteIdent(schema)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrateLockKey(schema)); err != nil {
		return fmt.Errorf("batutapg: migrate: lock: %w", err)
	}
	for _, stmt := range []string{
		"CREATE SCHEMA IF NOT EXISTS " + q,
		"CREATE TABLE IF NOT EXISTS " + q + ".store_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
	} {
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("batutapg: migrate schema %q: %w", schema, err)
		}
	}
	// Every migration not yet recorded is applied, in version order: a
	// version added below the newest applied one (numbers are not always
	// merged in order) is applied too.
	done := map[int]bool{}
	rows, err := tx.Query(ctx, "SELECT version FROM "+q+".store_migrations")
	if err != nil {
		return fmt.Errorf("batutapg: migrate schema %q: %w", schema, err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fmt.Errorf("batutapg: migrate schema %q: %w", schema, err)
		}
		done[v] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("batutapg: migrate schema %q: %w", schema, err)
	}
	applied := false
	for _, m := range ms {
		if done[m.version] {
			continue
		}
		if !applied {
			if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+q); err != nil {
				return fmt.Errorf("batutapg: migrate schema %q: %w", schema, err)
			}
			applied = true
		}
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return fmt.Errorf("batutapg: migrate schema %q: %s: %w", schema, m.name, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+q+".store_migrations (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
			return fmt.Errorf("batutapg: migrate schema %q: record %s: %w", schema, m.name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("batutapg: migrate schema %q: commit: %w", schema, err)
	}
	return nil
}

// checkVersion fails unless schema is at SchemaVersion() or later.
func checkVersion(ctx context.Context, db querier, schema string) error {
	var v int
	err := db.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+quoteIdent(schema)+".store_migrations").Scan(&v)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "3F000") { // undefined table / schema
		v, err = 0, nil
	}
	if err != nil {
		return fmt.Errorf("batutapg: check schema %q: %w", schema, err)
	}
	if want := SchemaVersion(); v < want {
		return fmt.Errorf("batutapg: schema %q is at version %d, this build needs %d: apply the migrations (Store.Migrate or MigrateSchema)", schema, v, want)
	}
	return nil
}
