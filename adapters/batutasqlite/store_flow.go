package batutasqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
)

// Flow control (issue 11): delayed runs, priorities, workflow and task
// concurrency groups, debounce, pause and rate reservations. Every waiting
// state is a row or a column (migration 0003), written in the same write
// transaction as the change it belongs to, so a crash loses none of it.
//
// A pending task with no pending dependency is claimable when none of its
// holds is set (delayed, paused, gated; see migrations/0003_flow.sql): the
// claim index batuta_tasks_claim holds exactly those, higher priority first,
// so ClaimTasks never walks through waiting work. Each claim first clears
// the delayed hold of the tasks that came due (index batuta_tasks_delayed)
// and admits waiting runs into groups with room, then reads the index.

// maxKeyLen bounds concurrency, debounce and rate keys.
const maxKeyLen = 255

// Run adm values (batuta_runs.adm): a run's place in its concurrency group.
const (
	admNone     = 0 // no group, or it left its group
	admAdmitted = 1 // holds a slot
	admEligible = 2 // waits for a slot, due (counted in batuta_groups.eligible)
	admDelayed  = 3 // waits for its start time, then for a slot
)

// rejectReason is the error of a run recorded canceled at once by
// ConcurrencyCancelNewest.
func rejectReason(key string, max int) string {
	return fmt.Sprintf("concurrency limit reached: group %q already holds %d unfinished runs (CancelNewest)", key, max)
}

// cancelInProgressReason is the error of a run canceled to make room for a
// newer one (ConcurrencyCancelInProgress).
func cancelInProgressReason(newer string) string {
	return fmt.Sprintf("canceled by newer run %s (concurrency limit, CancelInProgress)", newer)
}

// preparedRun is a NewRun checked and encoded outside the write
// transaction.
type preparedRun struct {
	run                *batuta.NewRun
	event              string
	deps, dependents   []string
	pending            []int
	hasDeps            []bool
	startAt            time.Time // zero: can start at once
	concKey            any       // NULL or the key
	concMax, concStrat int
	debounceKey        any // NULL or the key
	parentRun          any // NULL or NewRun.Parent.RunID
	parentTask         any // NULL or NewRun.Parent.Task
	taskKeys           []any
	taskMax            []int
}

// prepareRun validates run and encodes it for insertion.
func prepareRun(run *batuta.NewRun) (*preparedRun, error) {
	if err := validateNewRun(run); err != nil {
		return nil, err
	}
	event, err := json.Marshal(run.Event)
	if err != nil {
		return nil, fmt.Errorf("batutasqlite: encode event: %w", err)
	}
	p := &preparedRun{run: run, event: string(event)}
	p.deps, p.dependents, p.pending = taskGraph(run.Tasks)
	p.hasDeps = make([]bool, len(run.Tasks))
	p.taskKeys = make([]any, len(run.Tasks))
	p.taskMax = make([]int, len(run.Tasks))
	for i, t := range run.Tasks {
		p.hasDeps[i] = len(t.Deps) > 0
		if t.Concurrency != nil {
			p.taskKeys[i], p.taskMax[i] = t.Concurrency.Key, t.Concurrency.Max
		}
	}
	if run.StartAt.After(run.CreatedAt) {
		p.startAt = run.StartAt
	}
	if d := run.Debounce; d != nil {
		p.debounceKey = d.Key
		if w := run.CreatedAt.Add(d.Window); w.After(p.startAt) {
			p.startAt = w
		}
	}
	if c := run.Concurrency; c != nil {
		p.concKey, p.concMax, p.concStrat = c.Key, c.Max, int(c.Strategy)
	}
	if pr := run.Parent; pr != nil {
		p.parentRun, p.parentTask = pr.RunID, pr.Task
	}
	return p, nil
}

