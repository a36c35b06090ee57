package batutapg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// outcomeRescue is the internal outcome RescueExpired feeds the completion
// statement: the lease expired; back to ready, or failed past the limit.
const outcomeRescue batuta.Outcome = "rescue"

// compResult is the completion statement's answer for one item.
type compResult struct {
	applied  bool
	newState string
	ready    int
	finished batuta.RunState
	idem     bool // a terminal outcome the task already reached under this token
	// (ready and finished then report what that earlier completion did)
}

// CompleteTasks implements batuta.Store. Each completion is fenced by its
// token; concurrent calls are combined, and a batch is one round trip (the
// run rows are locked in id order, then one statement records outcomes,
// counts dependents down and finishes runs). A terminal completion
// repeated with the same token and outcome — the orchestrator's own
// OutcomeSucceeded after CompleteInTx, or a call retried after its reply
// was lost — changes nothing and returns no error; its result reports what
// the first one did (the run it finished, the dependents now ready), so the
// orchestrator's hooks and waiters still learn about it. Any other write
// under a token that no longer holds the task gets ErrLeaseLost.
func (s *Store) CompleteTasks(ctx context.Context, cs []batuta.Completion) ([]batuta.CompleteResult, error) {
	if len(cs) == 0 {
		return nil, nil
	}
	return s.completes.do(ctx, cs)
}

func (s *Store) flushCompletions(ctx context.Context, cs []batuta.Completion) ([]batuta.CompleteResult, error) {
	out := make([]batuta.CompleteResult, len(cs))
	in := newCompInput(len(cs))
	var idx []int // index in cs of each item sent
	for i := range cs {
		if err := in.add(&cs[i], time.Time{}); err != nil {
			out[i].Err = err
			continue
		}
		idx = append(idx, i)
	}
	if len(idx) == 0 {
		return out, nil
	}
	var res []compResult
	err := withRetry(ctx, func() error {
		var err error
		res, err = s.completeOn(ctx, nil, in, 0, time.Now())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("batutapg: complete tasks: %w", err)
	}
	for k, i := range idx {
		r := res[k]
		c := &cs[i]
		switch {
		case r.applied, r.idem:
			out[i].Ready, out[i].RunFinished = r.ready, r.finished
		default:
			out[i].Err = fmt.Errorf("batutapg: complete run %s task %s: %w", c.RunID, c.Task, batuta.ErrLeaseLost)
		}
	}
	return out, nil
}

// compInput is the column-wise input of the completion statement.
type compInput struct {
	runs        [][16]byte
	tasks       []string
	tokens      []int64
	outcomes    []string
	outputs     [][]byte
	errs        []string
	recs        []pgtype.Text // attempt records, JSON
	retryAt     []pgtype.Timestamptz
	leaseBefore []pgtype.Timestamptz
	at          []pgtype.Timestamptz
}

func newCompInput(n int) *compInput {
	return &compInput{
		runs: make([][16]byte, 0, n), tasks: make([]string, 0, n), tokens: make([]int64, 0, n),
		outcomes: make([]string, 0, n), outputs: make([][]byte, 0, n), errs: make([]string, 0, n),
		recs: make([]pgtype.Text, 0, n), retryAt: make([]pgtype.Timestamptz, 0, n),
		leaseBefore: make([]pgtype.Timestamptz, 0, n), at: make([]pgtype.Timestamptz, 0, n),
	}
}

func ts(t time.Time) pgtype.Timestamptz {
	if t.IsZero() {
		return pgtype.Timestamptz{}
	}
	return pgtype.Timestamptz{Time: t, Valid: true}
}

// add appends c, or returns the per-item error that keeps it out. A
// non-zero leaseBefore marks a rescue: it applies only if the lease expired
// before then.
func (in *compInput) add(c *batuta.Completion, leaseBefore time.Time) error {
	id, ok := parseUUID(c.RunID)
	if !ok {
		return fmt.Errorf("batutapg: complete run %s task %s: %w", c.RunID, c.Task, batuta.ErrLeaseLost)
	}
	var output []byte
	var rec []byte
	switch c.Outcome {
	case batuta.OutcomeSucceeded:
		var err error
		if output, err = encodeOutput(c.Output, c.Task); err != nil {
			return err
		}
		fallthrough
	case batuta.OutcomeFailed, batuta.OutcomeRetry, batuta.OutcomeSnooze:
		oc := c.Outcome
		if c.TimedOut {
			oc = batuta.OutcomeTimedOut
		}
		var err error
		rec, err = json.Marshal(batuta.Attempt{
			Number: c.Attempt, StartedAt: c.StartedAt, FinishedAt: c.FinishedAt, Outcome: oc, Error: cleanText(c.Error),
		})
		if err != nil {
			return fmt.Errorf("batutapg: complete run %s task %s: %w", c.RunID, c.Task, err)
		}
	case batuta.OutcomeSkipped, batuta.OutcomeUpstreamFailed, batuta.OutcomeCanceled, batuta.OutcomeRelease, outcomeRescue:
	default:
		return fmt.Errorf("batutapg: complete run %s task %s: unknown outcome %q", c.RunID, c.Task, c.Outcome)
	}
	in.runs = append(in.runs, id)
	in.tasks = append(in.tasks, cleanText(c.Task))
	in.tokens = append(in.tokens, c.Token)
	in.outcomes = append(in.outcomes, string(c.Outcome))
	in.outputs = append(in.outputs, output)
	in.errs = append(in.errs, cleanText(c.Error))
	in.recs = append(in.recs, pgtype.Text{String: string(rec), Valid: rec != nil})
	in.retryAt = append(in.retryAt, ts(c.RetryAt))
	in.leaseBefore = append(in.leaseBefore, ts(leaseBefore))
	in.at = append(in.at, ts(c.FinishedAt))
	return nil
}

// encodeOutput returns the JSON text of a task output (nil for none). The
// orchestrator hands durable stores json.RawMessage; other values are
// encoded here.
func encodeOutput(v any, task string) ([]byte, error) {
	var b []byte
	switch o := v.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		b = o
		if string(b) == "null" {
			return nil, nil // no output: stored as SQL NULL, read back as nil
		}
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			return nil, fmt.Errorf("batutapg: %w: output of task %s: %v", batuta.ErrInvalidPayload, task, err)
		}
	}
	if len(b) == 0 {
		return nil, nil
	}
	if !utf8.Valid(b) || !json.Valid(b) {
		return nil, fmt.Errorf("batutapg: %w: output of task %s is not valid JSON text", batuta.ErrInvalidPayload, task)
	}
	return b, nil
}

