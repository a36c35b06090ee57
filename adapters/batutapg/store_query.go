package batutapg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// CancelRun implements batuta.Store: the run and its unfinished child
// runs (recursively) are canceled in one transaction, and the parent task
// of a run it finishes is counted down (and woken if it was the last open
// child).
func (s *Store) CancelRun(ctx context.Context, runID, reason string, now time.Time) (bool, error) {
	id, ok := parseUUID(runID)
	if !ok {
		return false, fmt.Errorf("batutapg: cancel run %s: %w", runID, batuta.ErrRunNotFound)
	}
	if reason == "" {
		reason = "canceled"
	}
	reason = cleanText(reason)
	var changed, wake bool
	var finished []string
	err := withRetry(ctx, func() error {
		return s.inTx(ctx, "", func(tx pgx.Tx) error {
			var err error
			changed, finished, wake, err = s.cancelTx(ctx, tx, id, reason, now)
			return err
		})
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return false, fmt.Errorf("batutapg: cancel run %s: %w", runID, batuta.ErrRunNotFound)
	}
	if err != nil {
		return false, fmt.Errorf("batutapg: cancel run %s: %w", runID, err)
	}
	if len(finished) > 0 {
		s.active.add(-len(finished))
		s.runsFinished(finished)
		// Their concurrency slots (if any) may admit queued runs.
		wake = true
	}
	if wake {
		s.workAppeared()
	}
	return changed, nil
}

// GetRun implements batuta.Store.
func (s *Store) GetRun(ctx context.Context, runID string) (*batuta.Run, error) {
	id, ok := parseUUID(runID)
	if !ok {
		return nil, fmt.Errorf("batutapg: run %s: %w", runID, batuta.ErrRunNotFound)
	}
	runs, err := s.selectRuns(ctx, s.q.getRun, id)
	if err != nil {
		return nil, fmt.Errorf("batutapg: get run %s: %w", runID, err)
	}
	if len(runs) == 0 {
		return nil, fmt.Errorf("batutapg: run %s: %w", runID, batuta.ErrRunNotFound)
	}
	return runs[0], nil
}

// FindRun implements batuta.Store.
func (s *Store) FindRun(ctx context.Context, workflow, eventID string) (*batuta.Run, error) {
	runs, err := s.selectRuns(ctx, s.q.findRun, cleanText(workflow), cleanText(eventID))
	if err != nil {
		return nil, fmt.Errorf("batutapg: find run of %s for event %s: %w", workflow, eventID, err)
	}
	if len(runs) == 0 {
		return nil, fmt.Errorf("batutapg: run of %s for event %s: %w", workflow, eventID, batuta.ErrRunNotFound)
	}
	return runs[0], nil
}

// ListRuns implements batuta.Store: newest first (by run ID, a UUIDv7),
// or oldest first with f.Ascending, one page from the cursor f.After (see
// listRunsQuery for the indexes a page walks).
func (s *Store) ListRuns(ctx context.Context, f batuta.RunFilter) ([]*batuta.Run, error) {
	sql, args, ok, err := listRunsQuery(s.schema, s.q.runSelect, f)
	if err != nil || !ok {
		return nil, err
	}
	runs, err := s.selectRuns(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("batutapg: list runs: %w", err)
	}
	return runs, nil
}

// selectRuns runs a runSelect query and decodes the snapshots.
func (s *Store) selectRuns(ctx context.Context, sql string, args ...any) ([]*batuta.Run, error) {
	var out []*batuta.Run
	err := s.query(ctx, sql, args, func(rows pgx.Rows) error {
		var (
			id                          [16]byte
			r                           batuta.Run
			eventID, state              string
			event, tasks                []byte
			deadline, finished, started pgtype.Timestamptz
			startAt                     pgtype.Timestamptz
			prio                        int32
			ckey                        pgtype.Text
			parentID                    pgtype.UUID
			parentTask                  pgtype.Text
			retries                     int32
			live                        bool
		)
		err := rows.Scan(&id, &r.Workflow, &eventID, &event, &r.CreatedAt, &deadline, &state, &r.Error, &finished, &started, &tasks,
			&startAt, &prio, &ckey, &parentID, &parentTask, &retries, &live)
		if err != nil {
			return err
		}
		r.ID = formatUUID(id)
		if r.Event, err = decodeEvent(eventID, event); err != nil {
			return err
		}
		r.Deadline, r.FinishedAt, r.StartedAt = deadline.Time, finished.Time, started.Time
		r.StartAt, r.Priority, r.ConcurrencyKey = startAt.Time, int(prio), ckey.String
		r.Retries = int(retries)
		if parentID.Valid {
			r.Parent = &batuta.RunLink{RunID: formatUUID(parentID.Bytes), Task: parentTask.String}
		}
		switch {
		case state != "active":
			r.State = batuta.RunState(state)
		case live:
			r.State = batuta.RunRunning
		default:
			r.State = batuta.RunPending
		}
		if r.Tasks, err = decodeTasks(tasks); err != nil {
			return fmt.Errorf("run %s: %w", r.ID, err)
		}
		out = append(out, &r)
		return nil
	})
	return out, err
}

// decodeTasks reads the [[name, state, deps, output, error, attempts,
// rescues, not_before, waiting_since, waiting_for, child], ...] array of
// runSelect.
func decodeTasks(b []byte) ([]batuta.TaskRun, error) {
	var rows [][11]json.RawMessage
	if err := json.Unmarshal(b, &rows); err != nil {
		return nil, fmt.Errorf("decode tasks: %w", err)
	}
	out := make([]batuta.TaskRun, len(rows))
	names := make([]string, len(rows))
	deps := make([][]int, len(rows))
	for i, r := range rows {
		t := &out[i]
		var state string
		var errMsg, waitingFor, child *string
		if err := errors.Join(
			unmarshalTime(r[8], &t.WaitingSince),
			json.Unmarshal(r[9], &waitingFor),
			json.Unmarshal(r[10], &child),
			json.Unmarshal(r[0], &t.Name),
			json.Unmarshal(r[1], &state),
			json.Unmarshal(r[2], &deps[i]),
			json.Unmarshal(r[4], &errMsg),
			json.Unmarshal(r[5], &t.Attempts),
			json.Unmarshal(r[6], &t.Rescues),
			unmarshalTime(r[7], &t.NotBefore),
		); err != nil {
			return nil, fmt.Errorf("decode tasks: %w", err)
		}
		names[i] = t.Name
		t.State = batuta.TaskState(state)
		t.Output = rawOutput(r[3])
		if errMsg != nil {
			t.Error = *errMsg
		}
		if waitingFor != nil {
			t.WaitingFor = *waitingFor
		}
		if child != nil {
			t.Child = *child
		}
	}
	for i := range out {
		if len(deps[i]) == 0 {
			continue
		}
		out[i].Deps = make([]string, len(deps[i]))
		for k, d := range deps[i] {
			if d >= 0 && d < len(names) {
				out[i].Deps[k] = names[d]
			}
		}
	}
	return out, nil
}

// Prune implements batuta.Store: runs that finished before p.Before, and
// finished runs beyond the p.KeepLast newest (newest by creation time), are
// deleted with their tasks, p.BatchSize runs per statement (each its own
// short transaction), until none is left. Runs locked by a concurrent
// writer at that moment are left for the next call.
func (s *Store) Prune(ctx context.Context, p batuta.PrunePolicy) (int, error) {
	batch := p.BatchSize
	if batch <= 0 {
		batch = 1000
	}
	total := 0
	loop := func(sql string, args ...any) error {
		for {
			var n int64
			if err := s.queryRow(ctx, sql, append(args, batch), &n); err != nil {
				return fmt.Errorf("batutapg: prune: %w", err)
			}
			total += int(n)
			if n < int64(batch) {
				return nil
			}
		}
	}
	if !p.Before.IsZero() {
		if err := loop(s.q.pruneBefore, p.Before); err != nil {
			return total, err
		}
	}
	if p.KeepLast > 0 {
		var at time.Time
		var id [16]byte
		err := s.queryRow(ctx, s.q.pruneCutoff, []any{p.KeepLast}, &at, &id)
		if errors.Is(err, pgx.ErrNoRows) {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("batutapg: prune: %w", err)
		}
		if err := loop(s.q.pruneUpTo, at, id); err != nil {
			return total, err
		}
	}
	return total, nil
}

// LastTick implements batuta.Store.
func (s *Store) LastTick(ctx context.Context, schedule string) (time.Time, error) {
	var t time.Time
	err := s.queryRow(ctx, s.q.lastTick, []any{cleanText(schedule)}, &t)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("batutapg: last tick of %s: %w", schedule, err)
	}
	return t, nil
}

