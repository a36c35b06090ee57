package batutapg

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// ClaimTasks implements batuta.Store: one statement picks up to p.Limit
// ready tasks (oldest due first) with FOR UPDATE SKIP LOCKED, leases them
// to p.Owner under a fresh token, and returns them with their run's event
// and their dependencies' results. Concurrent claimers never wait on each
// other's rows and never get the same task.
//
// Concurrent calls are combined: calls with the same Owner and Workflows
// whose Now lie within a few milliseconds share one statement that claims
// the sum of their limits, under the earliest of their Now and LeaseUntil
// (so no call gets a task that is not due by its own Now, nor a longer
// lease than it asked for); earlier calls are served first.
func (s *Store) ClaimTasks(ctx context.Context, p batuta.ClaimParams) ([]batuta.Claim, error) {
	if p.Limit <= 0 {
		return nil, nil
	}
	res, err := s.claims.do(ctx, []batuta.ClaimParams{p})
	if err != nil {
		return nil, err
	}
	return res[0], nil
}

// probeEvery is how often (at most) a Store's claims read the hints that
// choose their statements (see queries.probe).
const probeEvery = 2 * time.Millisecond

// promoteBatch bounds the delayed tasks one claim moves to the ready set.
const promoteBatch = 1000

// promoteMin is the fewest delayed tasks a claim promotes (when that many
// are due), whatever its limit.
const promoteMin = 32

// promoteLimit is how many delayed tasks a claim of limit tasks promotes:
// about what it takes, so that the instances claiming a burst of tasks
// that came due at one instant promote it side by side (SKIP LOCKED)
// rather than one of them promoting it all, in a transaction the others
// cannot see into until it commits.
func promoteLimit(limit int) int {
	return min(promoteBatch, max(limit, promoteMin))
}

// claimMergeWindow is how far apart the Now of two claims may be for them
// to share a statement.
const claimMergeWindow = 5 * time.Millisecond

// claimGroup is one claim statement serving several ClaimTasks calls.
type claimGroup struct {
	p     batuta.ClaimParams // merged: earliest Now and LeaseUntil, summed Limit
	calls []int              // indexes into the batch, in arrival order
}

func (s *Store) flushClaims(ctx context.Context, ps []batuta.ClaimParams) ([][]batuta.Claim, error) {
	return s.flushClaimsDepth(ctx, ps, 0)
}