// completeOn runs the completion statement for in, after locking the runs
// involved in id order: in tx, the caller's transaction, or (tx nil) in a
// transaction of its own.
func (s *Store) completeOn(ctx context.Context, tx pgx.Tx, in *compInput, maxRescues int, now time.Time) ([]compResult, error) {
	var out []compResult
	var wake bool
	var err error
	if tx != nil {
		b := &pgx.Batch{}
		locked := s.queueCompletion(b, in, maxRescues, now)
		br := tx.SendBatch(ctx, b)
		out, wake, err = s.readCompletion(br, len(in.runs), locked)
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err == nil && wake {
			// The work appears when the caller commits: notify
			// transactionally (our own listener relays it locally).
			_, err = tx.Exec(ctx, s.q.notify, s.channel, "")
		}
		if err != nil {
			return nil, err
		}
		return out, nil
	}
	var locked bool
	err = s.sendHot(ctx, false, func(b *pgx.Batch) { locked = s.queueCompletion(b, in, maxRescues, now) }, func(br pgx.BatchResults) error {
		var err error
		out, wake, err = s.readCompletion(br, len(in.runs), locked)
		return err
	})
	if err != nil {
		return nil, err
	}
	finished := 0
	for _, r := range out {
		if r.finished != "" {
			finished++
		}
	}
	if finished > 0 {
		s.active.add(-finished)
	}
	if wake {
		s.workAppeared()
	}
	return out, nil
}

// Lease tokens are nextval(tokens) * 65536 + soloBit (the run has no other
// task) + the task's index: a completion finds its task by primary key and
// knows, before asking the database, whether its run must be locked.
const (
	tokenSoloBit  = 1 << 15
	tokenIndexMax = tokenSoloBit - 1
)

// queueCompletion queues the run locks (of runs with several tasks; the
// task row of a run's only task serialises its writers) and the
// completion statement. It reports whether it queued the locks.
func (s *Store) queueCompletion(b *pgx.Batch, in *compInput, maxRescues int, now time.Time) bool {
	var runs [][16]byte
	for i, tok := range in.tokens {
		if tok&tokenSoloBit == 0 {
			runs = append(runs, in.runs[i])
		}
	}
	if len(runs) > 0 {
		sort.Slice(runs, func(i, j int) bool { return string(runs[i][:]) < string(runs[j][:]) })
		b.Queue(s.q.lockRuns, runs)
	}
	b.Queue(s.q.complete, in.runs, in.tasks, in.tokens, in.outcomes, in.outputs, in.errs, in.recs,
		in.retryAt, in.leaseBefore, in.at, maxRescues, now)
	return len(runs) > 0
}

