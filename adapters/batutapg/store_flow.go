package batutapg

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Flow control: delayed runs, priorities, concurrency groups, debounce,
// pause and rate limits. See migrations/0004_flow.sql for the schema and
// the claim's steps (promote, admit, claim) in store_sql.go.

// flowQueries are the statements of this file.
type flowQueries struct {
	nextDue, nextDueSoon, pause, pauseTasks, resume, resumeTasks, paused string
	reserve, pruneRates                                                  string
	debounceFind, debounceMove, debounceTasks                            string
	groupLock, inProgress                                                string
}

func buildFlowQueries(schema string) flowQueries {
	s := strings.NewReplacer("{s}", schema).Replace
	return flowQueries{
		// One probe of tasks_delayed, in due order.
		nextDue: s(`
SELECT due_at FROM {s}.tasks
WHERE state = 'pending' AND pending_deps = 0 AND hold IN (1, 4) AND due_at > $1
  AND ($2::text[] IS NULL OR workflow = ANY($2::text[]))
  AND NOT (workflow = ANY((SELECT coalesce(array_agg(p.workflow), '{}') FROM {s}.paused p)::text[]))
ORDER BY due_at LIMIT 1`),
		// The same, and the runs created since $3 that start later
		// (their root tasks are written ready, due at the start: see
		// readySoon), through runs_created_at.
		nextDueSoon: s(`
SELECT min(d) FROM (
    (SELECT due_at AS d FROM {s}.tasks
     WHERE state = 'pending' AND pending_deps = 0 AND hold IN (1, 4) AND due_at > $1
       AND ($2::text[] IS NULL OR workflow = ANY($2::text[]))
       AND NOT (workflow = ANY((SELECT coalesce(array_agg(p.workflow), '{}') FROM {s}.paused p)::text[]))
     ORDER BY due_at LIMIT 1)
    UNION ALL
    (SELECT min(r.start_at) FROM {s}.runs r
     WHERE r.created_at > $3 AND r.start_at > $1 AND r.state = 'active'
       AND ($2::text[] IS NULL OR r.workflow = ANY($2::text[]))
       AND NOT (r.workflow = ANY((SELECT coalesce(array_agg(p.workflow), '{}') FROM {s}.paused p)::text[])))
) x`),
		pause: s(`INSERT INTO {s}.paused (workflow) VALUES ($1) ON CONFLICT DO NOTHING`),
		// The paused workflow's ready tasks leave the ready set, so claims
		// do not scan them; on resume they go to the delayed set, whence
		// the next claim promotes those due by its clock.
		pauseTasks: s(`
UPDATE {s}.tasks SET hold = 3
WHERE workflow = $1 AND state = 'pending' AND pending_deps = 0 AND hold = 0`),
		resume: s(`DELETE FROM {s}.paused WHERE workflow = $1`),
		resumeTasks: s(`
UPDATE {s}.tasks SET hold = 1
WHERE workflow = $1 AND state = 'pending' AND hold = 3`),
		paused: s(`SELECT workflow FROM {s}.paused ORDER BY workflow`),
		// GCRA in one statement: the UPDATE's expressions all read the
		// row as it was, so slot is computed from the old TAT. $3 is the
		// emission interval T, $4 the burst tolerance (Burst-1)*T, in
		// microseconds.
		reserve: s(`
INSERT INTO {s}.rates AS r (key, tat, slot)
VALUES ($1, $2::timestamptz + $3 * interval '1 microsecond', $2)
ON CONFLICT (key) DO UPDATE SET
    slot = greatest($2::timestamptz, r.tat - $4 * interval '1 microsecond'),
    tat = greatest(r.tat, $2::timestamptz, r.tat - $4 * interval '1 microsecond') + $3 * interval '1 microsecond'
RETURNING slot`),
		// A TAT in the past is the same as no row.
		pruneRates: s(`DELETE FROM {s}.rates WHERE tat < clock_timestamp() - interval '1 minute'`),
		// The pending run of a debounce key that has not started yet.
		debounceFind: s(`
SELECT r.id, r.created_at FROM {s}.runs r
WHERE r.workflow = $1 AND r.dkey = $2 AND r.start_at > $3 AND r.state = 'active' AND NOT r.canceled
  AND NOT EXISTS (SELECT 1 FROM {s}.tasks t WHERE t.run_id = r.id AND t.first_claimed_at IS NOT NULL)
ORDER BY r.start_at DESC LIMIT 1
FOR NO KEY UPDATE`),
		debounceMove: s(`
WITH q AS (UPDATE {s}.run_queue SET start_at = $4 WHERE run_id = $1)
UPDATE {s}.runs SET event_id = $2, event = $3, start_at = $4 WHERE id = $1`),
		debounceTasks: s(`
UPDATE {s}.tasks SET due_at = $2, hold = CASE hold WHEN 0 THEN 1 WHEN 2 THEN 4 ELSE hold END
WHERE run_id = $1 AND state = 'pending' AND pending_deps = 0 AND cardinality(deps) = 0`),
		// Lock a workflow-level group row (creating it), reading its counts.
		groupLock: s(`
INSERT INTO {s}.run_groups AS g (key, workflow, max) VALUES ($1, $2, $3)
ON CONFLICT (key) DO UPDATE SET max = EXCLUDED.max
RETURNING g.active, g.waiting`),
		// The admitted unfinished runs of a group not canceled yet, oldest
		// first (CancelInProgress).
		inProgress: s(`
SELECT id FROM {s}.runs
WHERE ckey = $1 AND admit = 2 AND state = 'active' AND NOT canceled AND id <> $2
ORDER BY created_at, id`),
	}
}

