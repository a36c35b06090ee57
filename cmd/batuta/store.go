package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
)

// backend is an open connection to the database a DSN names.
type backend struct {
	kind   string // "postgres" or "sqlite"
	pool   *pgxpool.Pool
	schema string // postgres
	path   string // sqlite
	db     *sql.DB
}

// dsnKind tells which database a DSN names, and for SQLite the path.
func dsnKind(dsn string) (kind, path string, err error) {
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return "postgres", "", nil
	case strings.HasPrefix(dsn, "sqlite:"):
		p := strings.TrimPrefix(dsn, "sqlite:")
		p = strings.TrimPrefix(p, "//") // sqlite:///abs/path and sqlite://rel/path
		if p == "" {
			return "", "", usageErrorf("--dsn sqlite: names no file (write sqlite:PATH)")
		}
		return "sqlite", p, nil
	}
	scheme, _, ok := strings.Cut(dsn, ":")
	if !ok {
		scheme = "(none)"
	}
	return "", "", usageErrorf("--dsn: unsupported scheme %q: use postgres://... or sqlite:PATH", scheme)
}

// connect opens the database of a.dsn. create allows a SQLite file that
// does not exist yet (migrate up); otherwise a missing file is an error,
// so a typo never creates an empty store.
func (a *app) connect(ctx context.Context, create bool) (*backend, error) {
	if err := a.requireDSN(); err != nil {
		return nil, err
	}
	kind, path, err := dsnKind(a.dsn)
	if err != nil {
		return nil, err
	}
	b := &backend{kind: kind, path: path, schema: a.schema}
	switch kind {
	case "postgres":
		cfg, err := pgxpool.ParseConfig(a.dsn)
		if err != nil {
			return nil, usageErrorf("--dsn: %w", err)
		}
		cfg.MaxConns = 4
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err == nil {
			if err = pool.Ping(ctx); err != nil {
				pool.Close()
			}
		}
		if err != nil {
			return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
		}
		b.pool = pool
	case "sqlite":
		if !create && !strings.HasPrefix(path, "file:") {
			if _, err := os.Stat(path); err != nil {
				return nil, fmt.Errorf("SQLite store %s: %w", path, err)
			}
		}
		db, err := sql.Open("sqlite", path)
		if err != nil {
			return nil, fmt.Errorf("open SQLite store %s: %w", path, err)
		}
		b.db = db
	}
	return b, nil
}

// close releases the connections.
func (b *backend) close() {
	if b.pool != nil {
		b.pool.Close()
	}
	if b.db != nil {
		_ = b.db.Close()
	}
}

// appliedMigration is one row of the store's migration table.
type appliedMigration struct {
	Version   int       `json:"version"`
	Name      string    `json:"name"`
	AppliedAt time.Time `json:"applied_at"`
}

// schemaStatus is what migrate status reports.
type schemaStatus struct {
	Store   string             `json:"store"` // "postgres" or "sqlite"
	Where   string             `json:"where"` // schema or file
	Current int                `json:"current"`
	Needed  int                `json:"needed"`
	Applied []appliedMigration `json:"applied"`
}

// Pending is how many migrations this build would apply.
func (s *schemaStatus) Pending() int { return max(0, s.Needed-s.Current) }

// status reads the applied migrations.
func (b *backend) status(ctx context.Context) (*schemaStatus, error) {
	st := &schemaStatus{Store: b.kind, Applied: []appliedMigration{}}
	switch b.kind {
	case "postgres":
		st.Where, st.Needed = "schema "+b.schema, batutapg.SchemaVersion()
		table := pgx.Identifier{b.schema, "store_migrations"}.Sanitize()
		rows, err := b.pool.Query(ctx, "SELECT version, name, applied_at FROM "+table+" ORDER BY version")
		if err == nil {
			for rows.Next() {
				var m appliedMigration
				if err = rows.Scan(&m.Version, &m.Name, &m.AppliedAt); err != nil {
					break
				}
				st.Applied = append(st.Applied, m)
			}
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
		var pe *pgconn.PgError
		if errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "3F000") { // no table / no schema: nothing applied
			err = nil
		}
		if err != nil {
			return nil, fmt.Errorf("read the migrations of schema %q: %w", b.schema, err)
		}
	case "sqlite":
		st.Where, st.Needed = "file "+b.path, batutasqlite.SchemaVersion()
		var n int
		if err := b.db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'batuta_migrations'`).Scan(&n); err != nil {
			return nil, fmt.Errorf("read the migrations of %s: %w", b.path, err)
		}
		if n > 0 {
			rows, err := b.db.QueryContext(ctx, `SELECT version, name, applied_at FROM batuta_migrations ORDER BY version`)
			if err != nil {
				return nil, fmt.Errorf("read the migrations of %s: %w", b.path, err)
			}
			defer func() { _ = rows.Close() }()
			for rows.Next() {
				var m appliedMigration
				var at int64
				if err := rows.Scan(&m.Version, &m.Name, &at); err != nil {
					return nil, fmt.Errorf("read the migrations of %s: %w", b.path, err)
				}
				m.AppliedAt = time.Unix(0, at).UTC()
				st.Applied = append(st.Applied, m)
			}
			if err := rows.Err(); err != nil {
				return nil, fmt.Errorf("read the migrations of %s: %w", b.path, err)
			}
		}
	}
	sort.Slice(st.Applied, func(i, j int) bool { return st.Applied[i].Version < st.Applied[j].Version })
	if n := len(st.Applied); n > 0 {
		st.Current = st.Applied[n-1].Version
	}
	return st, nil
}

// errSchemaBehind is wrapped by the error of a command that found the
// store's schema behind this build.
var errSchemaBehind = errors.New("the store's schema is behind this build")

// openStore opens the batuta.Store of a.dsn for the runs commands. It never
// migrates: a schema behind this build is an exitSchema error that says to
// run batuta migrate up. The store starts no listener and no liveness
// loop: the command is not a worker. Call the returned close when done.
func (a *app) openStore(ctx context.Context) (batuta.Store, func(), error) {
	b, err := a.connect(ctx, false)
	if err != nil {
		return nil, nil, err
	}
	st, err := b.status(ctx)
	if err != nil {
		b.close()
		return nil, nil, err
	}
	if st.Current < st.Needed {
		b.close()
		return nil, nil, withCode(exitSchema, fmt.Errorf("%w: %s %s is at version %d, this batuta needs %d: run 'batuta migrate up'",
			errSchemaBehind, st.Store, st.Where, st.Current, st.Needed))
	}
	switch b.kind {
	case "postgres":
		s, err := batutapg.New(ctx, b.pool, batutapg.Config{
			Schema:           b.schema,
			ManualMigrate:    true,
			DisableListen:    true,
			LivenessInterval: -1,
			Logger:           a.log,
		})
		if err != nil {
			b.close()
			return nil, nil, err
		}
		return s, func() { _ = s.Close(); b.close() }, nil
	default:
		_ = b.db.Close()
		s, err := batutasqlite.Open(ctx, b.path, batutasqlite.Config{ManualMigrate: true, ReadConns: 2, Logger: a.log})
		if err != nil {
			return nil, nil, err
		}
		return s, func() { _ = s.Close() }, nil
	}
}
