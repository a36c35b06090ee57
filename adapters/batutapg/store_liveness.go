package batutapg

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Leases, clocks and liveness.
//
// Every lease time in the tasks table is on the database's clock. The
// orchestrator hands the Store times read from its own clock (ClaimParams
// .LeaseUntil, ExtendLeases' until, RescueExpired's now); the Store
// converts each by the offset between Config.Clock and the database's
// clock_timestamp(), measured at start and on every liveness beat. So the
// claimer's clock and the rescuer's clock no longer need to agree: an
// instance whose clock runs 5 s ahead judges a lease expired only when the
// database's clock says so.
//
// Liveness: each Store keeps one row per owner (orchestrator NodeID) it
// claimed tasks for in the instances table, and renews it every
// LivenessInterval with clock_timestamp(). A running task whose owner's row
// is older than LivenessTimeout has a void lease: every live Store looks for
// such tasks on each beat (and RescueExpired does too) and rescues them
// like expired ones, so a SIGKILLed instance's tasks are back in the ready
// set within about LivenessTimeout + LivenessInterval, while a live
// instance's long task keeps its lease as long as the lease is renewed.
//
// Claims whose reply was lost (the connection failed after the claim was
// sent) are released: each claim statement records a random request number
// on the tasks it leases; on error the request is remembered and its tasks
// are handed back (outcome release: no attempt, no rescue counted) at once,
// or on the next beat if the database is unreachable.

// liveness is the Store's state for the above.
type liveness struct {
	offset     atomic.Int64 // Config.Clock minus the database's clock, ns
	maxRescues atomic.Int64 // the last RescueExpired's maxRescues

	reportMu sync.Mutex
	reports  []func(rescued, failed int) // ReportRescues

	mu      sync.Mutex
	owners  map[string]bool // owners claimed for; true once the row exists
	orphans []orphan        // claim requests whose reply was lost
	beats   int             // full beats so far (the loop's own)
	conn    *pgx.Conn       // the loop's own connection (the loop's own)
}

// liveQueries are the statements of leases, liveness and lost claims.
type liveQueries struct {
	beat, dropOwners, pruneOwners, orphans, deadOwners, lockSkip string
}

func buildLiveQueries(schema string) liveQueries {
	r := strings.NewReplacer("{s}", schema)
	q := liveQueries{
		beat: `
INSERT INTO {s}.instances AS i (owner, seen_at)
SELECT o, clock_timestamp() FROM unnest($1::text[]) AS u(o) ORDER BY o
ON CONFLICT (owner) DO UPDATE SET seen_at = EXCLUDED.seen_at`,
		dropOwners: `DELETE FROM {s}.instances WHERE owner = ANY($1::text[])`,
		// Rows of owners gone for an hour that hold no task.
		pruneOwners: `
DELETE FROM {s}.instances i
WHERE i.seen_at < clock_timestamp() - interval '1 hour'
  AND NOT EXISTS (SELECT 1 FROM {s}.tasks t WHERE t.state = 'running' AND t.owner = i.owner)`,
		// Tasks still held by lost claim requests (the running tasks are
		// few: tasks_leased).
		orphans: `
SELECT run_id, name, token FROM {s}.tasks
WHERE state = 'running' AND lease_until IS NOT NULL AND claim_req = ANY($1::bigint[])`,
		// Running tasks whose owner's liveness row is stale, except the
		// owners of this Store ($3): a process is not dead to itself, even
		// when its beats cannot reach the database for a while (its
		// running tasks hold leases it renews, and the tasks of its lost
		// claim replies are released, not rescued).
		deadOwners: `
SELECT t.run_id, t.name, t.token
FROM {s}.instances i
JOIN {s}.tasks t ON t.owner = i.owner AND t.state = 'running'
WHERE i.seen_at < clock_timestamp() - make_interval(secs => $1)
  AND i.owner <> ALL($3::text[])
ORDER BY t.lease_until
LIMIT $2`,
		// Lock what a rescue (or a completion batch that timed out on a
		// lock) is about without waiting: the run rows of runs with
		// several tasks and the task rows, each SKIP LOCKED. The items
		// returned are those whose locks are all held; the others are left
		// for later.
		lockSkip: `
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[]) WITH ORDINALITY AS i(run_id, token, ord)
), r AS MATERIALIZED (
    SELECT id FROM {s}.runs
    WHERE id IN (SELECT run_id FROM i WHERE token & 32768 = 0)
    ORDER BY id FOR NO KEY UPDATE SKIP LOCKED
), t AS MATERIALIZED (
    SELECT t.run_id, t.idx FROM {s}.tasks t
    JOIN i ON t.run_id = i.run_id AND t.idx = (i.token & 32767)::smallint
    FOR UPDATE OF t SKIP LOCKED
)
SELECT i.ord FROM i
WHERE (i.token & 32768 <> 0 OR i.run_id IN (SELECT id FROM r))
  AND EXISTS (SELECT 1 FROM t WHERE t.run_id = i.run_id AND t.idx = (i.token & 32767)::smallint)`,
	}
	for _, p := range []*string{&q.beat, &q.dropOwners, &q.pruneOwners, &q.orphans, &q.deadOwners, &q.lockSkip} {
		*p = r.Replace(*p)
	}
	return q
}

