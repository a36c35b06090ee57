package batutatest

import (
	"context"
	"database/sql"
	"testing"

	"github.com/batuta-dev/batuta"
)

// SQLOutbox is an OutboxFixture for an adapter over database/sql: the
// adapter gives its functions and names, SQLOutbox writes the rows and
// reads the outbox with plain SQL (placeholders "?").
type SQLOutbox struct {
	// DB holds the user table and the outbox.
	DB *sql.DB
	// WriterDB, if set, is where Insert writes (SQLite: writers share one
	// connection). Default DB.
	WriterDB *sql.DB
	// Table and Outbox are the quoted names of the user table and the
	// outbox table.
	Table, Outbox string
	// IDPrefix and Source are what Derived returns.
	IDPrefix, Source string
	// InstallOutboxFunc and InstallCaptureFunc install the outbox, and the
	// outbox with the user table's capture triggers.
	InstallOutboxFunc, InstallCaptureFunc func(ctx context.Context) error
	// EmitFunc calls the adapter's Emit on tx, with the outbox's
	// MaxEmitBytes set to maxBytes unless it is 0.
	EmitFunc func(ctx context.Context, tx *sql.Tx, maxBytes int, ev batuta.Event) error
	// TriggerFunc returns a new consumer of the outbox.
	TriggerFunc func(t *testing.T, o OutboxTriggerOptions) batuta.TrackingTrigger
}

var _ OutboxFixture = (*SQLOutbox)(nil)

// InstallOutbox implements OutboxFixture.
func (f *SQLOutbox) InstallOutbox(ctx context.Context) error { return f.InstallOutboxFunc(ctx) }

// InstallCapture implements OutboxFixture.
func (f *SQLOutbox) InstallCapture(ctx context.Context) error { return f.InstallCaptureFunc(ctx) }

// Insert implements OutboxFixture.
func (f *SQLOutbox) Insert(ctx context.Context, names []string, rollback bool) error {
	db := f.WriterDB
	if db == nil {
		db = f.DB
	}
	return InSQLTx(ctx, db, rollback, func(tx *sql.Tx) error {
		for _, name := range names {
			// f.Table is the test fixture's own, already quoted table name.
			if _, err := tx.ExecContext(ctx, "INSERT INTO "+f.Table+" (name) VALUES (?)", name); err != nil { //nolint:gosec // G202: f.Table is a quoted identifier the adapter's test chose
				return err
			}
		}
		return nil
	})
}

// Emit implements OutboxFixture.
func (f *SQLOutbox) Emit(ctx context.Context, rollback bool, evs ...batuta.Event) error {
	return InSQLTx(ctx, f.DB, rollback, func(tx *sql.Tx) error {
		for _, ev := range evs {
			if err := f.EmitFunc(ctx, tx, 0, ev); err != nil {
				return err
			}
		}
		return nil
	})
}

// EmitCapped implements OutboxFixture.
func (f *SQLOutbox) EmitCapped(ctx context.Context, maxBytes int, ev batuta.Event) error {
	var emitErr error
	if err := InSQLTx(ctx, f.DB, true, func(tx *sql.Tx) error {
		emitErr = f.EmitFunc(ctx, tx, maxBytes, ev)
		return nil
	}); err != nil {
		return err
	}
	return emitErr
}

// Count implements OutboxFixture.
func (f *SQLOutbox) Count(ctx context.Context) (rows, claimed int, dead []string, err error) {
	if err := f.DB.QueryRowContext(ctx, "SELECT COUNT(*), COUNT(claimed_by) FROM "+f.Outbox).Scan(&rows, &claimed); err != nil {
		return 0, 0, nil, err
	}
	dead, err = sqlColumn[string](ctx, f.DB, "SELECT last_error FROM "+f.Outbox+" WHERE dead_at IS NOT NULL ORDER BY id")
	return rows, claimed, dead, err
}

// Derived implements OutboxFixture.
func (f *SQLOutbox) Derived() (idPrefix, source string) { return f.IDPrefix, f.Source }

// RowIDs implements OutboxFixture.
func (f *SQLOutbox) RowIDs(ctx context.Context) ([]int64, error) {
	return sqlColumn[int64](ctx, f.DB, "SELECT id FROM "+f.Outbox+" ORDER BY id")
}

// Trigger implements OutboxFixture.
func (f *SQLOutbox) Trigger(t *testing.T, o OutboxTriggerOptions) batuta.TrackingTrigger {
	return f.TriggerFunc(t, o)
}

// InSQLTx runs fn in a transaction on db and commits it, or rolls it back
// when rollback is set or fn fails.
func InSQLTx(ctx context.Context, db *sql.DB, rollback bool, fn func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil || rollback {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// sqlColumn returns the one column of query's rows.
func sqlColumn[T any](ctx context.Context, db *sql.DB, query string) ([]T, error) {
	rs, err := db.QueryContext(ctx, query)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rs.Close() }()
	var out []T
	for rs.Next() {
		var v T
		if err := rs.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rs.Err()
}
