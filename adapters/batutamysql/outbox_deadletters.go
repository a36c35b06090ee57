package batutamysql

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxsql"
)

var _ batuta.DeadLetterBox = (*Trigger)(nil)

// deadBox is t's batuta.DeadLetterBox (outboxsql.DeadBox). A redrive
// wakes this process's consumers (Wake).
func (t *Trigger) deadBox() *outboxsql.DeadBox {
	db, ob := t.cfg.DB, t.cfg.Outbox
	// The schema is resolved once per box (one per call of a method), by
	// the table func, before any row is scanned.
	resolved := ob
	table := func(ctx context.Context) (string, error) {
		if resolved.Schema == "" {
			schema, err := resolveSchema(ctx, db, ob.Schema)
			if err != nil {
				return "", err
			}
			resolved.Schema = schema
		}
		return resolved.quoted(), nil
	}
	return &outboxsql.DeadBox{
		Source: "mysql outbox " + ob.String(),
		Wake:   t.Wake,
		SQL: outboxsql.SQLDead(db, table, outboxColumns, "CAST(dead_at AS CHAR)",
			func(rs *sql.Rows) (outboxsql.DeadRow, error) {
				var r outboxRow
				var deadAt string
				var lastErr sql.NullString
				if err := r.scan(extraScan{rs, []any{&deadAt, &lastErr}}); err != nil {
					return outboxsql.DeadRow{}, err
				}
				at, err := parseMySQLTime(deadAt)
				if err != nil {
					return outboxsql.DeadRow{}, fmt.Errorf("bad dead_at %q of row %d: %w", deadAt, r.id, err)
				}
				ev, evErr := r.event(resolved.Schema, resolved.Table)
				return outboxsql.DeadRow{ID: int64(r.id), Event: ev, EventErr: evErr, DeadAt: at, LastError: lastErr.String, Deliveries: r.deliveries}, nil
			}),
	}
}

// extraScan scans the outbox columns into the row, then extra.
type extraScan struct {
	rs    *sql.Rows
	extra []any
}

func (s extraScan) Scan(dest ...any) error { return s.rs.Scan(append(dest, s.extra...)...) }

// DeadLetterSource implements batuta.DeadLetterBox.
func (t *Trigger) DeadLetterSource() string { return "mysql outbox " + t.cfg.Outbox.String() }

// DeadLetters lists the outbox's dead rows (those marked dead because
// their event can never be accepted), oldest first, with last_error as
// the dead letter's Error, dead_at as its Time and the deliveries as its
// Attempts. The IDs are the row ids. It implements batuta.DeadLetterBox.
func (t *Trigger) DeadLetters(ctx context.Context, q batuta.DeadLetterQuery) ([]batuta.DeadLetterItem, error) {
	return t.deadBox().DeadLetters(ctx, q)
}

// Redrive makes the dead rows ids claimable again, as new (their
// deliveries reset): a consumer fires them again, under the same event
// ID. Fix what made them dead first (the orchestrator's MaxPayloadBytes,
// say). Rows that are not dead (redriven already, deleted) are left
// alone. It returns how many rows it redrove.
func (t *Trigger) Redrive(ctx context.Context, ids ...string) (int, error) {
	return t.deadBox().Redrive(ctx, ids...)
}

// Delete deletes the dead rows ids and returns how many there were.
func (t *Trigger) Delete(ctx context.Context, ids ...string) (int, error) {
	return t.deadBox().Delete(ctx, ids...)
}
