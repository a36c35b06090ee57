package batutapg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Durable waits (signals, child runs) and operations (cancel cascade,
// listing filters, retry, statistics). See migrations/0005_waits_ops.sql
// for the schema: the waiting set (tasks.hold 6), the buffered signals and
// the open-children count of a parent task (tasks.kids_open).

// opsQueries are the statements of this file.
type opsQueries struct {
	wakeParents, descendants                     string
	sigTasks, sigCount, sigInsert, sigDue        string
	retryTasks, retryTask, retryRun, retryParent string
	retryQueue, retryClaims                      string
	statsFinished, statsOpen                     string
}

// pausedExpr is true when the task t's workflow is paused.
const pausedExpr = `t.workflow = ANY((SELECT coalesce(array_agg(p.workflow), '{}') FROM {s}.paused p)::text[])`

func buildOpsQueries(schema string) opsQueries {
	s := strings.NewReplacer("{paused}", pausedExpr).Replace
	r := strings.NewReplacer("{s}", schema).Replace
	q := opsQueries{
		// The runs $1 just finished (in this transaction) count their
		// parent tasks' open children down, under the task row's lock: the
		// update that reaches 0 sees every sibling's, so exactly one wakes
		// the task (due at the finish time, to the ready set) if it is
		// pending.
		wakeParents: `
UPDATE {s}.tasks t SET
    kids_open = greatest(t.kids_open - c.n, 0),
    due_at = CASE WHEN t.kids_open - c.n <= 0 AND t.state = 'pending' AND t.pending_deps = 0 THEN c.at ELSE t.due_at END,
    hold = CASE WHEN t.kids_open - c.n <= 0 AND t.state = 'pending' AND t.pending_deps = 0 AND t.hold IN (1, 6)
        THEN CASE WHEN {paused} THEN 3 ELSE 0 END ELSE t.hold END
FROM (
    SELECT parent_id, parent_task, count(*) AS n, max(finished_at) AS at FROM {s}.runs
    WHERE id = ANY($1::uuid[]) AND parent_id IS NOT NULL AND state <> 'active'
    GROUP BY parent_id, parent_task
) c
WHERE t.run_id = c.parent_id AND t.name = c.parent_task
RETURNING t.state = 'pending' AND t.kids_open = 0 AND t.hold = 0`,
		// The unfinished descendants of a run (runs_parent), in id order.
		descendants: `
WITH RECURSIVE d(id) AS (
    SELECT id FROM {s}.runs WHERE parent_id = $1 AND state = 'active'
    UNION
    SELECT r.id FROM {s}.runs r JOIN d ON r.parent_id = d.id WHERE r.state = 'active'
)
SELECT id FROM d ORDER BY id`,
		// The unfinished tasks of a run waiting (or to wait) for a signal.
		sigTasks: `
SELECT idx, name, state = 'pending' AND waiting_since IS NOT NULL,
    tkey IS NOT NULL OR rgroup, sub
FROM {s}.tasks WHERE run_id = $1 AND signal = $2 AND state IN ('pending', 'running')
ORDER BY idx
FOR UPDATE`,
		sigCount:  `SELECT count(*) FROM {s}.signals WHERE run_id = $1`,
		sigInsert: `INSERT INTO {s}.signals (run_id, seq, name, data, sent_at) VALUES ($1, nextval('{s}.signal_seq'), $2, $3, $4)`,
		// Tasks pending after a wait for the signal: due at once.
		sigDue: `
UPDATE {s}.tasks t SET due_at = $3,
    hold = CASE WHEN t.hold IN (1, 6) THEN CASE WHEN {paused} THEN 3 ELSE 0 END ELSE t.hold END
WHERE t.run_id = $1 AND t.signal = $2 AND t.state = 'pending' AND t.pending_deps = 0 AND t.waiting_since IS NOT NULL`,
		retryTasks: `
SELECT idx, name, state, deps, dependents, cardinality(deps) FROM {s}.tasks WHERE run_id = $1 ORDER BY idx FOR UPDATE`,
		// A reopened run is pending until a task of it is claimed again:
		// claims set claimed_at (no task of a finished run is running).
		retryClaims: `UPDATE {s}.tasks SET claimed_at = NULL WHERE run_id = $1 AND claimed_at IS NOT NULL`,
		// One reset task: a fresh budget, no output, error, lease or wait;
		// due at once (to the ready set, the paused set, or the run's
		// admission queue) once its dependencies are done. Its child runs
		// (kids, Child) stay: they still exist, and a retried child task
		// that finds its child run (by its event ID) waits for it as
		// before.
		retryTask: `
UPDATE {s}.tasks t SET state = 'pending', output = NULL, error = NULL, attempt = 0, rescues = 0,
    token = NULL, owner = NULL, lease_until = NULL, claim_req = NULL, last_token = NULL, last_outcome = NULL,
    rate_reserved = false, waiting_since = NULL, waiting_for = NULL,
    pending_deps = $3, due_at = $4,
    hold = CASE WHEN $3 > 0 THEN 0 WHEN $5 THEN 2 WHEN {paused} THEN 3 ELSE 0 END
WHERE t.run_id = $1 AND t.idx = $2`,
		retryRun: `
WITH e AS (
    UPDATE {s}.run_states SET state = 'active', finished_at = NULL WHERE run_id = $1
)
UPDATE {s}.runs SET state = 'active', canceled = false, error = '', finished_at = NULL, finished_by = NULL,
    retries = retries + 1, deadline = $2, tasks_left = $3, failed_tasks = $4, reopened_at = $5,
    admit = CASE WHEN ckey IS NULL THEN 0 ELSE 1 END
WHERE id = $1
RETURNING ckey, priority, created_at, parent_id, parent_task`,
		// A reopened child run is open again for its parent task.
		retryParent: `UPDATE {s}.tasks SET kids_open = kids_open + 1 WHERE run_id = $1 AND name = $2`,
		// A reopened run of a workflow-level group queues for admission.
		retryQueue: `
WITH q AS (
    INSERT INTO {s}.run_queue (ckey, priority, created_at, run_id) VALUES ($1, $2, $3, $4)
    ON CONFLICT DO NOTHING RETURNING 1
)
UPDATE {s}.run_groups SET waiting = waiting + (SELECT count(*) FROM q) WHERE key = $1`,
		// The runs finished in [$1, $2) (run_states_finished, index only).
		statsFinished: `
SELECT workflow,
    count(*) FILTER (WHERE state = 'succeeded'),
    count(*) FILTER (WHERE state = 'failed'),
    count(*) FILTER (WHERE state = 'canceled'),
    percentile_disc(0.5) WITHIN GROUP (ORDER BY finished_at - created_at),
    percentile_disc(0.95) WITHIN GROUP (ORDER BY finished_at - created_at)
FROM {s}.run_states
WHERE finished_at >= $1 AND finished_at < $2
GROUP BY workflow`,
		// The unfinished runs (run_states_state), each read with its tasks.
		statsOpen: `
SELECT e.workflow,
    count(*) FILTER (WHERE x.started AND NOT x.waiting),
    count(*) FILTER (WHERE NOT x.started AND (r.start_at IS NULL OR r.start_at <= $1)),
    count(*) FILTER (WHERE (NOT x.started AND r.start_at > $1) OR (x.started AND x.waiting)),
    min(r.created_at) FILTER (WHERE NOT x.started AND (r.start_at IS NULL OR r.start_at <= $1))
FROM {s}.run_states e
JOIN {s}.runs r ON r.id = e.run_id
CROSS JOIN LATERAL (
    SELECT CASE WHEN r.reopened_at IS NULL THEN coalesce(bool_or(t.first_claimed_at IS NOT NULL), false)
            ELSE max(t.claimed_at) IS NOT NULL END AS started,
        coalesce(bool_or(t.state = 'pending' AND t.waiting_since IS NOT NULL AND t.hold IN (1, 6))
            AND NOT bool_or(t.state = 'running' OR (t.state = 'pending' AND t.pending_deps = 0
                AND NOT (t.waiting_since IS NOT NULL AND t.hold IN (1, 6)))), false) AS waiting
    FROM {s}.tasks t WHERE t.run_id = r.id
) x
WHERE e.state = 'active'
GROUP BY e.workflow`,
	}
	for _, p := range []*string{&q.wakeParents, &q.descendants, &q.sigTasks, &q.sigCount, &q.sigInsert, &q.sigDue,
		&q.retryTasks, &q.retryClaims, &q.retryTask, &q.retryRun, &q.retryParent, &q.retryQueue, &q.statsFinished, &q.statsOpen} {
		*p = r(s(*p))
	}
	return q
}

// inTx runs fn in a transaction configured by set (a sendHot setting),
// committing if fn returns nil.
func (s *Store) inTx(ctx context.Context, set string, fn func(pgx.Tx) error) error {
	return s.conns.with(ctx, func(c *pgx.Conn) error {
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if set != "" {
			if _, err := tx.Exec(ctx, set); err != nil {
				return err
			}
		}
		if err := fn(tx); err != nil {
			return err
		}
		return tx.Commit(ctx)
	})
}

// pipelinedTx runs fn on a connection of its own, for a transaction fn
// opens itself (a BEGIN queued in its first batch, so that opening it costs
// no round trip of its own). fn reports whether it committed; if it did
// not and returned no error, pipelinedTx commits. On error, whatever is
// open is rolled back.
func (s *Store) pipelinedTx(ctx context.Context, fn func(c *pgx.Conn) (committed bool, err error)) error {
	return s.conns.with(ctx, func(c *pgx.Conn) error {
		committed, err := fn(c)
		if err == nil && !committed {
			_, err = c.Exec(ctx, "COMMIT")
		}
		if err != nil && !c.IsClosed() && c.PgConn().TxStatus() != 'I' {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_, _ = c.Exec(rctx, "ROLLBACK")
		}
		return err
	})
}

// signalTarget is a task of a run that waits, or will wait, for a signal.
type signalTarget struct {
	idx           int16
	name          string
	waiting, flow bool
	sub           bool
}

// readSignalTargets reads SendSignal's first round trip: BEGIN, the
// transaction's settings, the run's state (pgx.ErrNoRows: no such run) and
// the tasks that wait for the signal.
func readSignalTargets(br pgx.BatchResults) (string, []signalTarget, error) {
	for range 2 { // BEGIN, the settings
		if _, err := br.Exec(); err != nil {
			return "", nil, err
		}
	}
	var st string
	var canceled bool
	if err := br.QueryRow().Scan(&st, &canceled); err != nil {
		return "", nil, err
	}
	rows, err := br.Query()
	if err != nil {
		return "", nil, err
	}
	defer rows.Close()
	var out []signalTarget
	for rows.Next() {
		var t signalTarget
		if err := rows.Scan(&t.idx, &t.name, &t.waiting, &t.flow, &t.sub); err != nil {
			return "", nil, err
		}
		out = append(out, t)
	}
	return st, out, rows.Err()
}

// wakeParents counts the parent tasks of the runs ids, finished in tx, down
// and reports whether it woke one (work for any instance).
// tx is a pgx.Tx, or a connection with a transaction open on it
// (pipelinedTx).
func (s *Store) wakeParents(ctx context.Context, tx querier, ids []string) (bool, error) {
	if len(ids) == 0 {
		return false, nil
	}
	rows, err := tx.Query(ctx, s.oq.wakeParents, ids)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	wake := false
	for rows.Next() {
		var w bool
		if err := rows.Scan(&w); err != nil {
			return false, err
		}
		wake = wake || w
	}
	return wake, rows.Err()
}

// cancelTx cancels the run id in tx, and its unfinished descendants (child
// runs, recursively), counting down the parent tasks of the runs it
// finishes. It reports whether the run was unfinished, the runs it
// finished, and whether a parent task was woken. pgx.ErrNoRows: no such
// run.
func (s *Store) cancelTx(ctx context.Context, tx pgx.Tx, id [16]byte, reason string, now time.Time) (bool, []string, bool, error) {
	var st string
	var canceled bool
	if err := tx.QueryRow(ctx, s.q.cancelLock, id).Scan(&st, &canceled); err != nil {
		return false, nil, false, err
	}
	ids := [][16]byte{id}
	if st == "active" && !canceled {
		rows, err := tx.Query(ctx, s.oq.descendants, id)
		if err != nil {
			return false, nil, false, err
		}
		var kids [][16]byte
		for rows.Next() {
			var u [16]byte
			if err := rows.Scan(&u); err != nil {
				rows.Close()
				return false, nil, false, err
			}
			kids = append(kids, u)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return false, nil, false, err
		}
		if len(kids) > 0 {
			// Every run row first, in id order (as completions lock
			// them), then their tasks.
			if _, err := tx.Exec(ctx, s.q.lockRuns, kids); err != nil {
				return false, nil, false, err
			}
			ids = append(ids, kids...)
		}
	}
	changed := false
	var finished []string
	for i, r := range ids {
		var n int64
		var state string
		if err := tx.QueryRow(ctx, s.q.cancel, r, reason, now).Scan(&n, &state); err != nil {
			return false, nil, false, err
		}
		if i == 0 {
			changed = n > 0
		}
		if state == string(batuta.RunCanceled) {
			finished = append(finished, formatUUID(r))
		}
	}
	wake, err := s.wakeParents(ctx, tx, finished)
	if err != nil {
		return false, nil, false, err
	}
	return changed, finished, wake, nil
}

// decodeSignal reads the [seq, sent_at, data, name] array of a claim.
func decodeSignal(b []byte) (*batuta.SignalRecord, error) {
	var row [4]json.RawMessage
	if err := json.Unmarshal(b, &row); err != nil {
		return nil, fmt.Errorf("decode signal: %w", err)
	}
	sr := &batuta.SignalRecord{Data: rawOutput(row[2])}
	if err := errors.Join(json.Unmarshal(row[0], &sr.Seq), unmarshalTime(row[1], &sr.SentAt), json.Unmarshal(row[3], &sr.Name)); err != nil {
		return nil, fmt.Errorf("decode signal: %w", err)
	}
	return sr, nil
}

// SendSignal implements batuta.Store, in one transaction that locks the
// run row first (as completions of a task waiting for a signal do, so a
// signal buffered while the task is claimed is seen by its OutcomeWait).
// Delivery runs the completion statement, so dependents are counted down,
// the run may finish and its parent task may be woken exactly as for a
// task completed by its worker. Data is stored as JSON text (a
// json.RawMessage, or a value encoded with encoding/json).
func (s *Store) SendSignal(ctx context.Context, sig batuta.SignalSend) (batuta.SignalResult, error) {
	id, ok := parseUUID(sig.RunID)
	if !ok {
		return batuta.SignalResult{}, fmt.Errorf("batutapg: signal %q to run %s: %w", sig.Name, sig.RunID, batuta.ErrRunNotFound)
	}
	if err := checkText("signal name", sig.Name); err != nil {
		return batuta.SignalResult{}, err
	}
	data, err := encodeOutput(sig.Data, "signal "+sig.Name)
	if err != nil {
		return batuta.SignalResult{}, err
	}
	maxBuf := sig.MaxBuffered
	if maxBuf <= 0 {
		maxBuf = 100
	}
	sentAt := sig.SentAt
	if sentAt.IsZero() {
		sentAt = time.Now()
	}
	var res batuta.SignalResult
	var wake bool
	var finished []string
	var fc *fusedClaim
	if sig.Claim != nil && sig.Claim.Limit > 0 {
		if fc, err = s.newFusedClaim(ctx, []batuta.ClaimParams{*sig.Claim}); err != nil {
			s.log.Debug("batutapg: signaling without a claim", "schema", s.cfg.Schema, "error", err)
			fc = nil
		}
	}
	claimed, sent := false, false
	err = withRetry(ctx, func() error {
		res, wake, finished, claimed, sent = batuta.SignalResult{}, false, nil, false, false
		if fc != nil {
			fc.reset()
		}
		err := s.pipelinedTx(ctx, func(c *pgx.Conn) (bool, error) {
			// First round trip: open the transaction, lock the run, read
			// the tasks that wait (or will wait) for the signal.
			b := &pgx.Batch{}
			b.Queue("BEGIN")
			b.Queue(setGeneric) // the hot transactions' plans (see sendHot)
			b.Queue(s.q.cancelLock, id)
			b.Queue(s.oq.sigTasks, id, sig.Name)
			br := c.SendBatch(ctx, b)
			st, cands, err := readSignalTargets(br)
			if cerr := br.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return false, err
			}
			if st != "active" || sig.Name == "" || len(cands) == 0 {
				return false, batuta.ErrNoWaiter
			}
			for _, t := range cands {
				if !t.waiting {
					continue
				}
				// Deliver: complete the waiting task with the data.
				tok := int64(t.idx)
				if t.flow {
					tok |= tokenFlowBit
				}
				if t.sub {
					tok |= tokenChildBit
				}
				in := newCompInput(1)
				comp := batuta.Completion{ClaimRef: batuta.ClaimRef{RunID: sig.RunID, Task: t.name, Token: tok},
					Outcome: outcomeSignal, Output: json.RawMessage(data), FinishedAt: sentAt}
				if data == nil {
					comp.Output = nil
				}
				if err := in.add(&comp, time.Time{}); err != nil {
					return false, err
				}
				// Second round trip: the completion and, unless a
				// parent run must be counted down first, the claims
				// asked for and the commit.
				b := &pgx.Batch{}
				locked := s.queueCompletion(b, in, 0, sentAt)
				withClaim := fc != nil && !t.sub
				if withClaim {
					s.queueClaims(b, fc.groups, fc.pl)
				}
				if !t.sub {
					b.Queue("COMMIT")
				}
				sent = withClaim
				br := c.SendBatch(ctx, b)
				out, w, slots, err := s.readCompletionWake(br, 1, locked)
				if err == nil && withClaim {
					err = fc.pl.read(br, fc.groups, fc.ps, fc.out)
				}
				if err == nil && !t.sub {
					_, err = br.Exec()
				}
				if cerr := br.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return false, err
				}
				if !out[0].applied {
					return false, fmt.Errorf("waiting task %s not completed", t.name)
				}
				finished = finishedRuns(in.runs, out)
				res = batuta.SignalResult{Delivered: true, Task: t.name, Ready: out[0].ready, RunFinished: out[0].finished}
				if t.sub {
					pw, err := s.wakeParents(ctx, c, finished)
					if err != nil {
						return false, err
					}
					wake = w || slots || pw
					return false, nil
				}
				wake = w || slots
				claimed = withClaim
				if withClaim && !t.flow && !slots && fc.tookReady(in, out) {
					// The claim took what the delivery made ready. (A
					// signal's completion always runs the full statement,
					// so in.full() cannot tell flow work apart here: the
					// waiting task's own flag does.)
					wake = false
				}
				return true, nil
			}
			// Buffer it for the first task that will wait for it.
			var n int64
			if err := c.QueryRow(ctx, s.oq.sigCount, id).Scan(&n); err != nil {
				return false, err
			}
			if n >= int64(maxBuf) {
				return false, batuta.ErrSignalBufferFull
			}
			if _, err := c.Exec(ctx, s.oq.sigInsert, id, sig.Name, data, sentAt); err != nil {
				return false, err
			}
			tag, err := c.Exec(ctx, s.oq.sigDue, id, sig.Name, sentAt)
			if err != nil {
				return false, err
			}
			wake = tag.RowsAffected() > 0
			res = batuta.SignalResult{Task: cands[0].name}
			return false, nil
		})
		if err != nil && sent && !retryable(err) {
			// The transaction may have committed with its reply lost:
			// release whatever its claims took.
			s.lostClaims(fc.pl.reqs)
		}
		return err
	})
	if err == nil && claimed {
		s.claimHints(fc.pl, fc.ps, fc.out)
		res.Claims = fc.out[0]
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return batuta.SignalResult{}, fmt.Errorf("batutapg: signal %q to run %s: %w", sig.Name, sig.RunID, batuta.ErrRunNotFound)
	case errors.Is(err, batuta.ErrNoWaiter), errors.Is(err, batuta.ErrSignalBufferFull):
		return batuta.SignalResult{}, fmt.Errorf("batutapg: signal %q to run %s: %w", sig.Name, sig.RunID, err)
	case err != nil:
		return batuta.SignalResult{}, fmt.Errorf("batutapg: signal %q to run %s: %w", sig.Name, sig.RunID, err)
	}
	if len(finished) > 0 {
		s.active.add(-len(finished))
		s.runsFinished(finished)
	}
	if wake {
		s.workAppeared()
	}
	return res, nil
}

