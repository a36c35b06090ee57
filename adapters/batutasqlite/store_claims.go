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

// rescueBatch bounds the tasks one RescueExpired transaction handles.
const rescueBatch = 500

// ClaimTasks leases up to p.Limit ready tasks of p.Workflows (of every
// workflow if empty) to p.Owner in one transaction: each becomes running
// with a fresh token (unique in the database) and its run becomes running.
//
// Ready tasks are taken in due order. A task's first attempt is due one
// minute before its run's CreatedAt (so at once, and in run-creation order,
// even for a claimer whose clock lags a little); retries and snoozes are
// due at their RetryAt, so a retry is not starved by a stream of new runs.
// A zero p.Now means the wall clock's now. With a Limit <= 0 it claims
// nothing.
func (s *Store) ClaimTasks(ctx context.Context, p batuta.ClaimParams) ([]batuta.Claim, error) {
	if p.Limit <= 0 {
		return nil, nil
	}
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	var wfs any // NULL: every workflow
	if len(p.Workflows) > 0 {
		b, err := json.Marshal(p.Workflows)
		if err != nil {
			return nil, fmt.Errorf("batutasqlite: claim: %w", err)
		}
		wfs = string(b)
	}
	var claims []batuta.Claim
	err := s.write(ctx, func(ctx context.Context) error {
		var err error
		claims, err = s.claim(ctx, p, now, wfs)
		return err
	})
	if err != nil {
		return nil, err
	}
	return claims, nil
}

type candidate struct {
	runID, name, deps, workflow, event string
	idx, spent, rescues, taskMax       int
	rateReserved                       bool
	taskKey, signal                    sql.NullString
	deadline, waitingSince             sql.NullInt64
}

// claim runs inside the write transaction: it clears the delayed hold of
// tasks that came due, admits waiting runs into groups with room, then
// leases tasks from the claim index. A task of a paused workflow is held
// (out of the claim index until the resume); a task of a task-level group
// takes a slot of it first, and if the group is full the task is parked
// (out of the claim index until a slot frees). Either way the index is read
// again for the rest, so such a backlog is read once, not at every claim.
func (s *Store) claim(ctx context.Context, p batuta.ClaimParams, now time.Time, wfs any) ([]batuta.Claim, error) {
	var due, admissible, anyPaused bool
	if err := s.st.flowProbe.QueryRowContext(ctx, now.UnixNano()).Scan(&due, &admissible, &anyPaused); err != nil {
		return nil, fmt.Errorf("batutasqlite: claim: %w", err)
	}
	var paused map[string]bool
	if anyPaused {
		var err error
		if paused, err = s.pausedSet(ctx); err != nil {
			return nil, err
		}
	}
	if due {
		if err := s.promoteDue(ctx, now.UnixNano()); err != nil {
			return nil, err
		}
		admissible = true // a promoted run may have become eligible
	}
	if admissible {
		if err := s.admit(ctx, p.Limit); err != nil {
			return nil, err
		}
	}
	var claims []batuta.Claim
	events := make(map[string]batuta.Event)
	parks := 0
	for len(claims) < p.Limit && parks < maxParks {
		want := p.Limit - len(claims)
		if parks > 0 {
			want = max(want, 64) // a full group's backlog: read on in larger steps
		}
		cands, err := s.candidates(ctx, now, wfs, want)
		if err != nil {
			return nil, err
		}
		took := cands[:0]
		for _, c := range cands {
			if len(claims)+len(took) == p.Limit || parks == maxParks {
				break // read ahead past held tasks, or held enough: the rest stays
			}
			if paused[c.workflow] {
				if err := s.holdPaused(ctx, c); err != nil {
					return nil, err
				}
				parks++
				continue
			}
			if c.taskKey.Valid {
				var running int
				err := s.st.taskSlot.QueryRowContext(ctx, c.taskKey.String, c.taskMax).Scan(&running)
				if errors.Is(err, sql.ErrNoRows) {
					if err := s.parkTask(ctx, c); err != nil {
						return nil, err
					}
					parks++
					continue
				}
				if err != nil {
					return nil, fmt.Errorf("batutasqlite: claim: task concurrency group %q: %w", c.taskKey.String, err)
				}
			}
			took = append(took, c)
		}
		if len(took) > 0 {
			if claims == nil {
				claims = make([]batuta.Claim, 0, len(took))
			}
			if claims, err = s.lease(ctx, p, now, took, events, claims); err != nil {
				return nil, err
			}
		}
		if len(cands) < want || len(took) == len(cands) {
			break // the index has nothing more, or every candidate was taken
		}
	}
	if parks >= maxParks {
		s.wake.Store(true) // stopped parking early: claim again at once
	}
	return claims, nil
}

