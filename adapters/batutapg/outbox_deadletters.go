package batutapg

import (
	"context"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxsql"
)

var _ batuta.DeadLetterBox = (*Trigger)(nil)

// deadBox is t's batuta.DeadLetterBox (outboxsql.DeadBox) with the
// PostgreSQL statements. A redrive notifies the outbox channel (unless
// Outbox.NoNotify), so listening consumers claim the rows at once.
func (t *Trigger) deadBox() *outboxsql.DeadBox {
	cfg := &t.cfg
	ob := cfg.Outbox.quoted()
	return &outboxsql.DeadBox{
		Source: "postgres outbox " + cfg.Outbox.String(),
		SQL: outboxsql.DeadSQL{
			List: func(ctx context.Context, after int64, n int) ([]outboxsql.DeadRow, error) {
				rows, err := cfg.Pool.Query(ctx, `SELECT id, op, schema_name, table_name, new_row, old_row, event_id, source, type, subject, data, metadata, event_time, created_at, deliveries, dead_at, last_error
	FROM `+ob+` WHERE dead_at IS NOT NULL AND id > $1 ORDER BY id LIMIT $2`, after, n)
				if err != nil {
					return nil, err
				}
				defer rows.Close()
				var out []outboxsql.DeadRow
				for rows.Next() {
					r := &outboxRow{}
					var deadAt time.Time
					var lastErr *string
					if err := rows.Scan(append(r.scanTargets(), &deadAt, &lastErr)...); err != nil {
						return nil, err
					}
					ev, evErr := r.event(cfg.Outbox)
					out = append(out, outboxsql.DeadRow{ID: r.id, Event: ev, EventErr: evErr, DeadAt: deadAt, LastError: deref(lastErr), Deliveries: r.deliveries})
				}
				return out, rows.Err()
			},
			Revive: func(ctx context.Context, ids []int64) (int, error) {
				sql := `UPDATE ` + ob + ` SET dead_at = NULL, last_error = NULL, claimed_until = NULL, claimed_by = NULL, deliveries = 0
	WHERE dead_at IS NOT NULL AND id = ANY($1)`
				tag, err := cfg.Pool.Exec(ctx, sql, ids)
				n := int(tag.RowsAffected())
				if err == nil && n > 0 && !cfg.Outbox.NoNotify {
					// Only a wake-up: a lost one costs a poll interval.
					_, _ = cfg.Pool.Exec(ctx, `SELECT pg_notify($1, '')`, cfg.Outbox.Channel)
				}
				return n, err
			},
			Delete: func(ctx context.Context, ids []int64) (int, error) {
				tag, err := cfg.Pool.Exec(ctx, `DELETE FROM `+ob+` WHERE dead_at IS NOT NULL AND id = ANY($1)`, ids)
				return int(tag.RowsAffected()), err
			},
		},
	}
}

// DeadLetterSource implements batuta.DeadLetterBox.
func (t *Trigger) DeadLetterSource() string { return t.deadBox().Source }

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