// deadOwnerRescueBatch bounds the tasks of dead owners one beat rescues.
const deadOwnerRescueBatch = 500

// voidLease is the lease_before of a rescue whose lease is void because its
// owner is dead: any lease time is before it.
var voidLease = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// toDB converts a time read from Config.Clock to the database's clock.
func (s *Store) toDB(t time.Time) time.Time {
	return t.Add(-time.Duration(s.live.offset.Load()))
}

// startLiveness measures the clock offset (bounded by ctx) and starts the
// liveness loop (until lctx ends).
func (s *Store) startLiveness(ctx, lctx context.Context) {
	s.live.owners = map[string]bool{}
	s.live.maxRescues.Store(3) // batuta.Config's default, until RescueExpired says
	if err := s.beatOnce(ctx, false); err != nil {
		s.log.Warn("batutapg: measuring the clock offset to the database failed; assuming none",
			"schema", s.cfg.Schema, "error", err)
	}
	every := s.cfg.LivenessInterval
	if every < 0 {
		every = time.Second // the offset and lost claims still need a beat
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-lctx.Done():
				s.dropOwners()
				s.closeBeatConn()
				return
			case <-t.C:
			}
			bctx, cancel := context.WithTimeout(lctx, every+s.cfg.LivenessTimeout)
			if err := s.beatOnce(bctx, true); err != nil && lctx.Err() == nil {
				s.log.Warn("batutapg: liveness beat failed", "schema", s.cfg.Schema, "error", err)
			}
			cancel()
		}
	}()
}

// beatOnce renews the owners' rows, measures the clock offset and, when
// full, releases lost claims and rescues the tasks of dead owners.
func (s *Store) beatOnce(ctx context.Context, full bool) error {
	liveOn := s.cfg.LivenessInterval > 0
	var owners []string
	if liveOn {
		owners = s.ownerList()
	}
	err := s.withBeatConn(ctx, func(c *pgx.Conn) error {
		b := &pgx.Batch{}
		b.Queue("SELECT clock_timestamp()")
		if len(owners) > 0 {
			b.Queue(s.lq.beat, owners)
		}
		t0 := s.cfg.Clock.Now()
		br := c.SendBatch(ctx, b)
		var db time.Time
		err := br.QueryRow().Scan(&db)
		t1 := s.cfg.Clock.Now()
		if err == nil && len(owners) > 0 {
			_, err = br.Exec()
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			local := t0.Add(t1.Sub(t0) / 2)
			s.live.offset.Store(int64(local.Sub(db)))
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("batutapg: liveness: %w", err)
	}
	if !full {
		return nil
	}
	if err := s.releaseOrphans(ctx); err != nil {
		return err
	}
	if s.live.beats++; liveOn && s.live.beats%300 == 0 {
		err := s.conns.with(ctx, func(c *pgx.Conn) error {
			if _, err := c.Exec(ctx, s.lq.pruneOwners); err != nil {
				return err
			}
			_, err := c.Exec(ctx, s.fq.pruneRates)
			return err
		})
		if err != nil {
			return fmt.Errorf("batutapg: liveness: prune: %w", err)
		}
	}
	if liveOn {
		n, f, err := s.rescueDeadOwners(ctx, int(s.live.maxRescues.Load()), s.cfg.Clock.Now())
		s.reportRescues(n, f) // RescueExpired returns its own to the executor instead
		if err != nil {
			return err
		}
	}
	return nil
}

// withBeatConn runs fn on the liveness loop's own connection, dialled with
// the pool's configuration (so a saturated pool cannot delay the beat past
// LivenessTimeout and get a live instance taken for dead), or on a pool
// connection if it cannot be dialled. Only the liveness loop (and New,
// before the loop starts) calls it.
func (s *Store) withBeatConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	c := s.live.conn
	if c == nil || c.IsClosed() {
		cfg, err := s.conns.config(ctx)
		if err == nil {
			cfg = cfg.Copy()
			cfg.OnNotification = nil
			c, err = pgx.ConnectConfig(ctx, cfg)
		}
		if err != nil {
			return s.conns.with(ctx, fn)
		}
		s.live.conn = c
	}
	err := fn(c)
	if err != nil {
		s.closeBeatConn()
	}
	return err
}

func (s *Store) closeBeatConn() {
	if s.live.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.live.conn.Close(ctx)
	s.live.conn = nil
}

// ownerList returns the owners this Store claimed for.
func (s *Store) ownerList() []string {
	s.live.mu.Lock()
	defer s.live.mu.Unlock()
	owners := make([]string, 0, len(s.live.owners))
	for o := range s.live.owners {
		owners = append(owners, o)
	}
	return owners
}

// registerOwner makes sure owner has a liveness row before its first claim.
func (s *Store) registerOwner(ctx context.Context, owner string) error {
	if s.cfg.LivenessInterval <= 0 {
		return nil
	}
	s.live.mu.Lock()
	ok := s.live.owners[owner]
	s.live.mu.Unlock()
	if ok {
		return nil
	}
	err := s.conns.with(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, s.lq.beat, []string{owner})
		return err
	})
	if err != nil {
		return fmt.Errorf("batutapg: register owner %q: %w", owner, err)
	}
	s.live.mu.Lock()
	s.live.owners[owner] = true
	s.live.mu.Unlock()
	return nil
}