// RetryRun implements batuta.Store, in one transaction holding the run
// row. A run of a workflow-level concurrency group queues for admission
// again, as a ConcurrencyQueue run would (whatever its strategy: the store
// does not keep it).
func (s *Store) RetryRun(ctx context.Context, runID string, p batuta.RetryParams) (batuta.RetryResult, error) {
	id, ok := parseUUID(runID)
	if !ok {
		return batuta.RetryResult{}, fmt.Errorf("batutapg: retry run %s: %w", runID, batuta.ErrRunNotFound)
	}
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	var res batuta.RetryResult
	var queued bool
	err := withRetry(ctx, func() error {
		res, queued = batuta.RetryResult{}, false
		return s.inTx(ctx, "", func(tx pgx.Tx) error {
			var st string
			var canceled bool
			if err := tx.QueryRow(ctx, s.q.cancelLock, id).Scan(&st, &canceled); err != nil {
				return err
			}
			switch {
			case st == "active":
				return fmt.Errorf("%w: it is unfinished", batuta.ErrNotRetryable)
			case st == string(batuta.RunSucceeded) && p.From == "":
				return fmt.Errorf("%w: it succeeded (name a task to retry from)", batuta.ErrNotRetryable)
			}
			type task struct {
				idx              int16
				name, state      string
				deps, dependents []int16
			}
			var tasks []task
			rows, err := tx.Query(ctx, s.oq.retryTasks, id)
			if err != nil {
				return err
			}
			for rows.Next() {
				var t task
				var nd int32
				if err := rows.Scan(&t.idx, &t.name, &t.state, &t.deps, &t.dependents, &nd); err != nil {
					rows.Close()
					return err
				}
				tasks = append(tasks, t)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			reset := make([]bool, len(tasks))
			var stack []int
			for i, t := range tasks {
				if int(t.idx) != i {
					return fmt.Errorf("run %s: task index %d at position %d", runID, t.idx, i)
				}
				seed := batuta.TaskState(t.state).CountsAsFailure()
				if p.From != "" {
					seed = t.name == p.From
				}
				if seed {
					reset[i] = true
					stack = append(stack, i)
				}
			}
			if p.From != "" && len(stack) == 0 {
				return fmt.Errorf("%w: it has no task %q", batuta.ErrNotRetryable, p.From)
			}
			if len(stack) == 0 {
				return fmt.Errorf("%w: no task of it failed or was canceled", batuta.ErrNotRetryable)
			}
			for len(stack) > 0 {
				i := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				for _, d := range tasks[i].dependents {
					if !reset[d] {
						reset[d] = true
						stack = append(stack, int(d))
					}
				}
			}
			var ckey pgtype.Text
			var prio int32
			var created time.Time
			var parentID pgtype.UUID
			var parentTask pgtype.Text
			left, failed := 0, 0
			for i, t := range tasks {
				if reset[i] {
					left++
				} else if t.state == string(batuta.TaskFailed) || t.state == string(batuta.TaskUpstreamFailed) {
					failed++
				}
			}
			err = tx.QueryRow(ctx, s.oq.retryRun, id, ts(p.Deadline), left, failed, now).Scan(&ckey, &prio, &created, &parentID, &parentTask)
			if err != nil {
				return err
			}
			queued = ckey.Valid
			if _, err := tx.Exec(ctx, s.oq.retryClaims, id); err != nil {
				return err
			}
			for i, t := range tasks {
				if !reset[i] {
					continue
				}
				n := 0
				for _, d := range t.deps {
					if reset[d] {
						n++
					}
				}
				if _, err := tx.Exec(ctx, s.oq.retryTask, id, t.idx, n, now, queued); err != nil {
					return err
				}
				res.Reset = append(res.Reset, t.name)
			}
			if queued {
				if _, err := tx.Exec(ctx, s.oq.retryQueue, ckey.String, prio, created, id); err != nil {
					return err
				}
			}
			if parentID.Valid {
				if _, err := tx.Exec(ctx, s.oq.retryParent, parentID, parentTask.String); err != nil {
					return err
				}
			}
			return nil
		})
	})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return batuta.RetryResult{}, fmt.Errorf("batutapg: retry run %s: %w", runID, batuta.ErrRunNotFound)
	case err != nil:
		return batuta.RetryResult{}, fmt.Errorf("batutapg: retry run %s: %w", runID, err)
	}
	s.active.add(1)
	if queued {
		s.flowCreated.Store(true)
		s.flowWork.Store(true)
	}
	s.workAppeared()
	return res, nil
}

