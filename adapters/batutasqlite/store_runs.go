package batutasqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
)

// defaultListLimit is ListRuns' limit when RunFilter.Limit is 0.
const defaultListLimit = 100

// defaultPruneBatch is Prune's batch size when PrunePolicy.BatchSize is 0.
const defaultPruneBatch = 1000

// newTaskLead is how long before its run's CreatedAt a first attempt is
// due (see CreateRun).
const newTaskLead = time.Minute

// CreateRun records run with all its tasks in one transaction. A second run
// of the same workflow with the same Event.ID is refused by the UNIQUE
// (workflow, event_id) constraint, and CreateRun returns the existing run's
// ID with created=false. With run.MaxActive > 0 it returns batuta.ErrBusy
// when MaxActive unfinished runs exist (counted exactly, in the same
// transaction). Delays, debounce and concurrency strategies are applied in
// that transaction too (see CreateRuns); a debounced event returns the run
// it was merged into with created=false, and a run recorded canceled at once
// (ConcurrencyCancelNewest) returns created=true.
func (s *Store) CreateRun(ctx context.Context, run batuta.NewRun) (string, bool, error) {
	p, err := prepareRun(&run)
	if err != nil {
		return "", false, err
	}
	var res batuta.CreateResult
	err = s.write(ctx, func(ctx context.Context) error {
		var busy error
		if run.MaxActive > 0 {
			if busy = s.checkActive(ctx, run.MaxActive); busy != nil {
				if !errors.Is(busy, batuta.ErrBusy) {
					return busy
				}
				// A duplicate is not new load.
				var id string
				switch err := s.st.runByKey.QueryRowContext(ctx, run.Workflow, run.Event.ID).Scan(&id); {
				case err == nil:
					res = batuta.CreateResult{ID: id}
					return nil
				case !errors.Is(err, sql.ErrNoRows):
					return fmt.Errorf("batutasqlite: find run: %w", err)
				case run.Debounce == nil:
					return busy
				}
				// Nor is an event merged into a debounced run: try,
				// and refuse (rolling back) if it added a run.
			}
		}
		var err error
		if res, err = s.createOne(ctx, p); err != nil {
			return err
		}
		if busy != nil && res.Created {
			return busy
		}
		return nil
	})
	if err != nil {
		return "", false, err
	}
	if res.Created && !res.Rejected {
		s.signalWork()
	}
	return res.ID, res.Created, nil
}

func validateNewRun(run *batuta.NewRun) error {
	switch {
	case run.ID == "":
		return fmt.Errorf("batutasqlite: create run: empty run ID")
	case run.Workflow == "":
		return fmt.Errorf("batutasqlite: create run: empty workflow name")
	case len(run.Tasks) == 0:
		return fmt.Errorf("batutasqlite: create run %s: no tasks", run.ID)
	case run.CreatedAt.IsZero():
		return fmt.Errorf("batutasqlite: create run %s: zero CreatedAt", run.ID)
	}
	for i, t := range run.Tasks {
		if t.Name == "" {
			return fmt.Errorf("batutasqlite: create run %s: task %d has no name", run.ID, i)
		}
		for _, d := range t.Deps {
			if d < 0 || d >= len(run.Tasks) || d == i {
				return fmt.Errorf("batutasqlite: create run %s: task %q has invalid dependency index %d", run.ID, t.Name, d)
			}
		}
	}
	if pr := run.Parent; pr != nil && (pr.RunID == "" || pr.Task == "") {
		return fmt.Errorf("batutasqlite: create run %s: Parent names no run and task (%q, %q): %w", run.ID, pr.RunID, pr.Task, batuta.ErrInvalidConfig)
	}
	return validateFlow(run)
}

// taskGraph returns, per task, its dependencies and dependents as JSON
// arrays of indexes and its count of distinct dependencies.
func taskGraph(tasks []batuta.TaskSpec) (deps, dependents []string, pending []int) {
	n := len(tasks)
	deps = make([]string, n)
	dependents = make([]string, n)
	pending = make([]int, n)
	down := make([][]int, n)
	for i, t := range tasks {
		deps[i] = intsJSON(t.Deps)
		seen := make(map[int]bool, len(t.Deps))
		for _, d := range t.Deps {
			if !seen[d] {
				seen[d] = true
				pending[i]++
				down[d] = append(down[d], i)
			}
		}
	}
	for i := range down {
		dependents[i] = intsJSON(down[i])
	}
	return deps, dependents, pending
}