// CreateRuns implements batuta.Store: the runs are recorded in one
// transaction. A batch of copyMin runs or more with no concurrency limit,
// debounce, parent run or task-level limit is written with COPY (see
// copyCreates). Other runs without debounce or a cancel strategy (with or
// without StartAt, Priority, a Queue limit or task limits) are one
// statement, one round trip, for the whole batch; a batch holding any
// debounced or CancelInProgress / CancelNewest run is recorded item by item,
// in order, in one transaction (each locks its group row or debounce key).
// An error means nothing was recorded.
func (s *Store) CreateRuns(ctx context.Context, runs []batuta.NewRun) ([]batuta.CreateResult, error) {
	out, _, err := s.createRuns(ctx, runs, nil)
	return out, err
}

// CreateRunsAndClaim implements batuta.CreatingClaimer: it records runs as
// CreateRuns does and, in the same transaction (one round trip, one
// commit), claims up to p.Limit tasks as ClaimTasks(p) would, after the
// insert, so the new runs' root tasks can be among them. A single run is
// combined with concurrent CreateRun calls, as CreateRun's are. The claim
// is left out (none is made) for a batch recorded apart: one with a
// debounce or a cancel strategy, or with NewRun.MaxActive set.
func (s *Store) CreateRunsAndClaim(ctx context.Context, runs []batuta.NewRun, p batuta.ClaimParams) ([]batuta.CreateResult, []batuta.Claim, error) {
	if p.Limit <= 0 {
		out, err := s.CreateRuns(ctx, runs)
		return out, nil, err
	}
	return s.createRuns(ctx, runs, &p)
}

// createRuns is CreateRuns, claiming as p says if not nil.
func (s *Store) createRuns(ctx context.Context, runs []batuta.NewRun, p *batuta.ClaimParams) ([]batuta.CreateResult, []batuta.Claim, error) {
	if len(runs) == 0 {
		return nil, nil, nil
	}
	if len(runs) == 1 && p != nil {
		id, created, cs, err := s.createRun(ctx, runs[0], p)
		if err != nil {
			return nil, nil, err
		}
		return []batuta.CreateResult{{ID: id, Created: created}}, cs, nil
	}
	items := make([]createItem, len(runs))
	slow := false
	maxActive := 0
	for i := range runs {
		it, err := s.prepareRun(&runs[i])
		if err != nil {
			return nil, nil, err
		}
		items[i] = it
		slow = slow || it.slow()
		if maxActive == 0 && runs[i].MaxActive > 0 {
			maxActive = runs[i].MaxActive
		}
	}
	if maxActive > 0 {
		busy, err := s.overCap(ctx, maxActive)
		if err != nil {
			return nil, nil, err
		}
		if busy {
			return nil, nil, fmt.Errorf("batutapg: %w: %d or more unfinished runs", batuta.ErrBusy, maxActive)
		}
	}
	if slow {
		out, err := s.createSlow(ctx, items, 0)
		return out, nil, err
	}
	// Under the cap (checked above) the claim rides with the insert as
	// without one: MaxInFlightRuns is on by default, so skipping it here
	// would lose the fused claim for every default configuration.
	items[0].claim = p
	if copyable(items) && s.copySkip.Add(-1) < 0 {
		s.copySkip.Store(0)
		err := s.copyCreates(ctx, items)
		if err == nil {
			out := make([]batuta.CreateResult, len(items))
			for i := range items {
				out[i] = batuta.CreateResult{ID: items[i].run.ID, Created: true}
			}
			return out, nil, nil
		}
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("batutapg: create runs: %w", err)
		}
		// A caller replaying events it sent before, or a connection that
		// cannot COPY, would pay for a failed COPY on every batch: the
		// next few go straight to the insert statement.
		s.copySkip.Store(copySkipAfterFail)
		if !duplicateKey(err) {
			s.log.Warn("batutapg: copying runs failed; inserting them instead", "schema", s.cfg.Schema, "runs", len(items), "error", err)
		}
	}
	res, err := s.flushCreates(ctx, items)
	if err != nil {
		return nil, nil, err
	}
	out := make([]batuta.CreateResult, len(res))
	for i, r := range res {
		out[i] = batuta.CreateResult{ID: r.id, Created: r.created}
	}
	return out, res[0].claims, nil
}