// validateFlow checks the flow-control fields of a NewRun.
func validateFlow(run *batuta.NewRun) error {
	if c := run.Concurrency; c != nil {
		switch {
		case c.Max < 1:
			return fmt.Errorf("batutasqlite: create run %s: concurrency Max %d < 1: %w", run.ID, c.Max, batuta.ErrInvalidConfig)
		case len(c.Key) > maxKeyLen:
			return fmt.Errorf("batutasqlite: create run %s: concurrency key longer than %d bytes: %w", run.ID, maxKeyLen, batuta.ErrInvalidConfig)
		case c.Strategy > batuta.ConcurrencyCancelNewest:
			return fmt.Errorf("batutasqlite: create run %s: unknown %s: %w", run.ID, c.Strategy, batuta.ErrInvalidConfig)
		}
	}
	if d := run.Debounce; d != nil {
		switch {
		case d.Window <= 0:
			return fmt.Errorf("batutasqlite: create run %s: debounce Window %v <= 0: %w", run.ID, d.Window, batuta.ErrInvalidConfig)
		case d.MaxWait < d.Window:
			return fmt.Errorf("batutasqlite: create run %s: debounce MaxWait %v < Window %v: %w", run.ID, d.MaxWait, d.Window, batuta.ErrInvalidConfig)
		case len(d.Key) > maxKeyLen:
			return fmt.Errorf("batutasqlite: create run %s: debounce key longer than %d bytes: %w", run.ID, maxKeyLen, batuta.ErrInvalidConfig)
		}
	}
	for _, t := range run.Tasks {
		if c := t.Concurrency; c != nil {
			if c.Max < 1 {
				return fmt.Errorf("batutasqlite: create run %s: task %q: concurrency Max %d < 1: %w", run.ID, t.Name, c.Max, batuta.ErrInvalidConfig)
			}
			if len(c.Key) > maxKeyLen {
				return fmt.Errorf("batutasqlite: create run %s: task %q: concurrency key longer than %d bytes: %w", run.ID, t.Name, maxKeyLen, batuta.ErrInvalidConfig)
			}
		}
	}
	return nil
}

