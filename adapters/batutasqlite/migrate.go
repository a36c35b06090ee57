package batutasqlite

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The schema migrations, applied in order by New and Open. A file is named
// NNNN_description.sql; NNNN is its version. Migrations are forward-only and
// never edited once released: a schema change is a new file.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one embedded schema change.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads the embedded migrations in version order.
func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("batutasqlite: read migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		if !ok {
			return nil, fmt.Errorf("batutasqlite: migration %q: name is not NNNN_description.sql", name)
		}
		v, err := strconv.Atoi(num)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("batutasqlite: migration %q: bad version %q", name, num)
		}
		body, err := migrationFiles.ReadFile(path.Join("migrations", name))
		if err != nil {
			return nil, fmt.Errorf("batutasqlite: read migration %q: %w", name, err)
		}
		ms = append(ms, migration{version: v, name: strings.TrimSuffix(name, ".sql"), sql: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("batutasqlite: two migrations with version %d", ms[i].version)
		}
	}
	return ms, nil
}

// SchemaVersion returns the schema version this build of the store needs:
// the version of its newest migration. Applied versions are recorded in the
// batuta_migrations table.
func SchemaVersion() int {
	ms, err := loadMigrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].version
}

// Migrate applies the store's pending schema migrations to db, a database
// opened with the modernc.org/sqlite driver. Open and New do it already
// unless Config.ManualMigrate is set; call Migrate from a deploy step when it
// is. It is idempotent and safe when several processes run it at once: each
// migration runs in its own BEGIN IMMEDIATE transaction. It refuses a
// database whose schema is newer than this build.
func Migrate(ctx context.Context, db *sql.DB) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("batutasqlite: migrate: connect: %w", err)
	}
	defer func() { _ = conn.Close() }()
	var busy int
	if err := conn.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&busy); err != nil {
		return fmt.Errorf("batutasqlite: migrate: %w", err)
	}
	if busy == 0 {
		if _, err := conn.ExecContext(ctx, fmt.Sprintf("PRAGMA busy_timeout = %d", DefaultBusyTimeout.Milliseconds())); err != nil {
			return fmt.Errorf("batutasqlite: migrate: %w", err)
		}
	}
	return migrate(ctx, conn, slog.Default())
}

// checkVersion fails unless the database is at SchemaVersion.
func checkVersion(ctx context.Context, conn *sql.Conn) error {
	var n int
	if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'batuta_migrations'`).Scan(&n); err != nil {
		return fmt.Errorf("batutasqlite: read schema version: %w", err)
	}
	v := 0
	if n > 0 {
		if err := conn.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM batuta_migrations`).Scan(&v); err != nil {
			return fmt.Errorf("batutasqlite: read schema version: %w", err)
		}
	}
	if want := SchemaVersion(); v != want {
		return fmt.Errorf("batutasqlite: database schema is at version %d, this build needs %d: apply the migrations (batutasqlite.Migrate) or unset Config.ManualMigrate", v, want)
	}
	return nil
}

// migrate brings the database behind conn to SchemaVersion(). Each migration
// runs in its own BEGIN IMMEDIATE transaction and is recorded in
// batuta_migrations in that transaction, so two processes opening the same
// file at once apply each migration exactly once. A database whose schema is
// newer than this package knows is refused rather than used.
func migrate(ctx context.Context, conn *sql.Conn, logger *slog.Logger) error {
	return migrateUpTo(ctx, conn, logger, 0)
}

// migrateUpTo is migrate stopping after version upTo (0: the newest). Tests
// use it to build a database as an older build left it.
func migrateUpTo(ctx context.Context, conn *sql.Conn, logger *slog.Logger, upTo int) error {
	ms, err := loadMigrations()
	if err != nil {
		return err
	}
	if len(ms) == 0 {
		return fmt.Errorf("batutasqlite: no migrations embedded")
	}
	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS batuta_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at INTEGER NOT NULL
) STRICT`); err != nil {
		return fmt.Errorf("batutasqlite: create batuta_migrations: %w", err)
	}
	var current int
	if err := conn.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM batuta_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("batutasqlite: read schema version: %w", err)
	}
	if latest := ms[len(ms)-1].version; current > latest {
		return fmt.Errorf("batutasqlite: database schema version %d is newer than this build supports (%d); upgrade batutasqlite", current, latest)
	}
	for _, m := range ms {
		if m.version <= current || (upTo > 0 && m.version > upTo) {
			continue
		}
		applied, err := applyMigration(ctx, conn, m)
		if err != nil {
			return err
		}
		if applied {
			logger.InfoContext(ctx, "batutasqlite: applied schema migration", slog.Int("version", m.version), slog.String("name", m.name))
		}
	}
	return nil
}

// applyMigration applies m unless another process did it first, and reports
// whether it did.
func applyMigration(ctx context.Context, conn *sql.Conn, m migration) (applied bool, err error) {
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return false, fmt.Errorf("batutasqlite: migration %s: begin: %w", m.name, err)
	}
	defer func() {
		if err != nil {
			rollback(conn)
		}
	}()
	var n int
	if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM batuta_migrations WHERE version = ?`, m.version).Scan(&n); err != nil {
		return false, fmt.Errorf("batutasqlite: migration %s: %w", m.name, err)
	}
	if n > 0 {
		if _, err := conn.ExecContext(context.WithoutCancel(ctx), "COMMIT"); err != nil {
			return false, fmt.Errorf("batutasqlite: migration %s: commit: %w", m.name, err)
		}
		return false, nil
	}
	if _, err := conn.ExecContext(ctx, m.sql); err != nil {
		return false, fmt.Errorf("batutasqlite: migration %s: %w", m.name, err)
	}
	if _, err := conn.ExecContext(ctx, `INSERT INTO batuta_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
		m.version, m.name, time.Now().UnixNano()); err != nil {
		return false, fmt.Errorf("batutasqlite: migration %s: record: %w", m.name, err)
	}
	if _, err := conn.ExecContext(context.WithoutCancel(ctx), "COMMIT"); err != nil {
		return false, fmt.Errorf("batutasqlite: migration %s: commit: %w", m.name, err)
	}
	return true, nil
}

// rollback ends the transaction open on conn, if any. It ignores the error
// SQLite returns when no transaction is active (a failed statement may have
// rolled it back already).
func rollback(conn *sql.Conn) {
	_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
}
