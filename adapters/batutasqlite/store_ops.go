package batutasqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/batuta-dev/batuta"
)

// Durable waits (issue 13) and run operations (issue 12), migration 0004.
//
// A waiting task (pending after OutcomeWait) holds the delayed hold of
// migration 0003 with due_at at its timer or timeout, or neverDue when it
// waits with no time limit: no claim promotes it and NextDue skips it. What
// wakes it early sets its due_at to now (a signal buffered before it began
// to wait, the end of its last child run), and the next claim promotes it,
// so a wake is one indexed UPDATE in the transaction of the change that
// causes it and survives a crash with it. A signal sent while it waits
// completes it at once (SendSignal).

// neverDue is the due_at of a task that waits with no time limit.
const neverDue = math.MaxInt64

// defaultMaxBuffered is SignalSend.MaxBuffered when it is <= 0.
const defaultMaxBuffered = 100

// maxListLimit caps RunFilter.Limit.
const maxListLimit = 10000

// nullString returns NULL for "" and s otherwise.
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// completeWait records an OutcomeWait of a claimed task (its token checked)
// inside the write transaction: the task is pending again, due at RetryAt
// or never, or at once if a signal it waits for is buffered or its child
// runs all finished while it was claimed.
func (s *Store) completeWait(ctx context.Context, c *batuta.Completion, idx int, taskKey, signal sql.NullString) (batuta.CompleteResult, error) {
	now := c.FinishedAt
	if now.IsZero() {
		now = time.Now()
	}
	due := int64(neverDue)
	if !c.RetryAt.IsZero() {
		due = c.RetryAt.UnixNano()
	}
	woken := false
	if signal.Valid {
		var buffered bool
		if err := s.wconn.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM batuta_signals
    WHERE run_id = ? AND name = ? AND seq <> ?)`, c.RunID, signal.String, c.ConsumeSignal).Scan(&buffered); err != nil {
			return batuta.CompleteResult{}, fmt.Errorf("batutasqlite: wait %s/%s: buffered signals: %w", c.RunID, c.Task, err)
		}
		woken = buffered
	}
	if !woken {
		var exist, open bool
		if err := s.wconn.QueryRowContext(ctx, `SELECT
    EXISTS (SELECT 1 FROM batuta_runs WHERE parent_run = ?1 AND parent_task = ?2),
    EXISTS (SELECT 1 FROM batuta_runs WHERE parent_run = ?1 AND parent_task = ?2 AND finished_at IS NULL)`,
			c.RunID, c.Task).Scan(&exist, &open); err != nil {
			return batuta.CompleteResult{}, fmt.Errorf("batutasqlite: wait %s/%s: child runs: %w", c.RunID, c.Task, err)
		}
		woken = exist && !open
	}
	if woken {
		due = min(due, now.UnixNano())
	}
	if _, err := s.st.waitTask.ExecContext(ctx, due, now.UnixNano(), c.WaitFor, nullString(c.Child), c.RunID, idx, c.Error); err != nil {
		return batuta.CompleteResult{}, fmt.Errorf("batutasqlite: wait %s/%s: %w", c.RunID, c.Task, err)
	}
	if taskKey.Valid {
		if err := s.releaseTaskSlot(ctx, taskKey.String); err != nil {
			return batuta.CompleteResult{}, err
		}
	}
	if c.ConsumeSignal != 0 {
		if err := s.consumeSignal(ctx, c.RunID, c.ConsumeSignal); err != nil {
			return batuta.CompleteResult{}, err
		}
	}
	if woken {
		// Workers learn of it through WorkAvailable (as from the memory
		// store); CompleteResult.Ready counts dependents made ready.
		s.wake.Store(true)
	}
	return batuta.CompleteResult{}, nil
}

// bufferedSignal returns the oldest signal named name buffered for run, or
// nil.
func (s *Store) bufferedSignal(ctx context.Context, runID, name string) (*batuta.SignalRecord, error) {
	var (
		seq, sentAt int64
		data        sql.NullString
	)
	err := s.st.oldestSignal.QueryRowContext(ctx, runID, name).Scan(&seq, &data, &sentAt)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("batutasqlite: claim: run %s: signal %q: %w", runID, name, err)
	}
	rec := &batuta.SignalRecord{Seq: seq, Name: name, SentAt: time.Unix(0, sentAt).UTC()}
	if data.Valid {
		rec.Data = json.RawMessage(data.String)
	}
	return rec, nil
}

// consumeSignal deletes the buffered signal seq of run.
func (s *Store) consumeSignal(ctx context.Context, runID string, seq int64) error {
	if _, err := s.wconn.ExecContext(ctx, `DELETE FROM batuta_signals WHERE seq = ? AND run_id = ?`, seq, runID); err != nil {
		return fmt.Errorf("batutasqlite: run %s: consume signal %d: %w", runID, seq, err)
	}
	return nil
}

// wakeParent makes the parent's task of a child run that finished at now due
// at now, if it is pending and no other child run of it is unfinished, and
// wakes claimers.
func (s *Store) wakeParent(ctx context.Context, parentRun, parentTask string, now time.Time) error {
	if now.IsZero() {
		now = time.Now()
	}
	res, err := s.st.wakeParent.ExecContext(ctx, parentRun, parentTask, now.UnixNano())
	if err != nil {
		return fmt.Errorf("batutasqlite: wake parent task %s/%s: %w", parentRun, parentTask, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("batutasqlite: wake parent task %s/%s: %w", parentRun, parentTask, err)
	} else if n > 0 {
		s.wake.Store(true)
	}
	return nil
}

// SendSignal implements batuta.Store (see batuta.SignalSend for the rules)
// in one write transaction: a waiting task of the run is completed with the
// signal's data, or the signal is kept in batuta_signals for a task of the
// run that will wait for it. Data is stored as JSON text, as outputs are.
func (s *Store) SendSignal(ctx context.Context, sig batuta.SignalSend) (batuta.SignalResult, error) {
	if sig.RunID == "" || sig.Name == "" {
		return batuta.SignalResult{}, fmt.Errorf("batutasqlite: send signal: empty run ID or signal name (%q, %q): %w", sig.RunID, sig.Name, batuta.ErrInvalidConfig)
	}
	data, err := encodeOutput(sig.Data)
	if err != nil {
		return batuta.SignalResult{}, fmt.Errorf("batutasqlite: signal %q to run %s: data: %w", sig.Name, sig.RunID, err)
	}
	maxBuf := sig.MaxBuffered
	if maxBuf <= 0 {
		maxBuf = defaultMaxBuffered
	}
	sentAt := sig.SentAt
	if sentAt.IsZero() {
		sentAt = time.Now()
	}
	var res batuta.SignalResult
	err = s.write(ctx, func(ctx context.Context) error {
		var err error
		res, err = s.sendSignal(ctx, sig, data, maxBuf, sentAt)
		return err
	})
	if err != nil {
		return batuta.SignalResult{}, err
	}
	if res.Ready > 0 {
		s.signalWork()
	}
	return res, nil
}

type signalWaiter struct {
	idx, gated       int
	name, dependents string
	pending, waiting bool
	taskKey          sql.NullString
}

func (s *Store) sendSignal(ctx context.Context, sig batuta.SignalSend, data any, maxBuf int, sentAt time.Time) (batuta.SignalResult, error) {
	var state string
	err := s.wconn.QueryRowContext(ctx, `SELECT state FROM batuta_runs WHERE id = ?`, sig.RunID).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return batuta.SignalResult{}, fmt.Errorf("batutasqlite: signal %q: run %s: %w", sig.Name, sig.RunID, batuta.ErrRunNotFound)
	}
	if err != nil {
		return batuta.SignalResult{}, fmt.Errorf("batutasqlite: signal %q to run %s: %w", sig.Name, sig.RunID, err)
	}
	if batuta.RunState(state).Finished() {
		return batuta.SignalResult{}, fmt.Errorf("batutasqlite: signal %q: run %s is %s: %w", sig.Name, sig.RunID, state, batuta.ErrNoWaiter)
	}
	rows, err := s.wconn.QueryContext(ctx, `SELECT idx, name, dependents, state = 'pending', waiting_since IS NOT NULL, gated, concurrency_key
    FROM batuta_tasks WHERE run_id = ? AND signal = ? AND state IN ('pending', 'running') ORDER BY idx`, sig.RunID, sig.Name)
	if err != nil {
		return batuta.SignalResult{}, fmt.Errorf("batutasqlite: signal %q to run %s: %w", sig.Name, sig.RunID, err)
	}
	var ws []signalWaiter
	for rows.Next() {
		var w signalWaiter
		if err := rows.Scan(&w.idx, &w.name, &w.dependents, &w.pending, &w.waiting, &w.gated, &w.taskKey); err != nil {
			_ = rows.Close()
			return batuta.SignalResult{}, fmt.Errorf("batutasqlite: signal %q to run %s: %w", sig.Name, sig.RunID, err)
		}
		ws = append(ws, w)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return batuta.SignalResult{}, fmt.Errorf("batutasqlite: signal %q to run %s: %w", sig.Name, sig.RunID, err)
	}
	if len(ws) == 0 {
		return batuta.SignalResult{}, fmt.Errorf("batutasqlite: signal %q: run %s has no unfinished task waiting for it: %w", sig.Name, sig.RunID, batuta.ErrNoWaiter)
	}
	for _, w := range ws {
		if w.pending && w.waiting {
			return s.deliverSignal(ctx, sig.RunID, w, data, sentAt)
		}
	}
	var n int
	if err := s.wconn.QueryRowContext(ctx, `SELECT count(*) FROM batuta_signals WHERE run_id = ?`, sig.RunID).Scan(&n); err != nil {
		return batuta.SignalResult{}, fmt.Errorf("batutasqlite: signal %q to run %s: %w", sig.Name, sig.RunID, err)
	}
	if n >= maxBuf {
		return batuta.SignalResult{}, fmt.Errorf("batutasqlite: signal %q: run %s holds %d unconsumed signals (max %d): %w", sig.Name, sig.RunID, n, maxBuf, batuta.ErrSignalBufferFull)
	}
	if _, err := s.wconn.ExecContext(ctx, `INSERT INTO batuta_signals (run_id, name, data, sent_at) VALUES (?, ?, ?, ?)`,
		sig.RunID, sig.Name, data, sentAt.UnixNano()); err != nil {
		return batuta.SignalResult{}, fmt.Errorf("batutasqlite: buffer signal %q for run %s: %w", sig.Name, sig.RunID, err)
	}
	return batuta.SignalResult{Task: ws[0].name}, nil
}

// deliverSignal completes the waiting task w with the signal's data: as a
// succeeded CompleteTasks would, recording no attempt.
func (s *Store) deliverSignal(ctx context.Context, runID string, w signalWaiter, data any, sentAt time.Time) (batuta.SignalResult, error) {
	if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_tasks SET state = 'succeeded', output = ?, error = '',
    delayed = 0, paused = 0, gated = 0, rate_reserved = 0, token = NULL, owner = NULL, lease_until = NULL
    WHERE run_id = ? AND idx = ?`, data, runID, w.idx); err != nil {
		return batuta.SignalResult{}, fmt.Errorf("batutasqlite: deliver signal to %s/%s: %w", runID, w.name, err)
	}
	if w.gated == 2 && w.taskKey.Valid {
		// It was parked in its task-level group: it leaves the count.
		if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_task_groups SET parked = parked - 1 WHERE key = ?`, w.taskKey.String); err != nil {
			return batuta.SignalResult{}, fmt.Errorf("batutasqlite: deliver signal to %s/%s: %w", runID, w.name, err)
		}
		if _, err := s.st.taskGroupGC.ExecContext(ctx, w.taskKey.String); err != nil {
			return batuta.SignalResult{}, fmt.Errorf("batutasqlite: deliver signal to %s/%s: %w", runID, w.name, err)
		}
	}
	res := batuta.SignalResult{Delivered: true, Task: w.name}
	var err error
	if res.Ready, err = s.countDown(ctx, runID, w.dependents, batuta.TaskSucceeded); err != nil {
		return batuta.SignalResult{}, err
	}
	if res.RunFinished, err = s.tasksDone(ctx, runID, 1, 0, "", sentAt); err != nil {
		return batuta.SignalResult{}, err
	}
	return res, nil
}

// retryTask is a task as RetryRun reads it.
type retryTask struct {
	name, state      string
	deps, dependents []int
}

// RetryRun implements batuta.Store (see batuta.RetryParams) in one write
// transaction.
func (s *Store) RetryRun(ctx context.Context, runID string, p batuta.RetryParams) (batuta.RetryResult, error) {
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	var out batuta.RetryResult
	err := s.write(ctx, func(ctx context.Context) error {
		var err error
		out, err = s.retryRun(ctx, runID, p, now)
		return err
	})
	if err != nil {
		return batuta.RetryResult{}, err
	}
	s.signalWork()
	return out, nil
}

func (s *Store) retryRun(ctx context.Context, runID string, p batuta.RetryParams, now time.Time) (batuta.RetryResult, error) {
	var (
		state             string
		created           int64
		key               sql.NullString
		concMax, strategy int
	)
	err := s.wconn.QueryRowContext(ctx, `SELECT state, created_at, concurrency_key, concurrency_max, concurrency_strategy
    FROM batuta_runs WHERE id = ?`, runID).Scan(&state, &created, &key, &concMax, &strategy)
	if errors.Is(err, sql.ErrNoRows) {
		return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry: run %s: %w", runID, batuta.ErrRunNotFound)
	}
	if err != nil {
		return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry run %s: %w", runID, err)
	}
	st := batuta.RunState(state)
	switch {
	case !st.Finished():
		return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry: run %s is %s, not finished: %w", runID, state, batuta.ErrNotRetryable)
	case st == batuta.RunSucceeded && p.From == "":
		return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry: run %s succeeded (name a task to retry from): %w", runID, batuta.ErrNotRetryable)
	}
	rows, err := s.wconn.QueryContext(ctx, `SELECT name, state, deps, dependents FROM batuta_tasks WHERE run_id = ? ORDER BY idx`, runID)
	if err != nil {
		return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry run %s: %w", runID, err)
	}
	var tasks []retryTask
	for rows.Next() {
		var (
			t          retryTask
			deps, down string
		)
		if err := rows.Scan(&t.name, &t.state, &deps, &down); err != nil {
			_ = rows.Close()
			return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry run %s: %w", runID, err)
		}
		if err := errors.Join(json.Unmarshal([]byte(deps), &t.deps), json.Unmarshal([]byte(down), &t.dependents)); err != nil {
			_ = rows.Close()
			return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry run %s: decode task %s: %w", runID, t.name, err)
		}
		tasks = append(tasks, t)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry run %s: %w", runID, err)
	}

	reset := make([]bool, len(tasks))
	var stack []int
	if p.From != "" {
		i := slices.IndexFunc(tasks, func(t retryTask) bool { return t.name == p.From })
		if i < 0 {
			return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry: run %s has no task %q: %w", runID, p.From, batuta.ErrNotRetryable)
		}
		stack = append(stack, i)
	} else {
		for i, t := range tasks {
			if batuta.TaskState(t.state).CountsAsFailure() {
				stack = append(stack, i)
			}
		}
	}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if reset[i] {
			continue
		}
		reset[i] = true
		for _, d := range tasks[i].dependents {
			if d >= 0 && d < len(tasks) && !reset[d] {
				stack = append(stack, d)
			}
		}
	}
	var out batuta.RetryResult
	failed := 0
	for i, t := range tasks {
		if reset[i] {
			out.Reset = append(out.Reset, t.name)
		} else if ts := batuta.TaskState(t.state); ts == batuta.TaskFailed || ts == batuta.TaskUpstreamFailed {
			failed++
		}
	}
	if len(out.Reset) == 0 {
		return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry: run %s (%s) has no failed, canceled or upstream_failed task to retry: %w", runID, state, batuta.ErrNotRetryable)
	}

	// The run re-enters its concurrency group as a new run would.
	adm, gated := admNone, 0
	var spec *batuta.ConcurrencySpec
	if key.Valid {
		spec = &batuta.ConcurrencySpec{Key: key.String, Max: concMax, Strategy: batuta.ConcurrencyStrategy(strategy)}
		switch spec.Strategy {
		case batuta.ConcurrencyQueue:
			adm, gated = admEligible, 1
		case batuta.ConcurrencyCancelInProgress:
			if _, err := s.cancelOldest(ctx, &batuta.NewRun{ID: runID, CreatedAt: now, Concurrency: spec}); err != nil {
				return batuta.RetryResult{}, err
			}
			adm = admAdmitted
		case batuta.ConcurrencyCancelNewest:
			admitted, err := s.groupAdmitted(ctx, spec.Key)
			if err != nil {
				return batuta.RetryResult{}, err
			}
			if admitted >= spec.Max {
				return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry run %s: %s: %w", runID, rejectReason(spec.Key, spec.Max), batuta.ErrNotRetryable)
			}
			adm = admAdmitted
		}
	}

	// Reset tasks are due as the run's first attempts were: at once.
	due := created - newTaskLead.Nanoseconds()
	for i, t := range tasks {
		if !reset[i] {
			continue
		}
		pending := 0
		seen := make(map[int]bool, len(t.deps))
		for _, d := range t.deps {
			if !seen[d] && d >= 0 && d < len(tasks) && reset[d] {
				pending++
			}
			seen[d] = true
		}
		if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_tasks SET
    state = 'pending', output = NULL, error = '', attempts_spent = 0, rescues = 0, pending_deps = ?,
    due_at = ?, delayed = 0, paused = 0, gated = ?, rate_reserved = 0,
    waiting_since = NULL, waiting_for = NULL, child = NULL,
    token = NULL, owner = NULL, lease_until = NULL
    WHERE run_id = ? AND idx = ?`, pending, due, gated, runID, i); err != nil {
			return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry run %s: reset task %s: %w", runID, t.name, err)
		}
	}
	if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_runs SET
    state = 'pending', error = '', finished_at = NULL, canceled = 0, retries = retries + 1, deadline = ?,
    unfinished_tasks = ?, failed_tasks = ?, adm = ?
    WHERE id = ?`, nanos(p.Deadline), len(out.Reset), failed, adm, runID); err != nil {
		return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry run %s: %w", runID, err)
	}
	if _, err := s.st.addActiveRuns.ExecContext(ctx, 1); err != nil {
		return batuta.RetryResult{}, fmt.Errorf("batutasqlite: count active runs: %w", err)
	}
	if adm != admNone {
		if _, err := s.st.groupJoin.ExecContext(ctx, spec.Key, spec.Max, b2i(adm == admAdmitted), b2i(adm == admEligible)); err != nil {
			return batuta.RetryResult{}, fmt.Errorf("batutasqlite: retry run %s: join concurrency group: %w", runID, err)
		}
	}
	return out, nil
}

// WorkflowStats' statements (their plans are checked by TestWorkflowStats).
const (
	// The runs finished in [?1, ?2), in batuta_runs_finished.
	statsFinishedSQL = `SELECT workflow, state, finished_at - created_at FROM batuta_runs
    WHERE finished_at >= ? AND finished_at < ?`
	// The unfinished runs by workflow and class, in batuta_runs_state.
	statsOpenSQL = `SELECT r.workflow,
    CASE
        WHEN r.state = 'pending' AND r.start_at > ?1 THEN 'waiting'
        WHEN r.state = 'pending' THEN 'pending'
        WHEN NOT EXISTS (SELECT 1 FROM batuta_tasks t WHERE t.run_id = r.id AND t.state IN ('pending', 'running')
                AND NOT (t.state = 'pending' AND (t.pending_deps > 0 OR (t.waiting_since IS NOT NULL AND t.due_at > ?1)))) THEN 'waiting'
        ELSE 'running'
    END AS class,
    count(*),
    min(CASE WHEN r.state = 'pending' AND (r.start_at IS NULL OR r.start_at <= ?1) THEN r.created_at END)
    FROM batuta_runs r WHERE r.state IN ('pending', 'running')
    GROUP BY r.workflow, class`
)

// WorkflowStats implements batuta.Store from two indexes: the runs finished
// in [since, now) through batuta_runs_finished (their durations are sorted
// here for the percentiles), the unfinished runs (pending and running)
// through batuta_runs_state.
// A running run whose every unfinished task waits after an OutcomeWait is
// counted as Waiting.
func (s *Store) WorkflowStats(ctx context.Context, since, now time.Time) ([]batuta.WorkflowStats, error) {
	if s.isClosed() {
		return nil, errClosed
	}
	if now.IsZero() {
		now = time.Now()
	}
	byWF := make(map[string]*batuta.WorkflowStats)
	get := func(wf string) *batuta.WorkflowStats {
		w := byWF[wf]
		if w == nil {
			w = &batuta.WorkflowStats{Workflow: wf}
			byWF[wf] = w
		}
		return w
	}
	durations := make(map[string][]int64)
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, statsFinishedSQL, clampNanos(since), clampNanos(now))
		if err != nil {
			return s.wrapErr("workflow stats", err)
		}
		for rows.Next() {
			var (
				wf, state string
				d         int64
			)
			if err := rows.Scan(&wf, &state, &d); err != nil {
				_ = rows.Close()
				return s.wrapErr("workflow stats", err)
			}
			w := get(wf)
			switch batuta.RunState(state) {
			case batuta.RunSucceeded:
				w.Succeeded++
			case batuta.RunFailed:
				w.Failed++
			case batuta.RunCanceled:
				w.Canceled++
			}
			durations[wf] = append(durations[wf], d)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return s.wrapErr("workflow stats", err)
		}
		// Unfinished runs: pending ones split by start time; running ones
		// count as waiting when every unfinished task of theirs waits
		// (pending after OutcomeWait, not due yet) or waits for its
		// dependencies.
		rows, err = tx.QueryContext(ctx, statsOpenSQL, clampNanos(now))
		if err != nil {
			return s.wrapErr("workflow stats", err)
		}
		for rows.Next() {
			var (
				wf, class string
				n         int
				oldest    sql.NullInt64
			)
			if err := rows.Scan(&wf, &class, &n, &oldest); err != nil {
				_ = rows.Close()
				return s.wrapErr("workflow stats", err)
			}
			w := get(wf)
			switch class {
			case "waiting":
				w.Waiting += n
			case "pending":
				w.Pending += n
			default:
				w.Running += n
			}
			if oldest.Valid {
				if t := time.Unix(0, oldest.Int64).UTC(); w.OldestPending.IsZero() || t.Before(w.OldestPending) {
					w.OldestPending = t
				}
			}
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return s.wrapErr("workflow stats", err)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	out := make([]batuta.WorkflowStats, 0, len(byWF))
	for wf, w := range byWF {
		if d := durations[wf]; len(d) > 0 {
			slices.Sort(d)
			w.DurationP50 = time.Duration(percentile(d, 50))
			w.DurationP95 = time.Duration(percentile(d, 95))
		}
		out = append(out, *w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Workflow < out[j].Workflow })
	return out, nil
}

// clampNanos returns t as unix nanoseconds, clamped to the int64 range
// (the zero time is the smallest).
func clampNanos(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// percentile returns the p-th percentile of sorted (nearest rank).
func percentile(sorted []int64, p int) int64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 * n)
	return sorted[max(rank, 1)-1]
}
