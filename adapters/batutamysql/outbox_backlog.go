package batutamysql

import (
	"context"
	"fmt"

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
	ob := t.cfg.Outbox
	if ob.Schema == "" {
		schema, err := resolveSchema(ctx, t.cfg.DB, ob.Schema)
		if err != nil {
			return batuta.Backlog{}, fmt.Errorf("batutamysql: backlog of outbox %s: %w", ob.String(), err)
		}
		ob.Schema = schema
	}
	bl, err := outboxsql.SQLBacklog(ctx, t.cfg.DB, ob.quoted(),
		"claimed_until IS NOT NULL AND claimed_until >= UTC_TIMESTAMP(6)", "CAST(created_at AS CHAR)", parseMySQLTime)
	if err != nil {
		return batuta.Backlog{}, fmt.Errorf("batutamysql: backlog of outbox %s: %w", ob.String(), err)
	}
	return bl, nil
}
