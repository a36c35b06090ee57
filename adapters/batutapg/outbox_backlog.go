package batutapg

import (
	"context"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxsql"
)

var _ batuta.BacklogReporter = (*Trigger)(nil)

// Backlog implements batuta.BacklogReporter in one statement: the rows
// not dead, counted up to 100000 (a bounded scan whatever the backlog),
// split into Pending (never leased, or lease expired) and InFlight
// (leased by a consumer now), and the created_at of the lowest such id
// (through the primary key) as Oldest.
func (t *Trigger) Backlog(ctx context.Context) (batuta.Backlog, error) {
	ob := t.cfg.Outbox.quoted()
	var oldest *time.Time
	bl := batuta.Backlog{OldestKnown: true}
	err := t.cfg.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE NOT leased), count(*) FILTER (WHERE leased),
	(SELECT created_at FROM `+ob+` WHERE dead_at IS NULL ORDER BY id LIMIT 1)
	FROM (SELECT claimed_until IS NOT NULL AND claimed_until > clock_timestamp() AS leased
		FROM `+ob+` WHERE dead_at IS NULL LIMIT $1) s`, outboxsql.BacklogCountMax).Scan(&bl.Pending, &bl.InFlight, &oldest)
	if err != nil {
		return batuta.Backlog{}, fmt.Errorf("batutapg: backlog of outbox %s: %w", t.cfg.Outbox.String(), err)
	}
	if oldest != nil {
		bl.Oldest = *oldest
	}
	return bl, nil
}