func intsJSON(xs []int) string {
	b, _ := json.Marshal(xs)
	if xs == nil {
		return "[]"
	}
	return string(b)
}

// tasksDone counts finished tasks (failed of them failed) off the run and
// finishes the run when none is left: canceled if it was canceled, failed if
// any task failed or is upstream_failed, else succeeded (the order the in-memory store and
// batutapg use). A finished run leaves its concurrency group. It returns the
// final state, or "" if the run is still unfinished. It runs inside a write
// transaction.
func (s *Store) tasksDone(ctx context.Context, runID string, finished, failed int, failErr string, now time.Time) (batuta.RunState, error) {
	var unfinished, failedTasks, adm int
	var canceled bool
	var key, parentRun, parentTask sql.NullString
	if err := s.st.taskDone.QueryRowContext(ctx, finished, failed, failErr, runID).Scan(&unfinished, &failedTasks, &canceled, &key, &adm,
		&parentRun, &parentTask); err != nil {
		return "", fmt.Errorf("batutasqlite: update run %s: %w", runID, err)
	}
	if unfinished > 0 {
		return "", nil
	}
	state := batuta.RunSucceeded
	switch {
	case canceled:
		state = batuta.RunCanceled
	case failedTasks > 0:
		state = batuta.RunFailed
	}
	if now.IsZero() {
		now = time.Now()
	}
	if _, err := s.st.finishRun.ExecContext(ctx, string(state), now.UnixNano(), runID); err != nil {
		return "", fmt.Errorf("batutasqlite: finish run %s: %w", runID, err)
	}
	if _, err := s.st.addActiveRuns.ExecContext(ctx, -1); err != nil {
		return "", fmt.Errorf("batutasqlite: count active runs: %w", err)
	}
	if adm != admNone && key.Valid {
		if err := s.leaveGroup(ctx, runID, key.String, adm); err != nil {
			return "", err
		}
	}
	if parentRun.Valid {
		if err := s.wakeParent(ctx, parentRun.String, parentTask.String, now); err != nil {
			return "", err
		}
	}
	return state, nil
}

// CancelRun cancels an unfinished run: its pending tasks become canceled at
// once; running tasks become canceled when their worker reports, and
// ExtendLeases answers batuta.LeaseCanceled for them meanwhile. The run's
// error becomes reason ("canceled" if empty). It reports whether this call
// canceled the run: false for a finished run or one canceled before;
// batuta.ErrRunNotFound if there is no such run.
func (s *Store) CancelRun(ctx context.Context, runID, reason string, now time.Time) (bool, error) {
	if reason == "" {
		reason = "canceled"
	}
	var unfinished bool
	err := s.write(ctx, func(ctx context.Context) error {
		var err error
		unfinished, err = s.cancelInTx(ctx, runID, reason, now)
		return err
	})
	return unfinished, err
}

// cancelInTx is CancelRun inside a write transaction.
func (s *Store) cancelInTx(ctx context.Context, runID, reason string, now time.Time) (bool, error) {
	var (
		state         string
		canceled      bool
		key           sql.NullString
		adm, strategy int
	)
	err := s.st.runState.QueryRowContext(ctx, runID).Scan(&state, &canceled, &key, &adm, &strategy)
	if errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("batutasqlite: run %s: %w", runID, batuta.ErrRunNotFound)
	}
	if err != nil {
		return false, fmt.Errorf("batutasqlite: cancel run %s: %w", runID, err)
	}
	if batuta.RunState(state).Finished() || canceled {
		return false, nil
	}
	if _, err := s.st.cancelRun.ExecContext(ctx, reason, runID); err != nil {
		return false, fmt.Errorf("batutasqlite: cancel run %s: %w", runID, err)
	}
	if key.Valid && adm == admAdmitted && batuta.ConcurrencyStrategy(strategy) == batuta.ConcurrencyCancelInProgress {
		// A canceled run no longer counts in a CancelInProgress group,
		// even while a task of it still runs (its worker is told to
		// stop): a new run takes its place at once.
		if err := s.leaveGroup(ctx, runID, key.String, adm); err != nil {
			return false, err
		}
	}
	if err := s.cancelTaskGroups(ctx, runID); err != nil {
		return false, err
	}
	res, err := s.st.cancelTasks.ExecContext(ctx, reason, runID)
	if err != nil {
		return false, fmt.Errorf("batutasqlite: cancel tasks of run %s: %w", runID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("batutasqlite: cancel tasks of run %s: %w", runID, err)
	}
	if n > 0 {
		if _, err := s.tasksDone(ctx, runID, int(n), 0, "", now); err != nil {
			return false, err
		}
	}
	if err := s.cancelChildren(ctx, runID, reason, now); err != nil {
		return false, err
	}
	return true, nil
}