// CreateRuns records runs in one transaction, each as CreateRun would (a
// run may deduplicate against, or debounce into, one earlier in the batch),
// and returns one result per run. MaxActive, if the first run sets it, is
// checked once against the unfinished runs before the batch: at the limit,
// the batch is refused with ErrBusy unless no run of it would be added
// (every one a duplicate or merged into a debounced run). On error nothing
// is recorded.
func (s *Store) CreateRuns(ctx context.Context, runs []batuta.NewRun) ([]batuta.CreateResult, error) {
	if len(runs) == 0 {
		return []batuta.CreateResult{}, nil
	}
	preps := make([]*preparedRun, len(runs))
	for i := range runs {
		p, err := prepareRun(&runs[i])
		if err != nil {
			return nil, err
		}
		preps[i] = p
	}
	out := make([]batuta.CreateResult, len(runs))
	err := s.write(ctx, func(ctx context.Context) error {
		var busy error
		if max := runs[0].MaxActive; max > 0 {
			if busy = s.checkActive(ctx, max); busy != nil && !errors.Is(busy, batuta.ErrBusy) {
				return busy
			}
		}
		for i, p := range preps {
			r, err := s.createOne(ctx, p)
			if err != nil {
				return err
			}
			if busy != nil && r.Created {
				return busy // the batch adds a run: refused, rolled back
			}
			out[i] = r
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, r := range out {
		if r.Created && !r.Rejected {
			s.signalWork()
			break
		}
	}
	return out, nil
}

// checkActive fails with ErrBusy if max or more runs are unfinished.
func (s *Store) checkActive(ctx context.Context, max int) error {
	var active int
	if err := s.st.activeRuns.QueryRowContext(ctx).Scan(&active); err != nil {
		return fmt.Errorf("batutasqlite: count active runs: %w", err)
	}
	if active >= max {
		return fmt.Errorf("batutasqlite: %d unfinished runs (MaxActive %d): %w", active, max, batuta.ErrBusy)
	}
	return nil
}

// createOne records one prepared run inside the write transaction.
func (s *Store) createOne(ctx context.Context, p *preparedRun) (batuta.CreateResult, error) {
	run := p.run
	if run.Debounce != nil {
		// A duplicate Event.ID is found first; then a pending run of the
		// debounce key whose start is still ahead takes the event.
		var id string
		err := s.st.runByKey.QueryRowContext(ctx, run.Workflow, run.Event.ID).Scan(&id)
		switch {
		case err == nil:
			return batuta.CreateResult{ID: id}, nil
		case !errors.Is(err, sql.ErrNoRows):
			return batuta.CreateResult{}, fmt.Errorf("batutasqlite: find run: %w", err)
		}
		id, err = s.debounceMerge(ctx, p)
		if err != nil || id != "" {
			return batuta.CreateResult{ID: id, Debounced: id != ""}, err
		}
	}

	delayed := !p.startAt.IsZero()
	adm, gated, rejected := admNone, 0, false
	if c := run.Concurrency; c != nil {
		switch c.Strategy {
		case batuta.ConcurrencyQueue:
			adm, gated = admEligible, 1
			if delayed {
				adm = admDelayed
			}
		case batuta.ConcurrencyCancelInProgress:
			adm = admAdmitted
		case batuta.ConcurrencyCancelNewest:
			admitted, err := s.groupAdmitted(ctx, c.Key)
			if err != nil {
				return batuta.CreateResult{}, err
			}
			if admitted >= c.Max {
				rejected = true
			} else {
				adm = admAdmitted
			}
		}
	}

	state, canceled, errText, finished, unfinished := batuta.RunPending, 0, "", any(nil), len(run.Tasks)
	taskState, taskErr := batuta.TaskPending, ""
	if rejected {
		reason := rejectReason(run.Concurrency.Key, run.Concurrency.Max)
		state, canceled, errText, finished, unfinished = batuta.RunCanceled, 1, reason, run.CreatedAt.UnixNano(), 0
		taskState, taskErr, adm, gated = batuta.TaskCanceled, reason, admNone, 0
	}
	res, err := s.st.insertRun.ExecContext(ctx, run.ID, run.Workflow, run.Event.ID, p.event, string(state),
		run.CreatedAt.UnixNano(), nanos(run.Deadline), unfinished,
		nanos(p.startAt), run.Priority, p.concKey, p.concMax, p.concStrat, adm, p.debounceKey,
		canceled, errText, finished, p.parentRun, p.parentTask, nullString(run.Event.Subject))
	if err != nil {
		return batuta.CreateResult{}, fmt.Errorf("batutasqlite: insert run: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return batuta.CreateResult{}, fmt.Errorf("batutasqlite: insert run: %w", err)
	} else if n == 0 {
		var id string
		if err := s.st.runByKey.QueryRowContext(ctx, run.Workflow, run.Event.ID).Scan(&id); err != nil {
			return batuta.CreateResult{}, fmt.Errorf("batutasqlite: find duplicate run: %w", err)
		}
		return batuta.CreateResult{ID: id}, nil
	}
	out := batuta.CreateResult{ID: run.ID, Created: true, Rejected: rejected}
	if run.Concurrency != nil && run.Concurrency.Strategy == batuta.ConcurrencyCancelInProgress {
		if out.Canceled, err = s.cancelOldest(ctx, run); err != nil {
			return batuta.CreateResult{}, err
		}
	}

	// A first attempt is due newTaskLead before the run was created: at
	// once for any claimer whose clock is not that far behind, and ordered
	// among retries by creation time, so that a retry due at T goes before
	// the tasks of runs created after T+newTaskLead instead of starving
	// behind all new work. The root tasks of a delayed run are due at its
	// start.
	due := run.CreatedAt.Add(-newTaskLead).UnixNano()
	for i, t := range run.Tasks {
		tdue, tdelayed := due, 0
		if delayed && !p.hasDeps[i] && !rejected {
			tdue, tdelayed = p.startAt.UnixNano(), 1
		}
		if _, err := s.st.insertTask.ExecContext(ctx, run.ID, i, t.Name, run.Workflow,
			p.deps[i], p.dependents[i], string(taskState), p.pending[i], tdue, string(t.FireOn),
			run.Priority, tdelayed, gated, p.taskKeys[i], p.taskMax[i], taskErr, nullString(t.Signal)); err != nil {
			return batuta.CreateResult{}, fmt.Errorf("batutasqlite: insert task %q: %w", t.Name, err)
		}
	}
	if rejected {
		if run.Parent != nil {
			// A child run recorded finished at once may be its
			// parent task's last unfinished child.
			if err := s.wakeParent(ctx, run.Parent.RunID, run.Parent.Task, run.CreatedAt); err != nil {
				return batuta.CreateResult{}, err
			}
		}
		return out, nil
	}
	if _, err := s.st.addActiveRuns.ExecContext(ctx, 1); err != nil {
		return batuta.CreateResult{}, fmt.Errorf("batutasqlite: count active runs: %w", err)
	}
	if adm != admNone {
		if _, err := s.st.groupJoin.ExecContext(ctx, run.Concurrency.Key, run.Concurrency.Max,
			b2i(adm == admAdmitted), b2i(adm == admEligible)); err != nil {
			return batuta.CreateResult{}, fmt.Errorf("batutasqlite: join concurrency group: %w", err)
		}
	}
	return out, nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// groupAdmitted returns how many runs hold a slot of the group key.
func (s *Store) groupAdmitted(ctx context.Context, key string) (int, error) {
	var n int
	err := s.wconn.QueryRowContext(ctx, `SELECT admitted FROM batuta_groups WHERE key = ?`, key).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("batutasqlite: concurrency group %q: %w", key, err)
	}
	return n, nil
}

// cancelOldest cancels, as CancelRun would, the oldest admitted runs of the
// new run's group until the group, with the new run, holds at most Max
// (ConcurrencyCancelInProgress). A canceled run of such a group leaves it at
// once, even if a task of it still runs (its worker learns of the
// cancellation through ExtendLeases), so runs canceled before do not count.
func (s *Store) cancelOldest(ctx context.Context, run *batuta.NewRun) ([]string, error) {
	key, max := run.Concurrency.Key, run.Concurrency.Max
	admitted, err := s.groupAdmitted(ctx, key)
	if err != nil {
		return nil, err
	}
	n := admitted + 1 - max
	if n <= 0 {
		return nil, nil
	}
	rows, err := s.wconn.QueryContext(ctx, `SELECT id FROM batuta_runs
    WHERE concurrency_key = ? AND adm = 1 ORDER BY created_at LIMIT ?`, key, n)
	if err != nil {
		return nil, fmt.Errorf("batutasqlite: concurrency group %q: %w", key, err)
	}
	ids, err := scanStrings(rows)
	if err != nil {
		return nil, fmt.Errorf("batutasqlite: concurrency group %q: %w", key, err)
	}
	reason := cancelInProgressReason(run.ID)
	for _, id := range ids {
		// cancelInTx takes the run out of the group.
		if _, err := s.cancelInTx(ctx, id, reason, run.CreatedAt); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// leaveGroup takes run id, whose adm is adm, out of its group key.
func (s *Store) leaveGroup(ctx context.Context, id, key string, adm int) error {
	if adm == admNone {
		return nil
	}
	if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_runs SET adm = 0 WHERE id = ?`, id); err != nil {
		return fmt.Errorf("batutasqlite: run %s: leave concurrency group: %w", id, err)
	}
	return s.groupLeft(ctx, key, adm)
}

// groupLeft counts a member with the given adm out of group key, deleting
// the group when it has no member left, and wakes claimers when a slot was
// freed.
func (s *Store) groupLeft(ctx context.Context, key string, adm int) error {
	if _, err := s.st.groupLeave.ExecContext(ctx, key, b2i(adm == admAdmitted), b2i(adm == admEligible)); err != nil {
		return fmt.Errorf("batutasqlite: leave concurrency group %q: %w", key, err)
	}
	if _, err := s.st.groupGC.ExecContext(ctx, key); err != nil {
		return fmt.Errorf("batutasqlite: leave concurrency group %q: %w", key, err)
	}
	if adm == admAdmitted {
		s.wake.Store(true)
	}
	return nil
}

// debounceMerge merges p into a pending run of its workflow and debounce key
// whose start is still after p's CreatedAt, and returns that run's ID, or
// "" if there is none.
func (s *Store) debounceMerge(ctx context.Context, p *preparedRun) (string, error) {
	run, d := p.run, p.run.Debounce
	var (
		id      string
		created int64
	)
	// Not a run whose start a claimer with a later clock already saw come
	// (a root task promoted): it is due, as if its start had passed.
	err := s.wconn.QueryRowContext(ctx, `SELECT r.id, r.created_at FROM batuta_runs r
    WHERE r.workflow = ? AND r.debounce_key = ? AND r.state = 'pending' AND r.canceled = 0 AND r.start_at > ?
      AND NOT EXISTS (SELECT 1 FROM batuta_tasks t
          WHERE t.run_id = r.id AND t.pending_deps = 0 AND (t.state <> 'pending' OR t.delayed = 0))
    ORDER BY r.created_at LIMIT 1`, run.Workflow, d.Key, run.CreatedAt.UnixNano()).Scan(&id, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("batutasqlite: debounce: %w", err)
	}
	newStart := min(run.CreatedAt.Add(d.Window).UnixNano(), created+d.MaxWait.Nanoseconds())
	if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_runs SET event_id = ?, event = ?, subject = ?, start_at = ? WHERE id = ?`,
		run.Event.ID, p.event, nullString(run.Event.Subject), newStart, id); err != nil {
		return "", fmt.Errorf("batutasqlite: debounce into run %s: %w", id, err)
	}
	if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_tasks SET due_at = ?, delayed = 1
    WHERE run_id = ? AND state = 'pending' AND pending_deps = 0`, newStart, id); err != nil {
		return "", fmt.Errorf("batutasqlite: debounce into run %s: %w", id, err)
	}
	return id, nil
}

// promoteBatch bounds the tasks one claim moves from the delayed index to
// the claim index (earliest first), so that many runs coming due at once do
// not hold the writer long; the next claims move the rest.
const promoteBatch = 1000

// maxParks bounds the tasks of full task-level groups one claim parks.
const maxParks = 1000

// promoteDue clears the delayed hold of up to promoteBatch tasks due at now;
// a run waiting for admission whose start came becomes eligible.
func (s *Store) promoteDue(ctx context.Context, now int64) error {
	rows, err := s.st.promote.QueryContext(ctx, now, promoteBatch)
	if err != nil {
		return fmt.Errorf("batutasqlite: claim: promote due tasks: %w", err)
	}
	var gatedRuns []string
	for rows.Next() {
		var (
			runID         string
			gated, paused bool
		)
		if err := rows.Scan(&runID, &gated, &paused); err != nil {
			_ = rows.Close()
			return fmt.Errorf("batutasqlite: claim: promote due tasks: %w", err)
		}
		if gated && !paused {
			gatedRuns = append(gatedRuns, runID)
		}
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("batutasqlite: claim: promote due tasks: %w", err)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("batutasqlite: claim: promote due tasks: %w", err)
	}
	for _, id := range gatedRuns {
		var key string
		err := s.wconn.QueryRowContext(ctx, `UPDATE batuta_runs SET adm = 2 WHERE id = ? AND adm = 3 RETURNING concurrency_key`, id).Scan(&key)
		if errors.Is(err, sql.ErrNoRows) {
			continue // another root task of the run made it eligible
		}
		if err != nil {
			return fmt.Errorf("batutasqlite: claim: run %s: %w", id, err)
		}
		if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_groups SET eligible = eligible + 1 WHERE key = ?`, key); err != nil {
			return fmt.Errorf("batutasqlite: claim: run %s: %w", id, err)
		}
	}
	return nil
}

// admit admits up to budget eligible runs into groups with room, one per
// group per pass, groups that admitted least recently first (round-robin),
// each group's runs by priority then creation.
func (s *Store) admit(ctx context.Context, budget int) error {
	for budget > 0 {
		rows, err := s.st.admitGroups.QueryContext(ctx, budget)
		if err != nil {
			return fmt.Errorf("batutasqlite: claim: admission: %w", err)
		}
		keys, err := scanStrings(rows)
		if err != nil {
			return fmt.Errorf("batutasqlite: claim: admission: %w", err)
		}
		if len(keys) == 0 {
			return nil
		}
		for _, key := range keys {
			var id string
			err := s.st.groupHead.QueryRowContext(ctx, key).Scan(&id)
			if errors.Is(err, sql.ErrNoRows) {
				// The count says a run waits but none does: repair it
				// rather than loop.
				s.log.WarnContext(ctx, "batutasqlite: concurrency group counted an eligible run it does not have; repaired", "group", key)
				if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_groups SET eligible = 0 WHERE key = ?`, key); err != nil {
					return fmt.Errorf("batutasqlite: claim: admission: %w", err)
				}
				continue
			}
			if err != nil {
				return fmt.Errorf("batutasqlite: claim: admission: %w", err)
			}
			var seq int64
			if err := s.wconn.QueryRowContext(ctx, `UPDATE batuta_counters SET value = value + 1 WHERE name = 'admit_seq' RETURNING value`).Scan(&seq); err != nil {
				return fmt.Errorf("batutasqlite: claim: admission: %w", err)
			}
			if _, err := s.st.admitRun.ExecContext(ctx, id); err != nil {
				return fmt.Errorf("batutasqlite: claim: admit run %s: %w", id, err)
			}
			if _, err := s.st.ungate.ExecContext(ctx, id); err != nil {
				return fmt.Errorf("batutasqlite: claim: admit run %s: %w", id, err)
			}
			if _, err := s.st.groupAdmit.ExecContext(ctx, seq, key); err != nil {
				return fmt.Errorf("batutasqlite: claim: admit run %s: %w", id, err)
			}
			budget--
		}
	}
	return nil
}

// releaseTaskSlot frees the task-level concurrency slot of a task of group
// key that stops running, and unparks one task of the group for it.
func (s *Store) releaseTaskSlot(ctx context.Context, key string) error {
	var parked int
	err := s.st.taskUnslot.QueryRowContext(ctx, key).Scan(&parked)
	if errors.Is(err, sql.ErrNoRows) {
		// Never expected (a running task keeps its group's row); do not
		// fail the completion over the bookkeeping.
		s.log.WarnContext(ctx, "batutasqlite: a task finished in a task concurrency group the store has no row for", "group", key)
		return nil
	}
	if err != nil {
		return fmt.Errorf("batutasqlite: task concurrency group %q: %w", key, err)
	}
	if parked > 0 {
		if err := s.unparkOne(ctx, key); err != nil {
			return err
		}
	}
	if _, err := s.st.taskGroupGC.ExecContext(ctx, key); err != nil {
		return fmt.Errorf("batutasqlite: task concurrency group %q: %w", key, err)
	}
	return nil
}

// parkTask holds candidate c, whose task-level group is full, out of the
// claim index until a slot of the group frees.
func (s *Store) parkTask(ctx context.Context, c candidate) error {
	if _, err := s.st.park.ExecContext(ctx, c.runID, c.idx); err != nil {
		return fmt.Errorf("batutasqlite: park task %s/%s: %w", c.runID, c.name, err)
	}
	if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_task_groups SET parked = parked + 1 WHERE key = ?`, c.taskKey.String); err != nil {
		return fmt.Errorf("batutasqlite: park task %s/%s: %w", c.runID, c.name, err)
	}
	return nil
}

// unparkOne returns the first parked task of group key (priority, then
// due order) to the claim index, and wakes claimers.
func (s *Store) unparkOne(ctx context.Context, key string) error {
	var runID string
	err := s.st.unpark.QueryRowContext(ctx, key).Scan(&runID)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("batutasqlite: task concurrency group %q: unpark: %w", key, err)
	}
	if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_task_groups SET parked = parked - 1 WHERE key = ?`, key); err != nil {
		return fmt.Errorf("batutasqlite: task concurrency group %q: unpark: %w", key, err)
	}
	if _, err := s.st.taskGroupGC.ExecContext(ctx, key); err != nil {
		return fmt.Errorf("batutasqlite: task concurrency group %q: unpark: %w", key, err)
	}
	s.wake.Store(true)
	return nil
}

// cancelTaskGroups settles the task-level groups of the pending tasks of a
// run about to be canceled: its parked tasks leave their groups' parked
// counts; an unparked one may have been woken by a freed slot, so it passes
// the wake-up on to the next parked task of its group (of another run: this
// run's parked tasks are taken out first).
func (s *Store) cancelTaskGroups(ctx context.Context, runID string) error {
	rows, err := s.wconn.QueryContext(ctx, `SELECT concurrency_key FROM batuta_tasks
    WHERE run_id = ? AND state = 'pending' AND gated = 0 AND concurrency_key IS NOT NULL`, runID)
	if err != nil {
		return fmt.Errorf("batutasqlite: cancel run %s: task groups: %w", runID, err)
	}
	woken, err := scanStrings(rows)
	if err != nil {
		return fmt.Errorf("batutasqlite: cancel run %s: task groups: %w", runID, err)
	}
	rows, err = s.wconn.QueryContext(ctx, `UPDATE batuta_tasks SET gated = 0
    WHERE run_id = ? AND state = 'pending' AND gated = 2
    RETURNING concurrency_key`, runID)
	if err != nil {
		return fmt.Errorf("batutasqlite: cancel run %s: task groups: %w", runID, err)
	}
	parked, err := scanStrings(rows)
	if err != nil {
		return fmt.Errorf("batutasqlite: cancel run %s: task groups: %w", runID, err)
	}
	for _, key := range parked {
		if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_task_groups SET parked = parked - 1 WHERE key = ?`, key); err != nil {
			return fmt.Errorf("batutasqlite: cancel run %s: task groups: %w", runID, err)
		}
		if _, err := s.st.taskGroupGC.ExecContext(ctx, key); err != nil {
			return fmt.Errorf("batutasqlite: cancel run %s: task groups: %w", runID, err)
		}
	}
	for _, key := range woken {
		if err := s.unparkOne(ctx, key); err != nil {
			return err
		}
	}
	return nil
}

// NextDue returns the earliest due time after now of a pending task of the
// given workflows (of every workflow if empty) that waits for a time (its
// run's start, a retry, a snooze or a deferral), skipping paused workflows:
// one seek per workflow in the index batuta_tasks_delayed_wf. Zero if there
// is none.
func (s *Store) NextDue(ctx context.Context, workflows []string, now time.Time) (time.Time, error) {
	if s.isClosed() {
		return time.Time{}, errClosed
	}
	var due sql.NullInt64
	var err error
	if len(workflows) == 0 {
		err = s.db.QueryRowContext(ctx, nextDueAllSQL, now.UnixNano()).Scan(&due)
	} else {
		b, jerr := json.Marshal(workflows)
		if jerr != nil {
			return time.Time{}, fmt.Errorf("batutasqlite: next due: %w", jerr)
		}
		err = s.db.QueryRowContext(ctx, nextDueSQL, now.UnixNano(), string(b)).Scan(&due)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, s.wrapErr("next due", err)
	}
	return fromNanos(due), nil
}

// SetPaused pauses or resumes workflow, durably (batuta_paused). A pause
// holds the workflow's delayed tasks out of the delayed index at once; a
// ready task of it is held out of the claim index by the first claim that
// meets it (and a due one by the promotion), so pausing costs no more than
// the workflow's delayed tasks, however many runs it has. A resume releases
// every held task (index batuta_tasks_paused) and signals WorkAvailable. It
// reports whether the state changed.
func (s *Store) SetPaused(ctx context.Context, workflow string, paused bool) (bool, error) {
	if workflow == "" {
		return false, fmt.Errorf("batutasqlite: pause: empty workflow name: %w", batuta.ErrInvalidConfig)
	}
	var changed bool
	err := s.write(ctx, func(ctx context.Context) error {
		var (
			res sql.Result
			err error
		)
		if paused {
			res, err = s.wconn.ExecContext(ctx, `INSERT INTO batuta_paused (workflow, paused_at) VALUES (?, ?)
    ON CONFLICT (workflow) DO NOTHING`, workflow, time.Now().UnixNano())
		} else {
			res, err = s.wconn.ExecContext(ctx, `DELETE FROM batuta_paused WHERE workflow = ?`, workflow)
		}
		if err != nil {
			return fmt.Errorf("batutasqlite: pause %s: %w", workflow, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("batutasqlite: pause %s: %w", workflow, err)
		}
		changed = n > 0
		if !changed {
			return nil
		}
		if paused {
			_, err = s.wconn.ExecContext(ctx, `UPDATE batuta_tasks SET paused = 1
    WHERE workflow = ? AND state = 'pending' AND delayed = 1 AND paused = 0`, workflow)
		} else {
			_, err = s.wconn.ExecContext(ctx, `UPDATE batuta_tasks SET paused = 0 WHERE workflow = ? AND paused = 1`, workflow)
		}
		if err != nil {
			return fmt.Errorf("batutasqlite: pause %s: %w", workflow, err)
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	if changed && !paused {
		s.signalWork()
	}
	return changed, nil
}

// pausedSet reads the paused workflows inside the write transaction.
func (s *Store) pausedSet(ctx context.Context) (map[string]bool, error) {
	rows, err := s.wconn.QueryContext(ctx, `SELECT workflow FROM batuta_paused`)
	if err != nil {
		return nil, fmt.Errorf("batutasqlite: claim: paused workflows: %w", err)
	}
	ws, err := scanStrings(rows)
	if err != nil {
		return nil, fmt.Errorf("batutasqlite: claim: paused workflows: %w", err)
	}
	set := make(map[string]bool, len(ws))
	for _, w := range ws {
		set[w] = true
	}
	return set, nil
}

// holdPaused takes candidate c, a task of a paused workflow, out of the
// claim index until the workflow is resumed.
func (s *Store) holdPaused(ctx context.Context, c candidate) error {
	if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_tasks SET paused = 1 WHERE run_id = ? AND idx = ?`, c.runID, c.idx); err != nil {
		return fmt.Errorf("batutasqlite: claim: hold task %s/%s of a paused workflow: %w", c.runID, c.name, err)
	}
	return nil
}

// PausedWorkflows lists the paused workflows, sorted.
func (s *Store) PausedWorkflows(ctx context.Context) ([]string, error) {
	if s.isClosed() {
		return nil, errClosed
	}
	rows, err := s.db.QueryContext(ctx, `SELECT workflow FROM batuta_paused ORDER BY workflow`)
	if err != nil {
		return nil, s.wrapErr("paused workflows", err)
	}
	ws, err := scanStrings(rows)
	if err != nil {
		return nil, s.wrapErr("paused workflows", err)
	}
	return ws, nil
}

// ReserveRate reserves the next start slot of spec.Key by the GCRA (see
// batuta.RateSpec) in one write transaction, so callers get distinct slots,
// and keeps the key's theoretical arrival time in batuta_rates, so the
// backlog survives a restart. Keys whose TAT passed are deleted now and then
// (that changes no answer).
func (s *Store) ReserveRate(ctx context.Context, spec batuta.RateSpec, now time.Time) (time.Time, error) {
	switch {
	case spec.Limit < 1:
		return time.Time{}, fmt.Errorf("batutasqlite: rate %q: Limit %d < 1: %w", spec.Key, spec.Limit, batuta.ErrInvalidConfig)
	case spec.Per <= 0:
		return time.Time{}, fmt.Errorf("batutasqlite: rate %q: Per %v <= 0: %w", spec.Key, spec.Per, batuta.ErrInvalidConfig)
	case spec.Burst < 1:
		return time.Time{}, fmt.Errorf("batutasqlite: rate %q: Burst %d < 1: %w", spec.Key, spec.Burst, batuta.ErrInvalidConfig)
	case len(spec.Key) > maxKeyLen:
		return time.Time{}, fmt.Errorf("batutasqlite: rate key longer than %d bytes: %w", maxKeyLen, batuta.ErrInvalidConfig)
	}
	if now.IsZero() {
		now = time.Now()
	}
	t := int64(spec.Per) / int64(spec.Limit)
	if t < 1 {
		t = 1
	}
	n := now.UnixNano()
	var slot int64
	err := s.write(ctx, func(ctx context.Context) error {
		tat := n
		err := s.wconn.QueryRowContext(ctx, `SELECT tat FROM batuta_rates WHERE key = ?`, spec.Key).Scan(&tat)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("batutasqlite: rate %q: %w", spec.Key, err)
		}
		slot = max(n, tat-int64(spec.Burst-1)*t)
		next := max(tat, slot) + t
		if _, err := s.wconn.ExecContext(ctx, `INSERT INTO batuta_rates (key, tat) VALUES (?, ?)
    ON CONFLICT (key) DO UPDATE SET tat = excluded.tat`, spec.Key, next); err != nil {
			return fmt.Errorf("batutasqlite: rate %q: %w", spec.Key, err)
		}
		if s.rateWrites.Add(1)%256 == 0 {
			// Now and then, forget keys whose TAT passed: a key without
			// a row behaves exactly like one whose TAT is before now.
			if _, err := s.wconn.ExecContext(ctx, `DELETE FROM batuta_rates WHERE tat < ?`, n); err != nil {
				return fmt.Errorf("batutasqlite: rate %q: %w", spec.Key, err)
			}
		}
		return nil
	})
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(0, slot).UTC(), nil
}

// scanStrings reads a one-column result of strings and closes rows.
func scanStrings(rows *sql.Rows) ([]string, error) {
	defer func() { _ = rows.Close() }()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
