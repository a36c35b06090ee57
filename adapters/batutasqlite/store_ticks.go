package batutasqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// LastTick returns the last tick recorded for schedule by RecordTick, or the
// zero time if none.
func (s *Store) LastTick(ctx context.Context, schedule string) (time.Time, error) {
	if s.isClosed() {
		return time.Time{}, errClosed
	}
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT tick FROM batuta_ticks WHERE schedule = ?`, schedule).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, s.wrapErr("last tick of "+schedule, err)
	}
	return time.Unix(0, n).UTC(), nil
}

// RecordTick stores tick as schedule's last tick if it is later than the
// stored one (one upsert, so concurrent callers cannot move it backwards),
// and reports whether it did.
func (s *Store) RecordTick(ctx context.Context, schedule string, tick time.Time) (bool, error) {
	if tick.IsZero() {
		return false, nil // never later than the stored tick
	}
	var advanced bool
	err := s.write(ctx, func(ctx context.Context) error {
		res, err := s.st.recordTick.ExecContext(ctx, schedule, tick.UnixNano())
		if err != nil {
			return fmt.Errorf("batutasqlite: record tick of %s: %w", schedule, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("batutasqlite: record tick of %s: %w", schedule, err)
		}
		advanced = n > 0
		return nil
	})
	return advanced, err
}