// createSlow records items in order in one transaction (see CreateRuns).
func (s *Store) createSlow(ctx context.Context, items []createItem, maxActive int) ([]batuta.CreateResult, error) {
	if maxActive > 0 {
		busy, err := s.overCap(ctx, maxActive)
		if err != nil {
			return nil, err
		}
		if busy {
			it := &items[0]
			if id, ok, err := s.existing(ctx, it.run.Workflow, it.run.Event.ID); err != nil {
				return nil, err
			} else if ok {
				return []batuta.CreateResult{{ID: id}}, nil
			}
			return nil, fmt.Errorf("batutapg: %w: %d or more unfinished runs", batuta.ErrBusy, maxActive)
		}
	}
	out := make([]batuta.CreateResult, len(items))
	var finished []string
	created := 0
	err := withRetry(ctx, func() error {
		finished, created = finished[:0], 0
		return s.conns.with(ctx, func(c *pgx.Conn) error {
			tx, err := c.Begin(ctx)
			if err != nil {
				return err
			}
			defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
			for i := range items {
				// Each item sees the ones before (a copy: retries start over).
				it := items[i]
				r, fin, err := s.createOneTx(ctx, tx, &it)
				if err != nil {
					return err
				}
				out[i] = r
				finished = append(finished, fin...)
				if r.Created {
					created++
				}
			}
			return tx.Commit(ctx)
		})
	})
	if err != nil {
		return nil, fmt.Errorf("batutapg: create runs: %w", err)
	}
	if created > 0 {
		s.active.add(created)
		s.workAppeared()
	}
	if len(finished) > 0 {
		s.active.add(-len(finished))
		s.runsFinished(finished)
	}
	return out, nil
}

// debounceLockKey is the advisory lock that serialises the debounce of one
// key of one workflow.
func (s *Store) debounceLockKey(workflow, key string) int64 {
	h := fnv.New64a()
	h.Write([]byte("batutapg.debounce:" + s.cfg.Schema + "\x00" + workflow + "\x00" + key))
	return int64(h.Sum64())
}

// limitReason is the error of a run recorded canceled by CancelNewest.
func limitReason(key string, max int) string {
	return fmt.Sprintf("concurrency limit reached: group %q already holds %d unfinished runs (CancelNewest)", key, max)
}