// flushClaimsDepth is flushClaims; depth counts the second tries with the
// full claim statement after the plain one was chosen on a stale hint.
func (s *Store) flushClaimsDepth(ctx context.Context, ps []batuta.ClaimParams, depth int) ([][]batuta.Claim, error) {
	groups := groupClaims(ps)
	if err := s.registerOwners(ctx, groups); err != nil {
		return nil, err
	}
	out := make([][]batuta.Claim, len(ps))
	pl := s.newClaimPlan(len(groups), depth)
	err := withRetry(ctx, func() error {
		pl.reset()
		clear(out)
		err := s.sendHot(ctx, true, func(b *pgx.Batch) {
			s.queueClaims(b, groups, pl)
		}, func(br pgx.BatchResults) error {
			return pl.read(br, groups, ps, out)
		})
		if err != nil && !retryable(err) {
			// The claim may have committed with its reply lost: release
			// whatever these requests took (no attempt or rescue counted).
			s.lostClaims(pl.reqs)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("batutapg: claim tasks: %w", err)
	}
	again := s.claimHints(pl, ps, out)
	if again && depth < 2 {
		// The plain claim ran on a stale hint: the calls it left short
		// try again with the full claim.
		var again []batuta.ClaimParams
		var idx []int
		for i := range ps {
			if n := ps[i].Limit - len(out[i]); n > 0 {
				p := ps[i]
				p.Limit = n
				again = append(again, p)
				idx = append(idx, i)
			}
		}
		if len(again) > 0 {
			// On error, what the first statement claimed stands (the
			// second try's own lost claims are released by it).
			if more, err := s.flushClaimsDepth(ctx, again, depth+1); err == nil {
				for k, i := range idx {
					out[i] = append(out[i], more[k]...)
				}
			} else {
				s.log.Debug("batutapg: second claim try failed", "schema", s.cfg.Schema, "error", err)
			}
		}
	}
	return out, nil
}

// groupClaims merges the calls of ps that can share a claim statement:
// same Owner and Workflows, Now within claimMergeWindow.
func groupClaims(ps []batuta.ClaimParams) []*claimGroup {
	var groups []*claimGroup
	for i := range ps {
		p := &ps[i]
		var g *claimGroup
		for _, c := range groups {
			q := &ps[c.calls[0]]
			if q.Owner == p.Owner && sameStrings(q.Workflows, p.Workflows) &&
				p.Now.Sub(c.p.Now).Abs() <= claimMergeWindow {
				g = c
				break
			}
		}
		if g == nil {
			g = &claimGroup{p: *p}
			g.p.Limit = 0
			groups = append(groups, g)
		}
		g.calls = append(g.calls, i)
		g.p.Limit += p.Limit
		if p.Now.Before(g.p.Now) {
			g.p.Now = p.Now
		}
		if p.LeaseUntil.Before(g.p.LeaseUntil) {
			g.p.LeaseUntil = p.LeaseUntil
		}
	}
	return groups
}

func (s *Store) registerOwners(ctx context.Context, groups []*claimGroup) error {
	for _, g := range groups {
		if err := s.registerOwner(ctx, g.p.Owner); err != nil {
			return err
		}
	}
	return nil
}

// claimPlan is what one round trip of claim statements runs and what it
// learnt: which statements (chosen from the Store's hints), the request
// numbers of its groups, and the hints its probe read.
type claimPlan struct {
	// The plain claim serves while no concurrency step can apply (see
	// queries.claimPlain), and the promote statement runs only when a
	// delayed task may be due or a parked task may be unparked; the hints
	// are refreshed by the probe of every claim.
	plain, promote, probe bool
	started               time.Time
	reqs                  []int64
	flow, unpark          bool
	next                  int64 // earliest delayed task (Unix ns)
	promoted              int64 // delayed tasks the promote statements made ready
}

// newClaimPlan chooses the statements of a claim round trip for n groups;
// depth counts the tries after a claim chosen on stale hints (see
// flushClaimsDepth): a second try always probes, a third always promotes
// and runs the full claim statement.
//
// A second try does not promote unless the hints say so: it follows a
// claim without a probe that came back empty, which on an idle store is
// every claim, and the promote statement (0.37 ms of server time, against
// 0.015 for the probe) then found nothing to promote; when its probe sees a
// delayed task due or a parked task with room, the third try promotes.
func (s *Store) newClaimPlan(n, depth int) *claimPlan {
	pl := &claimPlan{reqs: make([]int64, n), started: time.Now()}
	unpark := s.unpark.Load()
	// Unparked tasks belong to task-level groups, which only the full
	// statement claims; and the last try runs every statement, or a task
	// it unparked would wait for the next poll.
	pl.plain = !s.flowWork.Load() && !unpark && depth < 2
	// (While any delayed task is known, every claim promotes: a promotion
	// that finds nothing due is one index probe.)
	pl.promote = depth > 1 || unpark || s.nextDelayed.Load() != math.MaxInt64
	// The probe runs at most every probeEvery per Store (and always for a
	// later try): under a stream of claims the hints are that fresh.
	pl.probe = depth > 0 || pl.started.UnixNano()-s.lastProbe.Load() >= int64(probeEvery)
	return pl
}

// reset prepares pl for a (new) try: fresh request numbers, no hints.
func (pl *claimPlan) reset() {
	pl.flow, pl.unpark, pl.next, pl.promoted = false, false, math.MaxInt64, 0
	for i := range pl.reqs {
		pl.reqs[i] = claimRequest()
	}
}

// queueClaims queues the claim statements of groups as pl says.
func (s *Store) queueClaims(b *pgx.Batch, groups []*claimGroup, pl *claimPlan) {
	for i, g := range groups {
		var wfs []string
		if len(g.p.Workflows) > 0 {
			wfs = g.p.Workflows
		}
		// Delayed tasks that came due, and parked tasks of groups with
		// room, join the ready set first (the claim itself admits queued
		// runs).
		if pl.promote {
			b.Queue(s.q.promote, g.p.Now, wfs, promoteLimit(g.p.Limit))
		}
		if pl.probe {
			b.Queue(s.q.probe)
		}
		// The lease is kept on the database's clock.
		q := s.q.claim
		if pl.plain {
			q = s.q.claimPlain
		}
		b.Queue(q, g.p.Now, wfs, g.p.Limit, g.p.Owner, s.toDB(g.p.LeaseUntil), pl.reqs[i])
	}
}

// read reads what queueClaims queued, handing each call of ps (by index
// into out) its share of its group's claims, earlier calls first.
func (pl *claimPlan) read(br pgx.BatchResults, groups []*claimGroup, ps []batuta.ClaimParams, out [][]batuta.Claim) error {
	for _, g := range groups {
		var f, u bool
		if pl.promote {
			var n int64
			if err := br.QueryRow().Scan(&f, &n); err != nil {
				return err
			}
			pl.promoted += n
		}
		var due pgtype.Timestamptz
		var fl bool
		if pl.probe {
			if err := br.QueryRow().Scan(&due, &u, &fl); err != nil {
				return err
			}
		}
		pl.flow = pl.flow || f || fl
		pl.unpark = pl.unpark || u
		if due.Valid {
			pl.next = min(pl.next, due.Time.UnixNano())
		}
		cs, err := readClaims(br, g.p.Limit)
		if err != nil {
			return err
		}
		for _, i := range g.calls {
			n := min(ps[i].Limit, len(cs))
			if n > 0 {
				out[i], cs = cs[:n:n], cs[n:]
			}
		}
	}
	return nil
}

// claimHints stores the hints a claim round trip read and reports whether
// its calls left short should try again with the full statements.
func (s *Store) claimHints(pl *claimPlan, ps []batuta.ClaimParams, out [][]batuta.Claim) (again bool) {
	if pl.promoted > 0 {
		// Delayed tasks this round trip made ready and its claims did not
		// take are ready for anyone: say so, as a new run's tasks are
		// (the other instances cannot have seen them before the commit).
		claimed := 0
		for i := range out {
			claimed += len(out[i])
		}
		if pl.promoted > int64(claimed) {
			s.workAppeared()
		}
	}
	// A claim without a probe that came back empty looks again, with one
	// (its caller would go idle on a stale hint); one that came back
	// short makes the next claim probe.
	if !pl.probe {
		for i := range ps {
			if len(out[i]) == 0 {
				again = true
			} else if len(out[i]) < ps[i].Limit {
				s.lastProbe.Store(0)
			}
		}
		return again
	}
	s.lastProbe.Store(pl.started.UnixNano())
	s.flowWork.Store(pl.flow || s.flowCreated.Swap(false))
	s.unpark.Store(pl.unpark)
	s.nextDelayed.Store(min(pl.next, s.delayedCreated.Swap(math.MaxInt64)))
	return (pl.plain && pl.flow) || (!pl.promote && (pl.unpark || needPromote(pl.next, ps)))
}

// noteDelayed records that this Store wrote a delayed task due at t, so
// the next claim whose clock reached t promotes it.
func (s *Store) noteDelayed(t time.Time) {
	n := t.UnixNano()
	for _, a := range []*atomic.Int64{&s.delayedCreated, &s.nextDelayed} {
		for {
			old := a.Load()
			if n >= old || a.CompareAndSwap(old, n) {
				break
			}
		}
	}
}

// needPromote reports whether a delayed task due at next (Unix ns) is due
// by the clock of any of the claims.
func needPromote(next int64, ps []batuta.ClaimParams) bool {
	for i := range ps {
		if ps[i].Now.UnixNano() >= next {
			return true
		}
	}
	return false
}

// claimRequest returns a random claim request number (never 0).
func claimRequest() int64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if n := int64(binary.LittleEndian.Uint64(b[:])); n != 0 {
			return n
		}
	}
}

func sameStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// readClaims reads the rows of one claim statement.
func readClaims(br pgx.BatchResults, limit int) ([]batuta.Claim, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make([]batuta.Claim, 0, min(limit, 64))
	for rows.Next() {
		var (
			runID           [16]byte
			c               batuta.Claim
			attempt, resc   int32
			eventID         string
			event, upstream []byte
			deadline        pgtype.Timestamptz
			waitingSince    pgtype.Timestamptz
			signal          []byte
		)
		if err := rows.Scan(&runID, &c.Task, &c.Workflow, &attempt, &resc, &c.Token, &eventID, &event, &deadline, &c.RateReserved, &upstream,
			&waitingSince, &signal); err != nil {
			return nil, err
		}
		c.WaitingSince = waitingSince.Time
		c.RunID = formatUUID(runID)
		c.Attempt, c.Rescues = int(attempt)+1, int(resc)
		if deadline.Valid {
			c.RunDeadline = deadline.Time
		}
		if c.Event, err = decodeEvent(eventID, event); err != nil {
			return nil, err
		}
		if len(upstream) > 0 {
			if c.Upstream, err = decodeUpstream(upstream); err != nil {
				return nil, fmt.Errorf("run %s task %s: %w", c.RunID, c.Task, err)
			}
		}
		if len(signal) > 0 {
			if c.Signal, err = decodeSignal(signal); err != nil {
				return nil, fmt.Errorf("run %s task %s: %w", c.RunID, c.Task, err)
			}
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// decodeUpstream reads the [[name, state, output, error], ...] array the
// claim query builds.
func decodeUpstream(b []byte) ([]batuta.UpstreamResult, error) {
	var rows [][4]json.RawMessage
	if err := json.Unmarshal(b, &rows); err != nil {
		return nil, fmt.Errorf("decode upstream: %w", err)
	}
	out := make([]batuta.UpstreamResult, len(rows))
	for i, r := range rows {
		u := &out[i]
		var state string
		if err := json.Unmarshal(r[0], &u.Name); err != nil {
			return nil, fmt.Errorf("decode upstream: %w", err)
		}
		if err := json.Unmarshal(r[1], &state); err != nil {
			return nil, fmt.Errorf("decode upstream: %w", err)
		}
		u.State = batuta.TaskState(state)
		u.Output = rawOutput(r[2])
		if err := json.Unmarshal(r[3], &u.Error); err != nil && string(r[3]) != "null" {
			return nil, fmt.Errorf("decode upstream: %w", err)
		}
	}
	return out, nil
}

// rawOutput returns a stored output as the json.RawMessage the Store
// contract promises, or nil for none (SQL NULL or JSON null).
func rawOutput(b []byte) any {
	if len(b) == 0 || string(b) == "null" {
		return nil
	}
	return json.RawMessage(append([]byte(nil), b...))
}

// ExtendLeases implements batuta.Store. until is read from Config.Clock and
// kept on the database's clock (see Config.Clock). It never waits for a row lock: a
// claim whose task is being written by someone else at that moment is
// reported as it stands and its lease is left as is (the next heartbeat
// tells the truth).
func (s *Store) ExtendLeases(ctx context.Context, refs []batuta.ClaimRef, until time.Time) ([]batuta.LeaseStatus, error) {
	out := make([]batuta.LeaseStatus, len(refs))
	if len(refs) == 0 {
		return out, nil
	}
	ids, names, tokens, valid := refArrays(refs)
	for i := range out {
		out[i] = batuta.LeaseLost
	}
	err := withRetry(ctx, func() error {
		return s.sendHot(ctx, true, func(b *pgx.Batch) {
			b.Queue(s.q.extend, ids, names, tokens, s.toDB(until))
		}, func(br pgx.BatchResults) error {
			rows, err := br.Query()
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var ord int64
				var extended, canceled, held bool
				if err := rows.Scan(&ord, &extended, &canceled, &held); err != nil {
					return err
				}
				i := int(ord) - 1
				switch {
				case !valid[i] || (!extended && !held):
					out[i] = batuta.LeaseLost
				case canceled:
					out[i] = batuta.LeaseCanceled
				default:
					out[i] = batuta.LeaseHeld
				}
			}
			return rows.Err()
		})
	})
	if err != nil {
		return nil, fmt.Errorf("batutapg: extend leases: %w", err)
	}
	return out, nil
}

// refArrays turns claim refs into statement arrays. Refs whose run ID is not
// a UUID cannot name a claim: they get a zero ID (which matches nothing)
// and valid[i] = false.
func refArrays(refs []batuta.ClaimRef) (ids [][16]byte, names []string, tokens []int64, valid []bool) {
	ids = make([][16]byte, len(refs))
	names = make([]string, len(refs))
	tokens = make([]int64, len(refs))
	valid = make([]bool, len(refs))
	for i, r := range refs {
		ids[i], valid[i] = parseUUID(r.RunID)
		names[i], tokens[i] = cleanText(r.Task), r.Token
	}
	return ids, names, tokens, valid
}

// parseUUID parses the canonical 36-character form (any case).
func parseUUID(s string) ([16]byte, bool) {
	var u [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, false
	}
	var h [32]byte
	copy(h[0:8], s[0:8])
	copy(h[8:12], s[9:13])
	copy(h[12:16], s[14:18])
	copy(h[16:20], s[19:23])
	copy(h[20:32], s[24:36])
	if _, err := hex.Decode(u[:], h[:]); err != nil {
		return u, false
	}
	return u, true
}

// formatUUID renders u in the canonical lower-case form.
func formatUUID(u [16]byte) string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}