// dropOwners deletes this Store's owner rows at Close: their running tasks
// (if any) fall back to their leases.
func (s *Store) dropOwners() {
	owners := s.ownerList()
	if len(owners) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.withBeatConn(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, s.lq.dropOwners, owners)
		return err
	})
	if err != nil {
		s.log.Debug("batutapg: deleting liveness rows at close failed", "schema", s.cfg.Schema, "error", err)
	}
}

// lostClaims remembers claim requests whose reply was lost and tries to
// release them at once; what cannot be released now is released by the
// next beat.
func (s *Store) lostClaims(reqs []int64) {
	now := time.Now()
	s.live.mu.Lock()
	for _, r := range reqs {
		s.live.orphans = append(s.live.orphans, orphan{req: r, at: now})
	}
	s.live.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.releaseOrphans(ctx); err != nil {
		s.log.Debug("batutapg: releasing lost claims failed; retrying on the next beat", "schema", s.cfg.Schema, "error", err)
	}
}

// release hands the tasks of refs back to the ready set (outcome release:
// no attempt spent, no rescue counted).
func (s *Store) release(ctx context.Context, refs []batuta.ClaimRef) error {
	now := s.cfg.Clock.Now()
	in := newCompInput(len(refs))
	for i := range refs {
		c := batuta.Completion{ClaimRef: refs[i], Outcome: batuta.OutcomeRelease, FinishedAt: now}
		if err := in.add(&c, time.Time{}); err != nil {
			return err
		}
	}
	return withRetry(ctx, func() error {
		_, err := s.completeOn(ctx, nil, in, 0, now)
		return err
	})
}