// createOneTx records one run in tx and returns its result and the runs it
// finished (canceled to make room, or itself rejected).
func (s *Store) createOneTx(ctx context.Context, tx pgx.Tx, it *createItem) (batuta.CreateResult, []string, error) {
	nr := it.run
	if id, ok, err := findInTx(ctx, tx, s.q.findExisting, nr.Workflow, nr.Event.ID); err != nil || ok {
		return batuta.CreateResult{ID: id}, nil, err
	}
	if d := nr.Debounce; d != nil {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", s.debounceLockKey(nr.Workflow, d.Key)); err != nil {
			return batuta.CreateResult{}, nil, err
		}
		var pid [16]byte
		var pCreated time.Time
		err := tx.QueryRow(ctx, s.fq.debounceFind, nr.Workflow, d.Key, nr.CreatedAt).Scan(&pid, &pCreated)
		switch {
		case err == nil:
			start := nr.CreatedAt.Add(d.Window)
			if lim := pCreated.Add(d.MaxWait); lim.Before(start) {
				start = lim
			}
			if _, err := tx.Exec(ctx, s.fq.debounceMove, pid, nr.Event.ID, it.event, start); err != nil {
				return batuta.CreateResult{}, nil, err
			}
			if _, err := tx.Exec(ctx, s.fq.debounceTasks, pid, start); err != nil {
				return batuta.CreateResult{}, nil, err
			}
			s.noteDelayed(start)
			return batuta.CreateResult{ID: formatUUID(pid), Debounced: true}, nil, nil
		case !errors.Is(err, pgx.ErrNoRows):
			return batuta.CreateResult{}, nil, err
		}
	}
	c := nr.Concurrency
	if c != nil && c.Strategy != batuta.ConcurrencyQueue {
		var active, waiting int32
		if err := tx.QueryRow(ctx, s.fq.groupLock, c.Key, nr.Workflow, c.Max).Scan(&active, &waiting); err != nil {
			return batuta.CreateResult{}, nil, err
		}
		it.admit = 2
		if c.Strategy == batuta.ConcurrencyCancelNewest && int(active+waiting) >= c.Max {
			it.admit, it.rejected = 0, limitReason(c.Key, c.Max)
		}
	}
	created := map[[16]byte]bool{}
	rows, err := tx.Query(ctx, s.createStatement([]createItem{*it}, []int{0}), s.createArgs([]createItem{*it}, []int{0})...)
	if err != nil {
		return batuta.CreateResult{}, nil, err
	}
	if err := readCreated(rows, created); err != nil {
		return batuta.CreateResult{}, nil, err
	}
	if !created[it.id] {
		// A concurrent insert of the same key committed meanwhile.
		id, ok, err := findInTx(ctx, tx, s.q.findExisting, nr.Workflow, nr.Event.ID)
		if err == nil && !ok {
			err = fmt.Errorf("run of %s for event %s neither created nor found", nr.Workflow, nr.Event.ID)
		}
		return batuta.CreateResult{ID: id}, nil, err
	}
	res := batuta.CreateResult{ID: nr.ID, Created: true}
	var finished []string
	if it.rejected != "" {
		res.Rejected = true
		finished = append(finished, nr.ID)
	}
	if c != nil && c.Strategy == batuta.ConcurrencyCancelInProgress {
		var olds [][16]byte
		rows, err := tx.Query(ctx, s.fq.inProgress, c.Key, it.id)
		if err != nil {
			return batuta.CreateResult{}, nil, err
		}
		for rows.Next() {
			var u [16]byte
			if err := rows.Scan(&u); err != nil {
				rows.Close()
				return batuta.CreateResult{}, nil, err
			}
			olds = append(olds, u)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return batuta.CreateResult{}, nil, err
		}
		reason := fmt.Sprintf("canceled by a newer run of concurrency group %q (CancelInProgress)", c.Key)
		for k := 0; k < len(olds)+1-c.Max; k++ {
			changed, fin, _, err := s.cancelTx(ctx, tx, olds[k], reason, nr.CreatedAt)
			if err != nil {
				return batuta.CreateResult{}, nil, err
			}
			if changed {
				res.Canceled = append(res.Canceled, formatUUID(olds[k]))
			}
			finished = append(finished, fin...)
		}
	}
	return res, finished, nil
}

// findInTx returns the run of workflow for eventID, if any.
func findInTx(ctx context.Context, tx pgx.Tx, q, workflow, eventID string) (string, bool, error) {
	var ord int64
	var u [16]byte
	err := tx.QueryRow(ctx, q, []string{workflow}, []string{eventID}).Scan(&ord, &u)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return formatUUID(u), true, nil
}

// NextDue implements batuta.Store: one probe of the delayed tasks' index.
func (s *Store) NextDue(ctx context.Context, workflows []string, now time.Time) (time.Time, error) {
	var wfs []string
	if len(workflows) > 0 {
		wfs = workflows
	}
	var t pgtype.Timestamptz
	var err error
	wall := time.Now().UnixNano()
	if s.soonCreated.Swap(false) || wall-s.soonAsked.Load() >= int64(soonAskEvery) {
		// A run that starts soon was created at most readySoon before
		// its start, by a clock up to ClockSkew behind ours. Reading the
		// runs created since costs a range of runs_created_at: only once
		// this Store created such a run, or soonAskEvery passed (a
		// stream of timers asks on every idle moment; runs another
		// process created are found within soonAskEvery, and that
		// process wakes for them on its own).
		s.soonAsked.Store(wall)
		since := now.Add(-readySoon - s.cfg.ClockSkew)
		err = s.queryRow(ctx, s.fq.nextDueSoon, []any{now, wfs, since}, &t)
	} else {
		err = s.queryRow(ctx, s.fq.nextDue, []any{now, wfs}, &t)
	}
	if errors.Is(err, pgx.ErrNoRows) || err == nil && !t.Valid {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("batutapg: next due: %w", err)
	}
	s.noteDelayed(t.Time) // perhaps another process's: the claim at t promotes it
	return t.Time, nil
}