// cancelChildren cancels the unfinished child runs of runID (those whose
// Parent is a task of it), and theirs, recursively, inside the write
// transaction (batuta_runs_children_open).
func (s *Store) cancelChildren(ctx context.Context, runID, reason string, now time.Time) error {
	rows, err := s.wconn.QueryContext(ctx, `SELECT id FROM batuta_runs
    WHERE parent_run = ? AND finished_at IS NULL AND canceled = 0`, runID)
	if err != nil {
		return fmt.Errorf("batutasqlite: cancel run %s: child runs: %w", runID, err)
	}
	ids, err := scanStrings(rows)
	if err != nil {
		return fmt.Errorf("batutasqlite: cancel run %s: child runs: %w", runID, err)
	}
	why := fmt.Sprintf("parent run %s canceled: %s", runID, reason)
	for _, id := range ids {
		if _, err := s.cancelInTx(ctx, id, why, now); err != nil {
			return err
		}
	}
	return nil
}

// GetRun returns a snapshot of a run, read in one transaction.
// batuta.ErrRunNotFound if there is none.
func (s *Store) GetRun(ctx context.Context, runID string) (*batuta.Run, error) {
	return s.findOne(ctx, `SELECT `+runColumns+` FROM batuta_runs WHERE id = ?`, runID)
}

// FindRun returns the run of workflow started by eventID.
// batuta.ErrRunNotFound if there is none.
func (s *Store) FindRun(ctx context.Context, workflow, eventID string) (*batuta.Run, error) {
	return s.findOne(ctx, `SELECT `+runColumns+` FROM batuta_runs WHERE workflow = ? AND event_id = ?`, workflow, eventID)
}

func (s *Store) findOne(ctx context.Context, query string, args ...any) (*batuta.Run, error) {
	var run *batuta.Run
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		runs, err := s.queryRuns(ctx, tx, query, args...)
		if err != nil {
			return err
		}
		if len(runs) == 0 {
			return fmt.Errorf("batutasqlite: %w", batuta.ErrRunNotFound)
		}
		run = runs[0]
		return nil
	})
	return run, err
}

// ListRuns returns the runs f selects, newest first (by ID, a UUIDv7) or
// oldest first with f.Ascending, each with its tasks, read in one
// transaction. Every filter is a seek in an index (of migrations 0001 and
// 0004) and a page is one range of it after f.After (keyset pagination),
// the other filters applied to the rows of that range: see listRunsQuery.
func (s *Store) ListRuns(ctx context.Context, f batuta.RunFilter) ([]*batuta.Run, error) {
	q, args, ok := listRunsQuery(f)
	if !ok {
		return nil, nil
	}
	var runs []*batuta.Run
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		var err error
		runs, err = s.queryRuns(ctx, tx, q, args...)
		return err
	})
	return runs, err
}

// listRunsQuery builds ListRuns' query; ok is false when f selects nothing
// (State not among States). Several states are read as one ordered range per
// state, merged (UNION ALL of indexed subqueries, each bounded by the
// limit), so a page never sorts every run of those states.
func listRunsQuery(f batuta.RunFilter) (q string, args []any, ok bool) {
	limit := f.Limit
	if limit <= 0 {
		limit = defaultListLimit
	}
	limit = min(limit, maxListLimit)
	states := f.States
	if f.State != "" {
		if len(states) > 0 && !slices.Contains(states, f.State) {
			return "", nil, false
		}
		states = []batuta.RunState{f.State}
	}
	states = slices.Compact(slices.Sorted(slices.Values(states)))
	var (
		where []string
		wargs []any
	)
	add := func(cond string, v any) {
		where = append(where, cond)
		wargs = append(wargs, v)
	}
	if f.Workflow != "" {
		add("workflow = ?", f.Workflow)
	}
	if f.EventID != "" {
		add("event_id = ?", f.EventID)
	}
	if f.Subject != "" {
		add("subject = ?", f.Subject)
	}
	if !f.CreatedAfter.IsZero() {
		add("created_at >= ?", clampNanos(f.CreatedAfter))
	}
	if !f.CreatedBefore.IsZero() {
		add("created_at < ?", clampNanos(f.CreatedBefore))
	}
	if f.ErrorContains != "" {
		add("instr(lower(error), lower(?)) > 0", f.ErrorContains)
	}
	if f.Parent != "" {
		add("parent_run = ?", f.Parent)
		if f.ParentTask != "" {
			add("parent_task = ?", f.ParentTask)
		}
	}
	order, cmp := "DESC", "<"
	if f.Ascending {
		order, cmp = "ASC", ">"
	}
	if f.After != "" {
		add("id "+cmp+" ?", f.After)
	}
	one := func(state string) (string, []any) {
		w := slices.Clone(where)
		a := slices.Clone(wargs)
		if state != "" {
			w = append(w, "state = ?")
			a = append(a, state)
		}
		sub := `SELECT ` + runColumns + ` FROM batuta_runs`
		if len(w) > 0 {
			sub += ` WHERE ` + strings.Join(w, " AND ")
		}
		return sub + ` ORDER BY id ` + order + ` LIMIT ?`, append(a, limit)
	}
	switch len(states) {
	case 0:
		q, args = one("")
	case 1:
		q, args = one(string(states[0]))
	default:
		parts := make([]string, len(states))
		for i, st := range states {
			sub, a := one(string(st))
			parts[i] = `SELECT * FROM (` + sub + `)`
			args = append(args, a...)
		}
		q = `SELECT * FROM (` + strings.Join(parts, " UNION ALL ") + `) ORDER BY id ` + order + ` LIMIT ?`
		args = append(args, limit)
	}
	return q, args, true
}