// releaseAbandoned releases claims made for a caller that gave up while
// the statement making them was in flight (see combiner.abandoned); if that
// fails, their tasks are rescued when their leases expire.
func (s *Store) releaseAbandoned(claims ...[]batuta.Claim) {
	var refs []batuta.ClaimRef
	for _, cs := range claims {
		for i := range cs {
			refs = append(refs, cs[i].Ref())
		}
	}
	if len(refs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.release(ctx, refs); err != nil {
		s.log.Warn("batutapg: releasing tasks claimed for a caller that gave up failed; they are rescued when their leases expire",
			"schema", s.cfg.Schema, "tasks", len(refs), "error", err)
		return
	}
	s.log.Debug("batutapg: released tasks claimed for a caller that gave up", "schema", s.cfg.Schema, "tasks", len(refs))
}

// abandonedCreates, abandonedCompletes and abandonedClaims are the
// combiners' abandoned hooks: they release the claims in the results.
// (One release statement for a whole batch's results.)
func (s *Store) abandonedCreates(out []createResult) {
	claims := make([][]batuta.Claim, len(out))
	for i := range out {
		claims[i] = out[i].claims
	}
	s.releaseAbandoned(claims...)
}

func (s *Store) abandonedCompletes(out []compOut) {
	claims := make([][]batuta.Claim, len(out))
	for i := range out {
		claims[i] = out[i].claims
	}
	s.releaseAbandoned(claims...)
}

func (s *Store) abandonedClaims(out [][]batuta.Claim) { s.releaseAbandoned(out...) }

// releaseOrphans hands back the tasks still held by lost claim requests.
//
// A request is looked for again on every beat until orphanSettle after its
// reply was lost: the connection failing does not end the server's work on
// it at once (the backend may still run, and commit, the statements and
// COMMIT it had received), so a claim found not taken yet may be taken a
// moment later.
func (s *Store) releaseOrphans(ctx context.Context) error {
	start := time.Now()
	s.live.mu.Lock()
	reqs := make([]int64, len(s.live.orphans))
	for i, o := range s.live.orphans {
		reqs[i] = o.req
	}
	s.live.mu.Unlock()
	if len(reqs) == 0 {
		return nil
	}
	var refs []batuta.ClaimRef
	err := s.query(ctx, s.lq.orphans, []any{reqs}, func(rows pgx.Rows) error {
		var id [16]byte
		var ref batuta.ClaimRef
		if err := rows.Scan(&id, &ref.Task, &ref.Token); err != nil {
			return err
		}
		ref.RunID = formatUUID(id)
		refs = append(refs, ref)
		return nil
	})
	if err == nil && len(refs) > 0 {
		err = s.release(ctx, refs)
	}
	if err != nil {
		return fmt.Errorf("batutapg: release lost claims: %w", err)
	}
	if len(refs) > 0 {
		s.log.Info("batutapg: released tasks of a claim whose reply was lost", "schema", s.cfg.Schema, "tasks", len(refs))
	}
	s.live.mu.Lock()
	s.live.orphans = settled(s.live.orphans, start.Add(-orphanSettle))
	s.live.mu.Unlock()
	return nil
}

// orphan is a claim request whose reply was lost, and when.
type orphan struct {
	req int64
	at  time.Time
}

// orphanSettle is how long after its reply was lost a claim request is
// still looked for (see releaseOrphans).
const orphanSettle = 10 * time.Second

// settled drops from os the requests lost before cutoff: a release pass
// that started after cutoff found what they took, if anything.
func settled(os []orphan, cutoff time.Time) []orphan {
	out := os[:0]
	for _, o := range os {
		if !o.at.Before(cutoff) {
			out = append(out, o)
		}
	}
	return out
}

// rescueDeadOwners rescues the running tasks of owners whose liveness row
// is stale (their leases are void).
func (s *Store) rescueDeadOwners(ctx context.Context, maxRescues int, now time.Time) (int, int, error) {
	var rescued, failed int
	own := s.ownerList()
	for {
		var cands []batuta.ClaimRef
		err := s.query(ctx, s.lq.deadOwners, []any{s.cfg.LivenessTimeout.Seconds(), deadOwnerRescueBatch, own}, func(rows pgx.Rows) error {
			var id [16]byte
			var ref batuta.ClaimRef
			if err := rows.Scan(&id, &ref.Task, &ref.Token); err != nil {
				return err
			}
			ref.RunID = formatUUID(id)
			cands = append(cands, ref)
			return nil
		})
		if err != nil {
			return rescued, failed, fmt.Errorf("batutapg: rescue tasks of dead instances: %w", err)
		}
		if len(cands) == 0 {
			return rescued, failed, nil
		}
		n, f, applied, err := s.rescue(ctx, cands, voidLease, maxRescues, now)
		rescued, failed = rescued+n, failed+f
		if err != nil {
			return rescued, failed, fmt.Errorf("batutapg: rescue tasks of dead instances: %w", err)
		}
		if n+f > 0 {
			s.log.Warn("batutapg: rescued the tasks of a dead instance (liveness row stale)",
				"schema", s.cfg.Schema, "rescued", n, "failed_after_max_rescues", f)
		}
		if len(cands) < deadOwnerRescueBatch || applied == 0 {
			return rescued, failed, nil
		}
	}
}

// lockNotAvailable reports whether err is PostgreSQL's lock_timeout error.
func lockNotAvailable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55P03"
}
