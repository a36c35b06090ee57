package outboxsql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
)

// BacklogCountMax bounds the rows an outbox Backlog counts: a backlog
// larger than that reads as BacklogCountMax rows (pending and in flight
// together), so the count stays a bounded scan whatever the backlog.
const BacklogCountMax = 100000

// SQLBacklog is the Backlog of a database/sql outbox (MySQL/MariaDB,
// SQLite), in two queries: the rows not dead, counted up to
// BacklogCountMax, split into pending (never leased, or lease expired) and
// in flight (leased now); then the created_at of the lowest such id
// (through the primary key), Oldest. leased is the dialect's SQL for "claimed_until is a lease
// running now"; createdAt selects created_at as something parse reads.
func SQLBacklog(ctx context.Context, db *sql.DB, table, leased, createdAt string, parse func(string) (time.Time, error)) (batuta.Backlog, error) {
	var pending, inFlight sql.NullInt64
	err := db.QueryRowContext(ctx, "SELECT SUM(CASE WHEN leased = 1 THEN 0 ELSE 1 END), SUM(CASE WHEN leased = 1 THEN 1 ELSE 0 END) FROM (SELECT CASE WHEN "+
		leased+" THEN 1 ELSE 0 END AS leased FROM "+table+" WHERE dead_at IS NULL LIMIT ?) s", BacklogCountMax).Scan(&pending, &inFlight)
	if err != nil {
		return batuta.Backlog{}, fmt.Errorf("counting pending rows: %w", err)
	}
	bl := batuta.Backlog{Pending: pending.Int64, InFlight: inFlight.Int64, OldestKnown: true}
	if bl.Pending+bl.InFlight == 0 {
		return bl, nil
	}
	var at string
	err = db.QueryRowContext(ctx, "SELECT "+createdAt+" FROM "+table+" WHERE dead_at IS NULL ORDER BY id LIMIT 1").Scan(&at)
	switch {
	case errors.Is(err, sql.ErrNoRows): // delivered meanwhile
	case err != nil:
		return batuta.Backlog{}, fmt.Errorf("reading the oldest pending row: %w", err)
	default:
		if bl.Oldest, err = parse(at); err != nil {
			return batuta.Backlog{}, fmt.Errorf("the oldest pending row: bad created_at %q: %w", at, err)
		}
	}
	return bl, nil
}