// queryRuns runs a query selecting runColumns and loads the tasks of the
// runs it returns.
func (s *Store) queryRuns(ctx context.Context, tx *sql.Tx, query string, args ...any) ([]*batuta.Run, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, s.wrapErr("query runs", err)
	}
	var (
		runs []*batuta.Run
		ids  []string
	)
	for rows.Next() {
		var (
			r                                    batuta.Run
			event, state                         string
			created                              int64
			started, finished, deadline, startAt sql.NullInt64
			key, parentRun, parentTask           sql.NullString
		)
		if err := rows.Scan(&r.ID, &r.Workflow, &event, &state, &created, &started, &finished, &deadline, &r.Error,
			&startAt, &r.Priority, &key, &parentRun, &parentTask, &r.Retries); err != nil {
			_ = rows.Close()
			return nil, s.wrapErr("scan run", err)
		}
		if err := json.Unmarshal([]byte(event), &r.Event); err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("batutasqlite: run %s: decode event: %w", r.ID, err)
		}
		r.State = batuta.RunState(state)
		r.CreatedAt = time.Unix(0, created).UTC()
		r.StartedAt = fromNanos(started)
		r.FinishedAt = fromNanos(finished)
		r.Deadline = fromNanos(deadline)
		r.StartAt = fromNanos(startAt)
		r.ConcurrencyKey = key.String
		if parentRun.Valid {
			r.Parent = &batuta.RunLink{RunID: parentRun.String, Task: parentTask.String}
		}
		runs = append(runs, &r)
		ids = append(ids, r.ID)
	}
	if err := rows.Close(); err != nil {
		return nil, s.wrapErr("query runs", err)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrapErr("query runs", err)
	}
	if len(runs) == 0 {
		return nil, nil
	}
	idsJSON, _ := json.Marshal(ids)
	trows, err := tx.QueryContext(ctx, `SELECT `+taskColumns+` FROM batuta_tasks
    WHERE run_id IN (SELECT value FROM json_each(?)) ORDER BY run_id, idx`, string(idsJSON))
	if err != nil {
		return nil, s.wrapErr("query tasks", err)
	}
	defer func() { _ = trows.Close() }()
	byID := make(map[string]*batuta.Run, len(runs))
	deps := make(map[string][][]int, len(runs))
	for _, r := range runs {
		byID[r.ID] = r
	}
	for trows.Next() {
		var (
			runID, name, state, depsJSON, errText, attempts string
			idx, rescues                                    int
			due                                             int64
			output, waitingFor, child                       sql.NullString
			waitingSince                                    sql.NullInt64
		)
		if err := trows.Scan(&runID, &idx, &name, &state, &depsJSON, &output, &errText, &attempts, &rescues, &due,
			&waitingSince, &waitingFor, &child); err != nil {
			return nil, s.wrapErr("scan task", err)
		}
		r := byID[runID]
		if r == nil || idx != len(r.Tasks) {
			return nil, fmt.Errorf("batutasqlite: run %s: task rows out of order", runID)
		}
		tr := batuta.TaskRun{Name: name, State: batuta.TaskState(state), Error: errText, Rescues: rescues,
			WaitingSince: fromNanos(waitingSince), WaitingFor: waitingFor.String, Child: child.String}
		// A pending task's due time is a not-before when it was set (a
		// start, retry, snooze, deferral or wait); a first attempt is due
		// newTaskLead before the run's creation, which means "at once",
		// and a wait with no time limit is due never.
		if tr.State == batuta.TaskPending && due >= r.CreatedAt.UnixNano() && due != neverDue {
			tr.NotBefore = time.Unix(0, due).UTC()
		}
		if output.Valid {
			tr.Output = json.RawMessage(output.String)
		}
		if attempts != "" && attempts != "[]" {
			if err := json.Unmarshal([]byte(attempts), &tr.Attempts); err != nil {
				return nil, fmt.Errorf("batutasqlite: run %s task %s: decode attempts: %w", runID, name, err)
			}
		}
		var d []int
		if err := json.Unmarshal([]byte(depsJSON), &d); err != nil {
			return nil, fmt.Errorf("batutasqlite: run %s task %s: decode deps: %w", runID, name, err)
		}
		r.Tasks = append(r.Tasks, tr)
		deps[runID] = append(deps[runID], d)
	}
	if err := trows.Err(); err != nil {
		return nil, s.wrapErr("query tasks", err)
	}
	for _, r := range runs {
		for i, d := range deps[r.ID] {
			if len(d) == 0 {
				continue
			}
			names := make([]string, len(d))
			for j, k := range d {
				if k >= 0 && k < len(r.Tasks) {
					names[j] = r.Tasks[k].Name
				}
			}
			r.Tasks[i].Deps = names
		}
	}
	return runs, nil
}

