package batutapg

import (
	"slices"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// createClaimable reports whether the insert of items[idx...] with fc's
// claim can go through the claiming create statement (see
// queries.createClaim): one plain run, created for a call claiming for
// itself, whose root tasks are due, outside groups, waiting for no signal,
// of a workflow the claim takes, and no more than the claim's limit; the
// store's hints say the plain claim serves, no delayed task is known and
// no ready task waited when the last run was created this way.
func (s *Store) createClaimable(items []createItem, idx []int, fc *fusedClaim) bool {
	if s.noCreateClaim || fc == nil || len(idx) != 1 || len(fc.ps) != 1 || !fc.pl.plain || fc.pl.promote || s.createBacklog.Load() {
		return false
	}
	it, p := &items[idx[0]], &fc.ps[0]
	nr := it.run
	if !it.plain() || !it.startAt.IsZero() || it.rejected != "" || nr.Concurrency != nil || nr.Debounce != nil ||
		nr.CreatedAt.Add(-s.cfg.ClockSkew).After(p.Now) {
		return false
	}
	if len(p.Workflows) > 0 && !slices.Contains(p.Workflows, nr.Workflow) {
		return false
	}
	roots := 0
	for k := range nr.Tasks {
		ts := &nr.Tasks[k]
		if len(ts.Deps) > 0 {
			continue
		}
		if ts.Signal != "" || ts.Concurrency != nil {
			return false
		}
		roots++
	}
	return roots <= p.Limit
}

// readCreateClaim reads the rows of the claiming create statement: the
// runs created into created, the root tasks leased into fc's one call. It
// returns whether a ready task of the caller's workflows waited.
func readCreateClaim(rows pgx.Rows, created map[[16]byte]bool, fc *fusedClaim) (waited bool, err error) {
	defer rows.Close()
	var cs []batuta.Claim
	for rows.Next() {
		var (
			id             [16]byte
			name, workflow pgtype.Text
			token          pgtype.Int8
			eventID        pgtype.Text
			event          []byte
			deadline       pgtype.Timestamptz
		)
		if err := rows.Scan(&id, &waited, &name, &workflow, &token, &eventID, &event, &deadline); err != nil {
			return false, err
		}
		created[id] = true
		if !name.Valid {
			continue
		}
		c := batuta.Claim{RunID: formatUUID(id), Task: name.String, Workflow: workflow.String, Attempt: 1, Token: token.Int64}
		if deadline.Valid {
			c.RunDeadline = deadline.Time
		}
		if c.Event, err = decodeEvent(eventID.String, event); err != nil {
			return false, err
		}
		cs = append(cs, c)
	}
	fc.out[0] = cs
	return waited, rows.Err()
}