// RecordTick implements batuta.Store. Ticks are kept to the microsecond
// (PostgreSQL's resolution). Concurrent calls (the ticks of many schedules
// due at the same instant) are combined into one statement and one commit.
func (s *Store) RecordTick(ctx context.Context, schedule string, tick time.Time) (bool, error) {
	res, err := s.ticks.do(ctx, []tickItem{{name: cleanText(schedule), tick: tick.Truncate(time.Microsecond)}})
	if err != nil {
		return false, fmt.Errorf("batutapg: record tick of %s: %w", schedule, err)
	}
	return res[0], nil
}

// tickItem is one RecordTick call.
type tickItem struct {
	name string
	tick time.Time
}

// flushTicks records a batch of ticks in one statement. A schedule named
// more than once keeps its latest tick; the calls with an earlier tick of
// that schedule report false (as if they came after it).
func (s *Store) flushTicks(ctx context.Context, items []tickItem) ([]bool, error) {
	latest := make(map[string]time.Time, len(items))
	for _, it := range items {
		if t, ok := latest[it.name]; !ok || it.tick.After(t) {
			latest[it.name] = it.tick
		}
	}
	names := make([]string, 0, len(latest))
	ticks := make([]time.Time, 0, len(latest))
	for n, t := range latest {
		names = append(names, n)
		ticks = append(ticks, t)
	}
	stored := make(map[string]bool, len(latest))
	err := withRetry(ctx, func() error {
		clear(stored)
		return s.query(ctx, s.q.recordTicks, []any{names, ticks}, func(rows pgx.Rows) error {
			var n string
			if err := rows.Scan(&n); err != nil {
				return err
			}
			stored[n] = true
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	out := make([]bool, len(items))
	for i, it := range items {
		out[i] = stored[it.name] && it.tick.Equal(latest[it.name])
	}
	return out, nil
}

// unmarshalTime reads a JSON timestamp, or null (the zero time).
func unmarshalTime(b json.RawMessage, t *time.Time) error {
	if len(b) == 0 || string(b) == "null" {
		return nil
	}
	return json.Unmarshal(b, t)
}