// soonAskEvery is how often (at most) NextDue looks for runs that start
// soon (see readySoon) besides the delayed tasks.
const soonAskEvery = 500 * time.Millisecond

// SetPaused implements batuta.Store. The pause is a row every instance's
// claims read; the paused workflow's ready tasks move out of the ready set
// (and back on resume) in the same transaction. Resuming notifies every
// instance (LISTEN/NOTIFY).
func (s *Store) SetPaused(ctx context.Context, workflow string, paused bool) (bool, error) {
	if err := checkText("workflow name", workflow); err != nil {
		return false, err
	}
	var changed bool
	err := withRetry(ctx, func() error {
		return s.conns.with(ctx, func(c *pgx.Conn) error {
			tx, err := c.Begin(ctx)
			if err != nil {
				return err
			}
			defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
			q, qt, args := s.fq.pause, s.fq.pauseTasks, []any{workflow}
			if !paused {
				q, qt = s.fq.resume, s.fq.resumeTasks
			}
			tag, err := tx.Exec(ctx, q, workflow)
			if err != nil {
				return err
			}
			changed = tag.RowsAffected() > 0
			if changed {
				if _, err := tx.Exec(ctx, qt, args...); err != nil {
					return err
				}
			}
			return tx.Commit(ctx)
		})
	})
	if err != nil {
		return false, fmt.Errorf("batutapg: set paused %s: %w", workflow, err)
	}
	if changed && !paused {
		s.noteDelayed(time.Time{}) // the resumed tasks are in the delayed set, due
		s.workAppeared()
	}
	return changed, nil
}

// PausedWorkflows implements batuta.Store.
func (s *Store) PausedWorkflows(ctx context.Context) ([]string, error) {
	var out []string
	err := s.query(ctx, s.fq.paused, nil, func(rows pgx.Rows) error {
		var w string
		if err := rows.Scan(&w); err != nil {
			return err
		}
		out = append(out, w)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("batutapg: paused workflows: %w", err)
	}
	return out, nil
}

// ReserveRate implements batuta.Store: one atomic upsert of the key's GCRA
// row, so concurrent callers of any process get distinct slots. Times are
// kept to the microsecond; the emission interval Per/Limit is rounded up
// to a microsecond, so the bound holds.
func (s *Store) ReserveRate(ctx context.Context, spec batuta.RateSpec, now time.Time) (time.Time, error) {
	switch {
	case spec.Limit < 1:
		return time.Time{}, fmt.Errorf("batutapg: %w: rate %q: Limit %d, must be at least 1", batuta.ErrInvalidConfig, spec.Key, spec.Limit)
	case spec.Per <= 0:
		return time.Time{}, fmt.Errorf("batutapg: %w: rate %q: Per %v, must be positive", batuta.ErrInvalidConfig, spec.Key, spec.Per)
	case spec.Burst < 1:
		return time.Time{}, fmt.Errorf("batutapg: %w: rate %q: Burst %d, must be at least 1", batuta.ErrInvalidConfig, spec.Key, spec.Burst)
	case len(spec.Key) > maxKeyLen:
		return time.Time{}, fmt.Errorf("batutapg: %w: rate key is %d bytes, over %d", batuta.ErrInvalidPayload, len(spec.Key), maxKeyLen)
	}
	if err := checkText("rate key", spec.Key); err != nil {
		return time.Time{}, err
	}
	t := (spec.Per + time.Duration(spec.Limit) - 1) / time.Duration(spec.Limit)
	tUS := int64((t + time.Microsecond - 1) / time.Microsecond)
	tauUS := tUS * int64(spec.Burst-1)
	var slot time.Time
	err := withRetry(ctx, func() error {
		return s.queryRow(ctx, s.fq.reserve, []any{spec.Key, now.Truncate(time.Microsecond), tUS, tauUS}, &slot)
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("batutapg: reserve rate %q: %w", spec.Key, err)
	}
	return slot, nil
}
