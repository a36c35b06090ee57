package batutasqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxsql"
)

var _ batuta.BacklogReporter = (*Trigger)(nil)

// Backlog implements batuta.BacklogReporter in two queries: the rows not
// dead, counted up to 100000 (a bounded scan whatever the backlog), split
// into Pending (never leased, or lease expired) and InFlight (leased by a
// consumer now), and the created_at of the lowest such id (through the
// primary key) as Oldest.
func (t *Trigger) Backlog(ctx context.Context) (batuta.Backlog, error) {
	bl, err := outboxsql.SQLBacklog(ctx, t.cfg.DB, t.cfg.Outbox.quoted(),
		"claimed_until IS NOT NULL AND claimed_until >= "+nowMillisSQL, "created_at",
		func(s string) (time.Time, error) { return time.Parse(time.RFC3339Nano, s) })
	if err != nil {
		return batuta.Backlog{}, fmt.Errorf("batutasqlite: backlog of outbox %s: %w", t.cfg.Outbox.String(), err)
	}
	return bl, nil
}
