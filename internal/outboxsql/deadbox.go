package outboxsql

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxloop"
)

// DeadRow is a dead outbox row (dead_at set) as an adapter reads it.
type DeadRow struct {
	// ID is the row id.
	ID int64
	// Event is the event the row would fire; EventErr why it cannot be
	// built (then Event holds what could be read).
	Event    batuta.Event
	EventErr error
	// DeadAt and LastError are the row's dead_at and last_error.
	DeadAt    time.Time
	LastError string
	// Deliveries counts its deliveries.
	Deliveries int
}

// DeadSQL is an adapter's statements on the dead rows of one outbox.
type DeadSQL struct {
	// List returns up to n dead rows with an id above after, by id.
	List func(ctx context.Context, after int64, n int) ([]DeadRow, error)
	// Revive makes the dead rows among ids claimable again as new (dead_at,
	// last_error, the lease and deliveries cleared) and returns how many.
	Revive func(ctx context.Context, ids []int64) (int, error)
	// Delete deletes the dead rows among ids and returns how many.
	Delete func(ctx context.Context, ids []int64) (int, error)
}

// DeadBox is the batuta.DeadLetterBox of an outbox Trigger: its dead rows,
// listed with their last_error, redriven (claimable again, so the
// consumers fire them as new: at once with a Wake) or deleted. The three
// adapters differ only by DeadSQL.
type DeadBox struct {
	// Source describes the outbox ("postgres outbox public.batuta_outbox").
	Source string
	SQL    DeadSQL
	// Wake, if not nil, is called after a redrive (a polling consumer
	// claims at once).
	Wake func()
}

var _ batuta.DeadLetterBox = (*DeadBox)(nil)

// DeadLetterSource implements batuta.DeadLetterBox.
func (b *DeadBox) DeadLetterSource() string { return b.Source }

// DeadLetters implements batuta.DeadLetterBox: the IDs are the row ids.
func (b *DeadBox) DeadLetters(ctx context.Context, q batuta.DeadLetterQuery) ([]batuta.DeadLetterItem, error) {
	var after int64
	if q.After != "" {
		ids, err := parseIDs([]string{q.After})
		if err != nil {
			return nil, err
		}
		after = ids[0]
	}
	rows, err := b.SQL.List(ctx, after, q.PageLimit())
	if err != nil {
		return nil, fmt.Errorf("%s: listing dead rows: %w", b.Source, err)
	}
	out := make([]batuta.DeadLetterItem, len(rows))
	for i, r := range rows {
		reason := batuta.DeadLetterPermanent
		if r.EventErr != nil {
			reason = batuta.DeadLetterMalformed
		}
		out[i] = batuta.DeadLetterItem{ID: strconv.FormatInt(r.ID, 10), DeadLetter: batuta.DeadLetter{
			Event: r.Event, Reason: reason, Error: r.LastError, Attempts: r.Deliveries, Time: r.DeadAt,
		}}
	}
	return out, nil
}

// Redrive implements batuta.DeadLetterBox.
func (b *DeadBox) Redrive(ctx context.Context, ids ...string) (int, error) {
	n, err := b.each(ctx, ids, b.SQL.Revive)
	if err != nil {
		return n, fmt.Errorf("%s: redrive: %w", b.Source, err)
	}
	if n > 0 && b.Wake != nil {
		b.Wake()
	}
	return n, nil
}

// Delete implements batuta.DeadLetterBox.
func (b *DeadBox) Delete(ctx context.Context, ids ...string) (int, error) {
	n, err := b.each(ctx, ids, b.SQL.Delete)
	if err != nil {
		return n, fmt.Errorf("%s: delete: %w", b.Source, err)
	}
	return n, nil
}

// maxIDsPerStatement bounds the ids one statement takes.
const maxIDsPerStatement = 500

func (b *DeadBox) each(ctx context.Context, ids []string, do func(context.Context, []int64) (int, error)) (int, error) {
	parsed, err := parseIDs(ids)
	if err != nil {
		return 0, err
	}
	n := 0
	for part := range slices.Chunk(parsed, maxIDsPerStatement) {
		k, err := do(ctx, part)
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// parseIDs parses row ids, sorted and without duplicates.
func parseIDs(ids []string) ([]int64, error) {
	out := make([]int64, 0, len(ids))
	for _, s := range ids {
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id <= 0 {
			return nil, fmt.Errorf("%w: %q is not an outbox row id (a positive integer)", batuta.ErrBadDeadLetterID, s)
		}
		out = append(out, id)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// SQLDead returns the DeadSQL of a database/sql dialect whose placeholder
// is "?" (MySQL, SQLite): table returns the quoted outbox table, columns
// the column list scan reads after which dead_at (as text) and last_error
// come, and scan reads one row.
func SQLDead(db *sql.DB, table func(ctx context.Context) (string, error), columns, deadAt string, scan func(*sql.Rows) (DeadRow, error)) DeadSQL {
	exec := func(ctx context.Context, stmt string, ids []int64) (int, error) {
		t, err := table(ctx)
		if err != nil {
			return 0, err
		}
		in, args := outboxloop.InList(ids)
		res, err := db.ExecContext(ctx, fmt.Sprintf(stmt, t)+in+")", args...)
		if err != nil {
			return 0, err
		}
		n, err := res.RowsAffected()
		return int(n), err
	}
	return DeadSQL{
		List: func(ctx context.Context, after int64, n int) ([]DeadRow, error) {
			t, err := table(ctx)
			if err != nil {
				return nil, err
			}
			rs, err := db.QueryContext(ctx, "SELECT "+columns+", "+deadAt+", last_error FROM "+t+ //nolint:gosec // G202: quoted identifier and dialect constants
				" WHERE dead_at IS NOT NULL AND id > ? ORDER BY id LIMIT ?", after, n)
			if err != nil {
				return nil, err
			}
			defer rs.Close()
			var out []DeadRow
			for rs.Next() {
				r, err := scan(rs)
				if err != nil {
					return nil, err
				}
				out = append(out, r)
			}
			return out, rs.Err()
		},
		Revive: func(ctx context.Context, ids []int64) (int, error) {
			return exec(ctx, "UPDATE %s SET dead_at = NULL, last_error = NULL, claimed_until = NULL, claimed_by = NULL, deliveries = 0"+
				" WHERE dead_at IS NOT NULL AND id IN (", ids)
		},
		Delete: func(ctx context.Context, ids []int64) (int, error) {
			return exec(ctx, "DELETE FROM %s WHERE dead_at IS NOT NULL AND id IN (", ids)
		},
	}
}