// Prune deletes finished runs (with their tasks) finished before p.Before
// and beyond the newest p.KeepLast finished runs, in transactions of at most
// p.BatchSize runs so that other writers are never blocked for long. It
// returns how many runs it deleted; on error, how many it deleted before.
// Unfinished runs are never pruned; a pruned run's dedupe key is gone with
// it.
func (s *Store) Prune(ctx context.Context, p batuta.PrunePolicy) (int, error) {
	batch := p.BatchSize
	if batch <= 0 {
		batch = defaultPruneBatch
	}
	total := 0
	if !p.Before.IsZero() {
		for {
			n, err := s.pruneBatch(ctx, `SELECT id FROM batuta_runs
    WHERE finished_at IS NOT NULL AND finished_at < ? ORDER BY finished_at LIMIT ?`, p.Before.UnixNano(), batch)
			total += n
			if err != nil {
				return total, err
			}
			if n < batch {
				break
			}
		}
	}
	if p.KeepLast > 0 {
		for {
			n, err := s.pruneBatch(ctx, `SELECT id FROM batuta_runs
    WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT ? OFFSET ?`, batch, p.KeepLast)
			total += n
			if err != nil {
				return total, err
			}
			if n < batch {
				break
			}
		}
	}
	return total, nil
}

// pruneBatch deletes the runs the query selects, and their tasks, in one
// transaction.
func (s *Store) pruneBatch(ctx context.Context, query string, args ...any) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("batutasqlite: prune: %w", err)
	}
	var n int
	err := s.write(ctx, func(ctx context.Context) error {
		rows, err := s.wconn.QueryContext(ctx, query, args...)
		if err != nil {
			return fmt.Errorf("batutasqlite: prune: %w", err)
		}
		var ids []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				_ = rows.Close()
				return fmt.Errorf("batutasqlite: prune: %w", err)
			}
			ids = append(ids, id)
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("batutasqlite: prune: %w", err)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("batutasqlite: prune: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		idsJSON, _ := json.Marshal(ids)
		if _, err := s.wconn.ExecContext(ctx, `DELETE FROM batuta_tasks WHERE run_id IN (SELECT value FROM json_each(?))`, string(idsJSON)); err != nil {
			return fmt.Errorf("batutasqlite: prune tasks: %w", err)
		}
		if _, err := s.wconn.ExecContext(ctx, `DELETE FROM batuta_signals WHERE run_id IN (SELECT value FROM json_each(?))`, string(idsJSON)); err != nil {
			return fmt.Errorf("batutasqlite: prune signals: %w", err)
		}
		res, err := s.wconn.ExecContext(ctx, `DELETE FROM batuta_runs WHERE id IN (SELECT value FROM json_each(?))`, string(idsJSON))
		if err != nil {
			return fmt.Errorf("batutasqlite: prune runs: %w", err)
		}
		deleted, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("batutasqlite: prune runs: %w", err)
		}
		n = int(deleted)
		return nil
	})
	return n, err
}