// readCompletion reads what queueCompletion queued.
func (s *Store) readCompletion(br pgx.BatchResults, n int, locked bool) ([]compResult, bool, error) {
	if locked {
		if _, err := br.Exec(); err != nil {
			return nil, false, err
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	out := make([]compResult, n)
	wake := false
	for rows.Next() {
		var (
			kind, text string
			ord, cnt   int64
		)
		if err := rows.Scan(&kind, &ord, &text, &cnt); err != nil {
			return nil, false, err
		}
		if kind != "n" && (ord < 1 || int(ord) > n) {
			return nil, false, fmt.Errorf("completion result for item %d of %d", ord, n)
		}
		switch kind {
		case "d":
			out[ord-1].applied, out[ord-1].newState = true, text
		case "r":
			out[ord-1].ready = int(cnt)
			wake = true
		case "f":
			out[ord-1].finished = batuta.RunState(text)
		case "i":
			out[ord-1].idem = true
			out[ord-1].finished = batuta.RunState(text)
			out[ord-1].ready = int(cnt)
			wake = wake || cnt > 0
		case "n":
			wake = wake || cnt > 0
		}
	}
	return out, wake, rows.Err()
}

// CompleteInTx records the success of the claimed task ref inside tx, the
// caller's transaction, together with the task's own database writes: if
// tx commits, the effect and the task's success are recorded together,
// exactly once; if it rolls back (or the process dies first), neither is,
// and the task runs again. output is the task's output (a json.RawMessage
// or a value encoded with encoding/json; nil for none). The attempt is
// recorded as started when it was claimed and finished now (time.Now).
//
// It returns an error wrapping batuta.ErrLeaseLost, and writes nothing, if
// ref no longer holds the task (the lease expired and another worker took
// over): roll tx back then. Calling it again for a task it already
// completed under the same token returns nil. When the task function then
// returns, the orchestrator's own OutcomeSucceeded completion of the same
// claim is a no-op (see CompleteTasks).
//
// tx must be on the store's database. The run's row stays locked until tx
// ends, so keep tx short.
func (s *Store) CompleteInTx(ctx context.Context, tx pgx.Tx, ref batuta.ClaimRef, output any) error {
	id, ok := parseUUID(ref.RunID)
	if !ok {
		return fmt.Errorf("batutapg: complete run %s task %s in tx: %w", ref.RunID, ref.Task, batuta.ErrLeaseLost)
	}
	if _, err := tx.Exec(ctx, s.q.lockRuns, [][16]byte{id}); err != nil {
		return fmt.Errorf("batutapg: complete in tx: %w", err)
	}
	var attempt int32
	var claimedAt pgtype.Timestamptz
	err := tx.QueryRow(ctx, s.q.taskForTx, id, ref.Task, ref.Token).Scan(&attempt, &claimedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		attempt = 0 // let the fenced statement decide: lease lost, or already done
	} else if err != nil {
		return fmt.Errorf("batutapg: complete in tx: %w", err)
	}
	now := time.Now()
	c := batuta.Completion{
		ClaimRef: ref, Outcome: batuta.OutcomeSucceeded, Attempt: int(attempt), Output: output,
		StartedAt: claimedAt.Time, FinishedAt: now,
	}
	if !claimedAt.Valid {
		c.StartedAt = now
	}
	in := newCompInput(1)
	if err := in.add(&c, time.Time{}); err != nil {
		return err
	}
	res, err := s.completeOn(ctx, tx, in, 0, now)
	if err != nil {
		return fmt.Errorf("batutapg: complete in tx: %w", err)
	}
	if !res[0].applied && !res[0].idem {
		return fmt.Errorf("batutapg: complete run %s task %s in tx: %w", ref.RunID, ref.Task, batuta.ErrLeaseLost)
	}
	return nil
}

// rescueBatch is how many expired leases one rescue statement handles.
const rescueBatch = 500

// RescueExpired implements batuta.Store: running tasks whose lease expired
// before now go back to the ready set (their old token is void), or fail
// once they were rescued more than maxRescues times; their run's row is
// locked like any completion's, so rescue and completion never race.
func (s *Store) RescueExpired(ctx context.Context, now time.Time, maxRescues int) (int, int, error) {
	var rescued, failed int
	for {
		cands, err := s.expiredLeases(ctx, now)
		if err != nil {
			return rescued, failed, err
		}
		if len(cands) == 0 {
			return rescued, failed, nil
		}
		in := newCompInput(len(cands))
		for i := range cands {
			c := batuta.Completion{ClaimRef: cands[i], Outcome: outcomeRescue, FinishedAt: now}
			if err := in.add(&c, now); err != nil {
				return rescued, failed, err
			}
		}
		var res []compResult
		err = withRetry(ctx, func() error {
			var err error
			res, err = s.completeOn(ctx, nil, in, maxRescues, now)
			return err
		})
		if err != nil {
			return rescued, failed, fmt.Errorf("batutapg: rescue expired leases: %w", err)
		}
		for _, r := range res {
			switch {
			case !r.applied:
			case r.newState == string(batuta.TaskPending):
				rescued++
			case r.newState == string(batuta.TaskFailed):
				failed++
			}
		}
		if len(cands) < rescueBatch {
			return rescued, failed, nil
		}
	}
}

func (s *Store) expiredLeases(ctx context.Context, now time.Time) ([]batuta.ClaimRef, error) {
	var out []batuta.ClaimRef
	err := s.query(ctx, s.q.expired, []any{now, rescueBatch}, func(rows pgx.Rows) error {
		var id [16]byte
		var ref batuta.ClaimRef
		if err := rows.Scan(&id, &ref.Task, &ref.Token); err != nil {
			return err
		}
		ref.RunID = formatUUID(id)
		out = append(out, ref)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("batutapg: rescue expired leases: %w", err)
	}
	return out, nil
}