// WorkflowStats implements batuta.Store: the finished runs from the
// run_states_finished index (index only), the unfinished ones from
// run_states_state, each with its tasks.
func (s *Store) WorkflowStats(ctx context.Context, since, now time.Time) ([]batuta.WorkflowStats, error) {
	by := map[string]*batuta.WorkflowStats{}
	get := func(wf string) *batuta.WorkflowStats {
		w := by[wf]
		if w == nil {
			w = &batuta.WorkflowStats{Workflow: wf}
			by[wf] = w
		}
		return w
	}
	err := s.query(ctx, s.oq.statsFinished, []any{since, now}, func(rows pgx.Rows) error {
		var wf string
		var ok, bad, canc int64
		var p50, p95 pgtype.Interval
		if err := rows.Scan(&wf, &ok, &bad, &canc, &p50, &p95); err != nil {
			return err
		}
		w := get(wf)
		w.Succeeded, w.Failed, w.Canceled = int(ok), int(bad), int(canc)
		w.DurationP50, w.DurationP95 = intervalDuration(p50), intervalDuration(p95)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("batutapg: workflow stats: %w", err)
	}
	err = s.query(ctx, s.oq.statsOpen, []any{now}, func(rows pgx.Rows) error {
		var wf string
		var running, pending, waiting int64
		var oldest pgtype.Timestamptz
		if err := rows.Scan(&wf, &running, &pending, &waiting, &oldest); err != nil {
			return err
		}
		w := get(wf)
		w.Running, w.Pending, w.Waiting, w.OldestPending = int(running), int(pending), int(waiting), oldest.Time
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("batutapg: workflow stats: %w", err)
	}
	out := make([]batuta.WorkflowStats, 0, len(by))
	for _, w := range by {
		out = append(out, *w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Workflow < out[j].Workflow })
	return out, nil
}

// intervalDuration converts a PostgreSQL interval of runs (no months) to a
// duration.
func intervalDuration(iv pgtype.Interval) time.Duration {
	if !iv.Valid {
		return 0
	}
	return time.Duration(iv.Microseconds)*time.Microsecond + time.Duration(iv.Days)*24*time.Hour
}

// liveExpr is true when the run r is running (a task was claimed since it
// was last reopened), as runSelect's x.live; {s} is the schema.
const liveExpr = `(CASE WHEN r.reopened_at IS NULL
        THEN EXISTS (SELECT 1 FROM {s}.tasks t WHERE t.run_id = r.id AND t.first_claimed_at IS NOT NULL)
        ELSE EXISTS (SELECT 1 FROM {s}.tasks t WHERE t.run_id = r.id AND t.claimed_at IS NOT NULL) END)`

// maxListLimit caps RunFilter.Limit.
const maxListLimit = 10000

// listRunsQuery builds the ListRuns statement for f: the filters on run
// columns are index conditions (runs_workflow, run_states_state, runs_parent,
// runs_subject, runs_event, runs_created_at) and the page walks the
// chosen index, or the primary key, in ID order from the cursor, so no
// page scans the runs before it. It reports ok=false when f matches
// nothing (contradictory states, a malformed parent ID).
func listRunsQuery(schema, base string, f batuta.RunFilter) (string, []any, bool, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, maxListLimit)
	live := strings.ReplaceAll(liveExpr, "{s}", schema)
	// idCol is the run ID of the relation the page walks: runs, or
	// run_states when the states are read there.
	from, idCol := schema+".runs r", "r.id"
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.Workflow != "" {
		where = append(where, "r.workflow = "+arg(cleanText(f.Workflow)))
	}
	states := f.States
	if f.State != "" {
		if len(states) > 0 && !containsState(states, f.State) {
			return "", nil, false, nil
		}
		states = []batuta.RunState{f.State}
	}
	if len(states) > 0 {
		var finals []string
		pending, running := false, false
		for _, st := range states {
			switch st {
			case batuta.RunPending:
				pending = true
			case batuta.RunRunning:
				running = true
			case batuta.RunSucceeded, batuta.RunFailed, batuta.RunCanceled:
				finals = append(finals, string(st))
			default:
				return "", nil, false, fmt.Errorf("batutapg: list runs: %w: unknown run state %q", batuta.ErrInvalidPayload, st)
			}
		}
		// The states are literals (each one of the three names above), so
		// the planner can prove the partial index run_states_state
		// applies. Without succeeded (the dense state, which that index
		// leaves out), the page walks run_states_state in ID order and
		// reads runs for the other filters; with it, runs.state (the
		// same value) is a filter on the walk of runs.
		st := "r.state"
		if !containsState(states, batuta.RunSucceeded) {
			st, idCol = "e.state", "e.run_id"
			from += " JOIN " + schema + ".run_states e ON e.run_id = r.id"
		}
		var or []string
		switch {
		case len(finals) == 1:
			or = append(or, st+" = '"+finals[0]+"'")
		case len(finals) > 1:
			or = append(or, st+" IN ('"+strings.Join(finals, "', '")+"')")
		}
		switch {
		case pending && running:
			or = append(or, st+" = 'active'")
		case pending:
			or = append(or, "("+st+" = 'active' AND NOT "+live+")")
		case running:
			or = append(or, "("+st+" = 'active' AND "+live+")")
		}
		where = append(where, "("+strings.Join(or, " OR ")+")")
	}
	if f.EventID != "" {
		where = append(where, "r.event_id = "+arg(cleanText(f.EventID)))
	}
	if f.Subject != "" {
		where = append(where, "r.event->>'subject' = "+arg(cleanText(f.Subject)))
	}
	if !f.CreatedAfter.IsZero() {
		where = append(where, "r.created_at >= "+arg(f.CreatedAfter))
	}
	if !f.CreatedBefore.IsZero() {
		where = append(where, "r.created_at < "+arg(f.CreatedBefore))
	}
	if f.ErrorContains != "" {
		esc := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(cleanText(f.ErrorContains))
		where = append(where, "r.error ILIKE "+arg("%"+esc+"%"))
	}
	if f.Parent != "" {
		pid, ok := parseUUID(f.Parent)
		if !ok {
			return "", nil, false, nil
		}
		where = append(where, "r.parent_id = "+arg(pid))
	}
	if f.ParentTask != "" {
		where = append(where, "r.parent_task = "+arg(cleanText(f.ParentTask)))
	}
	order := "DESC"
	cmp := "<"
	if f.Ascending {
		order, cmp = "ASC", ">"
	}
	if f.After != "" {
		after, ok := parseUUID(f.After)
		if !ok {
			return "", nil, false, fmt.Errorf("batutapg: list runs: %w: cursor %q is not a run ID", batuta.ErrInvalidPayload, f.After)
		}
		where = append(where, idCol+" "+cmp+" "+arg(after))
	}
	// The page is chosen first, from runs (and run_states) alone; the
	// snapshots (each with its tasks) are read for its rows only.
	page := "SELECT r.id FROM " + from
	if len(where) > 0 {
		page += "\n    WHERE " + strings.Join(where, " AND ")
	}
	key := idCol
	if !f.CreatedAfter.IsZero() && !f.CreatedBefore.IsZero() {
		// A bounded creation range: read it from runs_created_at and
		// sort it (the same order: a UUID's text compares as its bytes),
		// rather than walk the primary key from one end to the range,
		// which the planner's LIMIT estimate would prefer.
		key = `(r.id::text COLLATE "C")`
	}
	page += "\n    ORDER BY " + key + " " + order + " LIMIT " + arg(limit)
	sql := base + "\nWHERE r.id IN (\n    " + page + "\n)\nORDER BY r.id " + order
	return sql, args, true, nil
}

func containsState(xs []batuta.RunState, s batuta.RunState) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