// candidates reads up to n tasks from the claim index.
func (s *Store) candidates(ctx context.Context, now time.Time, wfs any, n int) ([]candidate, error) {
	rows, err := s.st.claimReady.QueryContext(ctx, now.UnixNano(), wfs, n)
	if err != nil {
		return nil, fmt.Errorf("batutasqlite: claim: %w", err)
	}
	var cands []candidate
	for rows.Next() {
		var c candidate
		if err := rows.Scan(&c.runID, &c.idx, &c.name, &c.deps, &c.spent, &c.rescues,
			&c.rateReserved, &c.taskKey, &c.taskMax, &c.signal, &c.waitingSince, &c.workflow, &c.event, &c.deadline); err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("batutasqlite: claim: %w", err)
		}
		cands = append(cands, c)
	}
	if err := rows.Close(); err != nil {
		return nil, fmt.Errorf("batutasqlite: claim: %w", err)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("batutasqlite: claim: %w", err)
	}
	return cands, nil
}

// lease marks cands running with fresh tokens and appends their claims.
func (s *Store) lease(ctx context.Context, p batuta.ClaimParams, now time.Time, cands []candidate,
	events map[string]batuta.Event, claims []batuta.Claim) ([]batuta.Claim, error) {
	var last int64
	if err := s.st.nextTokens.QueryRowContext(ctx, len(cands)).Scan(&last); err != nil {
		return nil, fmt.Errorf("batutasqlite: claim: lease tokens: %w", err)
	}
	first := last - int64(len(cands)) + 1
	leaseUntil := nanos(p.LeaseUntil)
	for i, c := range cands {
		token := first + int64(i)
		if _, err := s.st.claimTask.ExecContext(ctx, token, p.Owner, leaseUntil, c.runID, c.idx); err != nil {
			return nil, fmt.Errorf("batutasqlite: claim task %s/%s: %w", c.runID, c.name, err)
		}
		ev, seen := events[c.runID]
		if !seen {
			if _, err := s.st.startRun.ExecContext(ctx, now.UnixNano(), c.runID); err != nil {
				return nil, fmt.Errorf("batutasqlite: start run %s: %w", c.runID, err)
			}
			if err := json.Unmarshal([]byte(c.event), &ev); err != nil {
				return nil, fmt.Errorf("batutasqlite: run %s: decode event: %w", c.runID, err)
			}
			events[c.runID] = ev
		}
		up, err := s.upstream(ctx, c.runID, c.deps)
		if err != nil {
			return nil, err
		}
		var sig *batuta.SignalRecord
		if c.signal.Valid {
			if sig, err = s.bufferedSignal(ctx, c.runID, c.signal.String); err != nil {
				return nil, err
			}
		}
		claims = append(claims, batuta.Claim{
			RunID:        c.runID,
			Workflow:     c.workflow,
			Task:         c.name,
			Attempt:      c.spent + 1,
			Rescues:      c.rescues,
			Token:        token,
			Event:        ev,
			RunDeadline:  fromNanos(c.deadline),
			Upstream:     up,
			RateReserved: c.rateReserved,
			WaitingSince: fromNanos(c.waitingSince),
			Signal:       sig,
		})
	}
	return claims, nil
}

// upstream loads the results of the dependencies listed in deps (a JSON
// array of task indexes), in that order.
func (s *Store) upstream(ctx context.Context, runID, deps string) ([]batuta.UpstreamResult, error) {
	if deps == "[]" || deps == "" {
		return nil, nil
	}
	var order []int
	if err := json.Unmarshal([]byte(deps), &order); err != nil {
		return nil, fmt.Errorf("batutasqlite: run %s: decode deps: %w", runID, err)
	}
	rows, err := s.st.upstream.QueryContext(ctx, runID, deps)
	if err != nil {
		return nil, fmt.Errorf("batutasqlite: run %s: upstream: %w", runID, err)
	}
	defer func() { _ = rows.Close() }()
	byIdx := make(map[int]batuta.UpstreamResult, len(order))
	for rows.Next() {
		var (
			idx                int
			name, state, errTx string
			output             sql.NullString
		)
		if err := rows.Scan(&idx, &name, &state, &output, &errTx); err != nil {
			return nil, fmt.Errorf("batutasqlite: run %s: upstream: %w", runID, err)
		}
		u := batuta.UpstreamResult{Name: name, State: batuta.TaskState(state), Error: errTx}
		if output.Valid {
			u.Output = json.RawMessage(output.String)
		}
		byIdx[idx] = u
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("batutasqlite: run %s: upstream: %w", runID, err)
	}
	up := make([]batuta.UpstreamResult, len(order))
	for i, k := range order {
		up[i] = byIdx[k]
	}
	return up, nil
}

// ExtendLeases moves the lease expiry of each claim still held to until, in
// one transaction, and reports for each whether it is held, lost, or held
// on a canceled run.
func (s *Store) ExtendLeases(ctx context.Context, refs []batuta.ClaimRef, until time.Time) ([]batuta.LeaseStatus, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	out := make([]batuta.LeaseStatus, len(refs))
	err := s.write(ctx, func(ctx context.Context) error {
		for i, r := range refs {
			res, err := s.st.extendLease.ExecContext(ctx, nanos(until), r.RunID, r.Task, r.Token)
			if err != nil {
				return fmt.Errorf("batutasqlite: extend lease %s/%s: %w", r.RunID, r.Task, err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return fmt.Errorf("batutasqlite: extend lease %s/%s: %w", r.RunID, r.Task, err)
			}
			if n == 0 {
				out[i] = batuta.LeaseLost
				continue
			}
			var canceled bool
			if err := s.st.runCanceled.QueryRowContext(ctx, r.RunID).Scan(&canceled); err != nil {
				return fmt.Errorf("batutasqlite: extend lease %s/%s: %w", r.RunID, r.Task, err)
			}
			out[i] = batuta.LeaseHeld
			if canceled {
				out[i] = batuta.LeaseCanceled
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// CompleteTasks records the outcomes of claimed tasks, all in one
// transaction. Each completion is fenced by its token: a stale one gets
// batuta.ErrLeaseLost in its result and writes nothing. Outputs are stored as
// JSON text: a json.RawMessage as is, any other value through json.Marshal;
// they are returned as json.RawMessage. The returned error is for the batch
// (nothing was written); per-item errors are in the results.
func (s *Store) CompleteTasks(ctx context.Context, cs []batuta.Completion) ([]batuta.CompleteResult, error) {
	if len(cs) == 0 {
		return nil, nil
	}
	results := make([]batuta.CompleteResult, len(cs))
	var ready bool
	err := s.write(ctx, func(ctx context.Context) error {
		ready = false
		for i := range cs {
			r, err := s.complete(ctx, &cs[i])
			if err != nil {
				return err
			}
			results[i] = r
			if r.Ready > 0 || (r.Err == nil && cs[i].Outcome == batuta.OutcomeRelease) {
				ready = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if ready {
		s.signalWork()
	}
	return results, nil
}

// complete records one completion inside the write transaction. It returns
// an error only for failures that must abort the transaction.
func (s *Store) complete(ctx context.Context, c *batuta.Completion) (batuta.CompleteResult, error) {
	var (
		idx, spent        int
		state, dependents string
		token             sql.NullInt64
		taskKey, signal   sql.NullString
		canceled          bool
	)
	err := s.st.claimedTask.QueryRowContext(ctx, c.RunID, c.Task).Scan(&idx, &state, &token, &dependents, &spent, &taskKey, &signal, &canceled)
	if errors.Is(err, sql.ErrNoRows) {
		return batuta.CompleteResult{Err: fmt.Errorf("batutasqlite: task %s/%s does not exist: %w", c.RunID, c.Task, batuta.ErrLeaseLost)}, nil
	}
	if err != nil {
		return batuta.CompleteResult{}, fmt.Errorf("batutasqlite: complete %s/%s: %w", c.RunID, c.Task, err)
	}
	if state != string(batuta.TaskRunning) || !token.Valid || token.Int64 != c.Token {
		return batuta.CompleteResult{Err: fmt.Errorf("batutasqlite: task %s/%s: token %d: %w", c.RunID, c.Task, c.Token, batuta.ErrLeaseLost)}, nil
	}

	var (
		next     batuta.TaskState
		output   any // NULL
		errText  = c.Error
		due      any // NULL: unchanged
		record   bool
		reserved bool
	)
	switch c.Outcome {
	case batuta.OutcomeSucceeded:
		next, spent, record, errText = batuta.TaskSucceeded, c.Attempt, true, ""
		out, err := encodeOutput(c.Output)
		if err != nil {
			return batuta.CompleteResult{Err: fmt.Errorf("batutasqlite: output of task %s/%s: %w", c.RunID, c.Task, err)}, nil
		}
		output = out
	case batuta.OutcomeFailed:
		next, spent, record = batuta.TaskFailed, c.Attempt, true
	case batuta.OutcomeRetry:
		next, spent, record, due = batuta.TaskPending, c.Attempt, true, nanos(c.RetryAt)
	case batuta.OutcomeSnooze:
		next, spent, record, due = batuta.TaskPending, c.Attempt-1, true, nanos(c.RetryAt)
	case batuta.OutcomeRelease:
		next = batuta.TaskPending
	case batuta.OutcomeDefer:
		next, due, reserved = batuta.TaskPending, nanos(c.RetryAt), c.RateReserved && !c.RetryAt.IsZero()
	case batuta.OutcomeWait:
		if !canceled {
			return s.completeWait(ctx, c, idx, taskKey, signal)
		}
		// The run was canceled meanwhile: the wait is recorded, and the
		// task is canceled below.
		if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_tasks SET waiting_since = coalesce(waiting_since, ?),
    waiting_for = ?, child = coalesce(?, child) WHERE run_id = ? AND idx = ?`,
			nanos(c.FinishedAt), c.WaitFor, nullString(c.Child), c.RunID, idx); err != nil {
			return batuta.CompleteResult{}, fmt.Errorf("batutasqlite: wait %s/%s: %w", c.RunID, c.Task, err)
		}
		next = batuta.TaskPending
	case batuta.OutcomeSkipped:
		next = batuta.TaskSkipped
	case batuta.OutcomeUpstreamFailed:
		next = batuta.TaskUpstreamFailed
	case batuta.OutcomeCanceled:
		next = batuta.TaskCanceled
	default:
		return batuta.CompleteResult{Err: fmt.Errorf("batutasqlite: task %s/%s: unknown outcome %q", c.RunID, c.Task, c.Outcome)}, nil
	}
	if spent < 0 {
		spent = 0
	}
	if canceled && next == batuta.TaskPending {
		// The run was canceled while the task ran: it does not go back
		// to the ready set.
		next, errText, due, reserved = batuta.TaskCanceled, "run canceled", nil, false
	}
	var attempt any
	if record {
		outcome := c.Outcome
		if c.TimedOut {
			outcome = batuta.OutcomeTimedOut
		}
		a := batuta.Attempt{
			Number:     c.Attempt,
			StartedAt:  c.StartedAt.UTC(),
			FinishedAt: c.FinishedAt.UTC(),
			Outcome:    outcome,
			Error:      c.Error,
		}
		if outcome == batuta.OutcomeSnooze {
			a.Snoozes = 1 // counted up by finishTask when it follows another
		}
		b, err := json.Marshal(a)
		if err != nil {
			return batuta.CompleteResult{}, fmt.Errorf("batutasqlite: encode attempt: %w", err)
		}
		attempt = string(b)
	}
	if _, err := s.st.finishTask.ExecContext(ctx, string(next), output, errText, spent, due, attempt, c.RunID, idx, reserved); err != nil {
		return batuta.CompleteResult{}, fmt.Errorf("batutasqlite: complete %s/%s: %w", c.RunID, c.Task, err)
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
	if !next.Finished() {
		return batuta.CompleteResult{}, nil
	}
	var res batuta.CompleteResult
	if res.Ready, err = s.countDown(ctx, c.RunID, dependents, next); err != nil {
		return batuta.CompleteResult{}, err
	}
	failed, failErr := 0, ""
	switch next {
	case batuta.TaskFailed:
		failed, failErr = 1, fmt.Sprintf("task %s failed: %s", c.Task, c.Error)
	case batuta.TaskUpstreamFailed:
		failed = 1 // the failure upstream wrote the run's error
	}
	finishedAt := c.FinishedAt
	if res.RunFinished, err = s.tasksDone(ctx, c.RunID, 1, failed, failErr, finishedAt); err != nil {
		return batuta.CompleteResult{}, err
	}
	return res, nil
}

// countDown decrements the count of unfinished dependencies of the tasks
// listed in dependents (a JSON array of indexes), whose dependency just
// finished in state done, and returns how many became ready: those whose
// last dependency this was, and those that fire early on done
// (TaskSpec.FireOn).
func (s *Store) countDown(ctx context.Context, runID, dependents string, done batuta.TaskState) (int, error) {
	if dependents == "[]" || dependents == "" {
		return 0, nil
	}
	rows, err := s.st.countDown.QueryContext(ctx, runID, dependents, fireClass(done))
	if err != nil {
		return 0, fmt.Errorf("batutasqlite: run %s: count down dependents: %w", runID, err)
	}
	defer func() { _ = rows.Close() }()
	ready := 0
	for rows.Next() {
		var r bool
		if err := rows.Scan(&r); err != nil {
			return 0, fmt.Errorf("batutasqlite: run %s: count down dependents: %w", runID, err)
		}
		if r {
			ready++
		}
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("batutasqlite: run %s: count down dependents: %w", runID, err)
	}
	return ready, nil
}

// fireClass is the fire_on value a dependency finishing in state st
// matches: "succeeded", "failed" (for every state that counts as a failure)
// or "-" (matches none).
func fireClass(st batuta.TaskState) string {
	switch {
	case st == batuta.TaskSucceeded:
		return string(batuta.TaskSucceeded)
	case st.CountsAsFailure():
		return string(batuta.TaskFailed)
	}
	return "-"
}

// encodeOutput returns a task output as JSON text, or nil for no output.
func encodeOutput(v any) (any, error) {
	switch o := v.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		if len(o) == 0 {
			return nil, nil
		}
		if !json.Valid(o) {
			return nil, fmt.Errorf("not valid JSON: %w", batuta.ErrInvalidPayload)
		}
		return string(o), nil
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("encode as JSON: %w: %w", batuta.ErrInvalidPayload, err)
		}
		return string(b), nil
	}
}

// RescueExpired returns running tasks whose lease expired before now to the
// ready set, counting a rescue, in transactions of at most 500 tasks. A task
// whose rescues would exceed maxRescues fails instead, with the reason
// recorded; a task of a canceled run becomes canceled.
func (s *Store) RescueExpired(ctx context.Context, now time.Time, maxRescues int) (rescued, failed int, err error) {
	for {
		r, f, n, err := s.rescueBatch(ctx, now, maxRescues)
		rescued += r
		failed += f
		if err != nil {
			return rescued, failed, err
		}
		if n < rescueBatch {
			break
		}
	}
	if rescued > 0 {
		s.signalWork()
		s.log.InfoContext(ctx, "batutasqlite: rescued tasks whose lease expired", "rescued", rescued, "failed", failed)
	}
	return rescued, failed, nil
}

type expiredTask struct {
	runID, name, dependents string
	idx, rescues            int
	taskKey                 sql.NullString
	canceled                bool
}

func (s *Store) rescueBatch(ctx context.Context, now time.Time, maxRescues int) (rescued, failed, seen int, err error) {
	err = s.write(ctx, func(ctx context.Context) error {
		rescued, failed, seen = 0, 0, 0
		rows, err := s.st.expired.QueryContext(ctx, now.UnixNano(), rescueBatch)
		if err != nil {
			return fmt.Errorf("batutasqlite: rescue: %w", err)
		}
		var ts []expiredTask
		for rows.Next() {
			var t expiredTask
			if err := rows.Scan(&t.runID, &t.idx, &t.name, &t.rescues, &t.dependents, &t.taskKey, &t.canceled); err != nil {
				_ = rows.Close()
				return fmt.Errorf("batutasqlite: rescue: %w", err)
			}
			ts = append(ts, t)
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("batutasqlite: rescue: %w", err)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("batutasqlite: rescue: %w", err)
		}
		seen = len(ts)
		for _, t := range ts {
			if t.taskKey.Valid {
				if err := s.releaseTaskSlot(ctx, t.taskKey.String); err != nil {
					return err
				}
			}
			if t.rescues+1 <= maxRescues && !t.canceled {
				if _, err := s.st.rescueTask.ExecContext(ctx, t.runID, t.idx); err != nil {
					return fmt.Errorf("batutasqlite: rescue %s/%s: %w", t.runID, t.name, err)
				}
				rescued++
				continue
			}
			state, reason, nfailed, failErr := batuta.TaskCanceled, "run canceled", 0, ""
			if t.rescues+1 > maxRescues {
				state = batuta.TaskFailed
				reason = fmt.Sprintf("lease expired %d times (worker lost each time); giving up", t.rescues+1)
				nfailed, failErr = 1, fmt.Sprintf("task %s failed: %s", t.name, reason)
				failed++
			}
			if _, err := s.wconn.ExecContext(ctx, `UPDATE batuta_tasks SET state = ?, error = ?, rescues = rescues + 1,
    token = NULL, owner = NULL, lease_until = NULL WHERE run_id = ? AND idx = ?`, string(state), reason, t.runID, t.idx); err != nil {
				return fmt.Errorf("batutasqlite: fail %s/%s: %w", t.runID, t.name, err)
			}
			if _, err := s.countDown(ctx, t.runID, t.dependents, state); err != nil {
				return err
			}
			if _, err := s.tasksDone(ctx, t.runID, 1, nfailed, failErr, now); err != nil {
				return err
			}
		}
		return nil
	})
	return rescued, failed, seen, err
}
