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
//
// A combined batch waits at most Config.CompletionLockWait for the run rows
// it locks; past that, the completions of the runs nobody else holds are
// committed at once (the others' callers are answered), and the completions
// of the held runs are sent again on their own, waiting for their rows.
func (s *Store) CompleteTasks(ctx context.Context, cs []batuta.Completion) ([]batuta.CompleteResult, error) {
	out, _, err := s.completeAndClaim(ctx, cs, nil)
	return out, err
}

// CompleteTasksAndClaim implements batuta.ClaimingCompleter: it records cs
// as CompleteTasks does and, in the same transaction (one round trip, one
// commit), claims up to p.Limit tasks as ClaimTasks(p) would. Concurrent
// calls, with or without claims, are combined as CompleteTasks' are. The
// claim is left out (and the caller claims apart) when the completions
// are recorded apart: a batch that waited past CompletionLockWait, or a
// completion of a child run's task.
func (s *Store) CompleteTasksAndClaim(ctx context.Context, cs []batuta.Completion, p batuta.ClaimParams) ([]batuta.CompleteResult, []batuta.Claim, error) {
	if p.Limit <= 0 {
		out, err := s.CompleteTasks(ctx, cs)
		return out, nil, err
	}
	if len(cs) == 0 {
		claims, err := s.ClaimTasks(ctx, p)
		return nil, claims, err
	}
	return s.completeAndClaim(ctx, cs, &p)
}

// completeAndClaim is CompleteTasks, and CompleteTasksAndClaim when p is
// not nil.
func (s *Store) completeAndClaim(ctx context.Context, cs []batuta.Completion, p *batuta.ClaimParams) ([]batuta.CompleteResult, []batuta.Claim, error) {
	if len(cs) == 0 {
		return nil, nil, nil
	}
	var res []compOut
	var err error
	if p != nil && len(cs) == 1 && p.Limit == 1 && stepCandidate(&cs[0]) && s.takeStepSlot() {
		// A chain step: in a transaction of its own rather than after
		// whatever batch the combiner has in flight.
		res, err = s.flushCompletions(ctx, []compItem{{c: cs[0], claim: p}})
		<-s.stepSlots
	} else {
		items := make([]compItem, len(cs))
		for i := range cs {
			items[i].c = cs[i]
		}
		items[0].claim = p
		res, err = s.completes.do(ctx, items)
	}
	if err != nil {
		return nil, nil, err
	}
	out := make([]batuta.CompleteResult, len(res))
	var busy []int
	for i := range res {
		out[i] = res[i].res
		if errors.Is(out[i].Err, errRunLocked) {
			busy = append(busy, i)
		}
	}
	if len(busy) == 0 {
		return out, res[0].claims, nil
	}
	// Their runs are held by another transaction: wait for them, alone.
	// (The batch was recorded apart, skipping locked rows, and claimed
	// nothing: the caller claims apart.)
	rest := make([]batuta.Completion, len(busy))
	for k, i := range busy {
		rest[k] = cs[i]
	}
	more, _, err := s.completeBatch(ctx, rest, setGeneric, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, i := range busy {
		out[i] = more[k]
	}
	return out, nil, nil
}

// compItem is one completion for the completion combiner, with the claim
// its caller wants made in the same transaction (nil: none).
type compItem struct {
	c     batuta.Completion
	claim *batuta.ClaimParams
}

// compOut is the combiner's answer for a compItem.
type compOut struct {
	res    batuta.CompleteResult
	claims []batuta.Claim
}

// errRunLocked marks a completion of a combined batch whose run row was held
// by another transaction past CompletionLockWait; CompleteTasks sends it
// again on its own.
var errRunLocked = errors.New("batutapg: run row held by another transaction")

func (s *Store) flushCompletions(ctx context.Context, items []compItem) ([]compOut, error) {
	cs := make([]batuta.Completion, len(items))
	var ps []batuta.ClaimParams
	var who []int
	for i := range items {
		cs[i] = items[i].c
		if p := items[i].claim; p != nil {
			ps = append(ps, *p)
			who = append(who, i)
		}
	}
	res, claims, err := s.completeBatch(ctx, cs, s.setBounded, ps)
	if err != nil {
		return nil, err
	}
	out := make([]compOut, len(items))
	for i := range res {
		out[i].res = res[i]
	}
	for k, i := range who {
		if claims != nil {
			out[i].claims = claims[k]
		}
	}
	return out, nil
}

// completeBatch records cs in one transaction configured by set and, with
// ps, claims for each of ps in the same transaction (claims[k] for ps[k];
// claims is nil when the claim was left out). If set bounds lock waits
// and the bound is hit, the items whose rows are not held are recorded
// (in a new transaction, skipping locked rows, claiming nothing) and the
// others get errRunLocked.
func (s *Store) completeBatch(ctx context.Context, cs []batuta.Completion, set string, ps []batuta.ClaimParams) ([]batuta.CompleteResult, [][]batuta.Claim, error) {
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
		return out, nil, nil
	}
	var fc *fusedClaim
	if len(ps) > 0 && !in.hasChild() {
		var err error
		if fc, err = s.newFusedClaim(ctx, ps); err != nil {
			s.log.Debug("batutapg: completing without a claim", "schema", s.cfg.Schema, "error", err)
			fc = nil
		}
	}
	if !s.noStep && fc != nil && len(ps) == 1 && ps[0].Limit == 1 && in.stepable() && fc.pl.plain && !fc.pl.promote {
		if r, cs, ok := s.completeStep(ctx, in, set, fc); ok {
			out[idx[0]].Ready, out[idx[0]].RunFinished = r.ready, r.finished
			return out, [][]batuta.Claim{cs}, nil
		}
	}
	var res []compResult
	var locked []bool
	claimed := false
	err := withRetry(ctx, func() error {
		var err error
		now := time.Now()
		claimed = false
		if fc != nil {
			fc.reset()
		}
		res, err = s.completeOnSet(ctx, in, 0, now, set, fc)
		locked = nil
		switch {
		case err == nil:
			claimed = fc != nil
		case lockNotAvailable(err) && set != setGeneric:
			res, locked, err = s.completeSkipLocked(ctx, in, 0, now)
		case fc != nil && !retryable(err):
			// The transaction may have committed with its reply lost:
			// release whatever its claims took.
			s.lostClaims(fc.pl.reqs)
		}
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("batutapg: complete tasks: %w", err)
	}
	for k, i := range idx {
		r := res[k]
		c := &cs[i]
		switch {
		case locked != nil && !locked[k]:
			out[i].Err = fmt.Errorf("batutapg: complete run %s task %s: %w", c.RunID, c.Task, errRunLocked)
		case r.applied, r.idem:
			out[i].Ready, out[i].RunFinished = r.ready, r.finished
		default:
			out[i].Err = fmt.Errorf("batutapg: complete run %s task %s: %w", c.RunID, c.Task, batuta.ErrLeaseLost)
		}
	}
	if !claimed {
		return out, nil, nil
	}
	s.claimHints(fc.pl, ps, fc.out)
	return out, fc.out, nil
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
	rateRes     []bool
	waitFor     []string
	child       []string
	consume     []int64
	delayed     []time.Time // RetryAt of the items (any order)
	// ops: an item needs the full statement's wait and signal steps
	// (OutcomeWait, a signal delivered, a signal consumed).
	ops bool
}

// outcomeSignal is the internal outcome SendSignal feeds the completion
// statement: a signal completes the waiting task it names (by index, in the
// low bits of the token), which holds no lease.
const outcomeSignal batuta.Outcome = "signal"

func newCompInput(n int) *compInput {
	return &compInput{
		runs: make([][16]byte, 0, n), tasks: make([]string, 0, n), tokens: make([]int64, 0, n),
		outcomes: make([]string, 0, n), outputs: make([][]byte, 0, n), errs: make([]string, 0, n),
		recs: make([]pgtype.Text, 0, n), retryAt: make([]pgtype.Timestamptz, 0, n),
		leaseBefore: make([]pgtype.Timestamptz, 0, n), at: make([]pgtype.Timestamptz, 0, n),
		rateRes: make([]bool, 0, n), waitFor: make([]string, 0, n), child: make([]string, 0, n),
		consume: make([]int64, 0, n),
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
	case outcomeSignal:
		var err error
		if output, err = encodeOutput(c.Output, c.Task); err != nil {
			return err
		}
		in.ops = true
	case batuta.OutcomeWait:
		in.ops = true
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
		a := batuta.Attempt{Number: c.Attempt, StartedAt: c.StartedAt, FinishedAt: c.FinishedAt, Outcome: oc, Error: cleanText(c.Error)}
		if oc == batuta.OutcomeSnooze {
			a.Snoozes = 1 // counted up by the statement when it follows another
		}
		var err error
		rec, err = json.Marshal(a)
		if err != nil {
			return fmt.Errorf("batutapg: complete run %s task %s: %w", c.RunID, c.Task, err)
		}
	case batuta.OutcomeSkipped, batuta.OutcomeUpstreamFailed, batuta.OutcomeCanceled, batuta.OutcomeRelease, batuta.OutcomeDefer, outcomeRescue:
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
	in.rateRes = append(in.rateRes, c.Outcome == batuta.OutcomeDefer && c.RateReserved)
	in.waitFor = append(in.waitFor, cleanText(c.WaitFor))
	in.child = append(in.child, cleanText(c.Child))
	in.consume = append(in.consume, c.ConsumeSignal)
	if c.ConsumeSignal != 0 {
		in.ops = true
	}
	if !c.RetryAt.IsZero() {
		in.delayed = append(in.delayed, c.RetryAt)
	}
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
			return nil, fmt.Errorf("batutapg: %w: output of task %s: %w", batuta.ErrInvalidPayload, task, err)
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
		if err == nil && in.hasChild() {
			var w bool
			w, err = s.wakeParents(ctx, tx, finishedRuns(in.runs, out))
			wake = wake || w
		}
		if err == nil && wake {
			// The work appears when the caller commits: notify
			// transactionally (our own listener relays it locally).
			_, err = tx.Exec(ctx, s.q.notify, s.channel, "")
		}
		if ids := finishedRuns(in.runs, out); err == nil && len(ids) > 0 {
			// So does the run's end.
			for _, p := range donePayloads(ids) {
				if _, err = tx.Exec(ctx, s.q.notify, s.doneChannel, p); err != nil {
					break
				}
			}
		}
		if err != nil {
			return nil, err
		}
		return out, nil
	}
	return s.completeOnSet(ctx, in, maxRescues, now, setGeneric, nil)
}

// completeOnSet is completeOn in a transaction of its own, configured by
// set.
// With fc (and no child run among the items: fc is then ignored), the
// claims fc holds run after the completion statement, in its transaction.
func (s *Store) completeOnSet(ctx context.Context, in *compInput, maxRescues int, now time.Time, set string, fc *fusedClaim) ([]compResult, error) {
	var out []compResult
	var wake, locked bool
	var err error
	if in.hasChild() {
		// The parents of the runs it finishes are counted down in the
		// same transaction, after the completion statement.
		err = s.inTx(ctx, set, func(tx pgx.Tx) error {
			b := &pgx.Batch{}
			locked = s.queueCompletion(b, in, maxRescues, now)
			br := tx.SendBatch(ctx, b)
			var err error
			out, wake, err = s.readCompletion(br, len(in.runs), locked)
			if cerr := br.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			w, err := s.wakeParents(ctx, tx, finishedRuns(in.runs, out))
			wake = wake || w
			return err
		})
	} else {
		err = s.sendHotSet(ctx, set, func(b *pgx.Batch) {
			locked = s.queueCompletion(b, in, maxRescues, now)
			if fc != nil {
				s.queueClaims(b, fc.groups, fc.pl)
			}
		}, func(br pgx.BatchResults) error {
			var err error
			out, wake, err = s.readCompletion(br, len(in.runs), locked)
			if err == nil && fc != nil {
				err = fc.pl.read(br, fc.groups, fc.ps, fc.out)
			}
			return err
		})
	}
	if err != nil {
		return nil, err
	}
	if wake && fc != nil && !in.full() && fc.tookReady(in, out) {
		// The tasks the completions made ready (of runs outside any
		// concurrency group) were claimed in the same transaction:
		// nobody needs waking for them.
		wake = false
	}
	finished := 0
	for _, r := range out {
		if r.finished != "" {
			finished++
		}
	}
	if finished > 0 {
		s.active.add(-finished)
		s.runsFinished(finishedRuns(in.runs, out))
	}
	if wake {
		s.workAppeared()
	}
	return out, nil
}

// finishedRuns returns the runs (in canonical form) whose end the
// completion results report.
func finishedRuns(runs [][16]byte, res []compResult) []string {
	var ids []string
	for k, r := range res {
		if r.finished != "" && k < len(runs) {
			ids = append(ids, formatUUID(runs[k]))
		}
	}
	return ids
}

// Lease tokens are nextval(tokens) * 1048576 + linkBit (the task has
// exactly one dependent) + depsBit (the task has dependents) + childBit + flowBit (the task or its run is in a
// concurrency group: its completion has group slots to free) + soloBit
// (the run has no other task) + the task's index: a completion finds its
// task by primary key and knows, before asking the database, whether its
// run must be locked and which statement records it. The bits are hints
// for choosing statements: a token from before a bit existed (the
// multiplier was 262144 before tokenDepsBit, 524288 before tokenLinkBit)
// may carry it wrongly, which costs a statement that finds less to do,
// never a wrong result.
//
// tokenChildBit marks a task of a child run (NewRun.Parent): a completion
// that finishes its run counts its parent task's open children down.
//
// tokenDepsBit marks a task with dependents: its success goes through
// completeStep when its caller claims with it; tokenLinkBit one with
// exactly one dependent, a chain's link (the link statement).
const (
	tokenLinkBit  = 1 << 19
	tokenDepsBit  = 1 << 18
	tokenChildBit = 1 << 17
	tokenFlowBit  = 1 << 16
	tokenSoloBit  = 1 << 15
	tokenIndexMax = tokenSoloBit - 1
	// tokenSeqMax is the tokens sequence's last value (migration 7): the
	// largest whose token, times the multiplier, stays within bigint. The
	// sequence then starts again at 1.
	tokenSeqMax = 1<<43 - 1
)

// queueCompletion queues the run locks (of runs with several tasks; the
// task row of a run's only task serialises its writers) and the
// completion statement. It reports whether it queued the locks.
func (s *Store) queueCompletion(b *pgx.Batch, in *compInput, maxRescues int, now time.Time) bool {
	// Tasks due at a RetryAt go to the delayed set: the claim whose clock
	// reaches it must promote them.
	for _, t := range in.delayed {
		s.noteDelayed(t)
	}
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
	if in.full() {
		b.Queue(s.q.complete, in.runs, in.tasks, in.tokens, in.outcomes, in.outputs, in.errs, in.recs,
			in.retryAt, in.leaseBefore, in.at, maxRescues, now, in.rateRes, in.waitFor, in.child, in.consume)
	} else {
		b.Queue(s.q.completePlain, in.runs, in.tasks, in.tokens, in.outcomes, in.outputs, in.errs, in.recs,
			in.retryAt, in.leaseBefore, in.at, maxRescues, now, in.rateRes)
	}
	return len(runs) > 0
}

// full reports whether the items need the full completion statement:
// concurrency groups (tokenFlowBit), child runs (tokenChildBit), waits and
// signals.
func (in *compInput) full() bool {
	if in.ops {
		return true
	}
	for _, tok := range in.tokens {
		if tok&(tokenFlowBit|tokenChildBit) != 0 {
			return true
		}
	}
	return false
}

// hasChild reports whether an item is a task of a child run, whose run, if
// the completion finishes it, has a parent task to count down.
func (in *compInput) hasChild() bool {
	for _, tok := range in.tokens {
		if tok&tokenChildBit != 0 {
			return true
		}
	}
	return false
}

// readCompletion reads what queueCompletion queued.
func (s *Store) readCompletion(br pgx.BatchResults, n int, locked bool) ([]compResult, bool, error) {
	out, ready, slots, err := s.readCompletionWake(br, n, locked)
	return out, ready || slots, err
}

// readCompletionWake is readCompletion telling apart the two reasons to
// wake workers: ready, tasks the items made ready (out[i].ready counts
// them), and slots, a task back in the ready set or a group slot freed
// with runs or tasks waiting for it (work no claim of the caller's can be
// sure to have taken).
func (s *Store) readCompletionWake(br pgx.BatchResults, n int, locked bool) (out []compResult, ready, slots bool, err error) {
	if locked {
		if _, err := br.Exec(); err != nil {
			return nil, false, false, err
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, false, false, err
	}
	defer rows.Close()
	out = make([]compResult, n)
	for rows.Next() {
		var (
			kind, text string
			ord, cnt   int64
		)
		if err := rows.Scan(&kind, &ord, &text, &cnt); err != nil {
			return nil, false, false, err
		}
		if kind != "n" && (ord < 1 || int(ord) > n) {
			return nil, false, false, fmt.Errorf("completion result for item %d of %d", ord, n)
		}
		switch kind {
		case "d":
			out[ord-1].applied, out[ord-1].newState = true, text
		case "r":
			out[ord-1].ready = int(cnt)
			ready = true
		case "f":
			out[ord-1].finished = batuta.RunState(text)
		case "i":
			out[ord-1].idem = true
			out[ord-1].finished = batuta.RunState(text)
			out[ord-1].ready = int(cnt)
			ready = ready || cnt > 0
		case "n":
			slots = slots || cnt > 0
		}
	}
	return out, ready, slots, rows.Err()
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
// once they were rescued more than maxRescues times. now is read from
// Config.Clock and judged on the database's clock (see Config.Clock), and
// the tasks of owners whose liveness row is stale are rescued too. The
// rescue never waits for a lock: a task whose run row or task row another
// transaction holds (a slow CompleteInTx, say) is left for the next call,
// and the others are rescued now.
func (s *Store) RescueExpired(ctx context.Context, now time.Time, maxRescues int) (int, int, error) {
	s.live.maxRescues.Store(int64(maxRescues))
	before := s.toDB(now)
	var rescued, failed int
	for {
		cands, err := s.expiredLeases(ctx, before)
		if err != nil {
			return rescued, failed, err
		}
		if len(cands) == 0 {
			break
		}
		n, f, applied, err := s.rescue(ctx, cands, before, maxRescues, now)
		rescued, failed = rescued+n, failed+f
		if err != nil {
			return rescued, failed, fmt.Errorf("batutapg: rescue expired leases: %w", err)
		}
		if len(cands) < rescueBatch || applied == 0 {
			break
		}
	}
	if s.cfg.LivenessInterval > 0 {
		n, f, err := s.rescueDeadOwners(ctx, maxRescues, now)
		rescued, failed = rescued+n, failed+f
		if err != nil {
			return rescued, failed, err
		}
	}
	return rescued, failed, nil
}

// rescue feeds cands to the completion statement as rescues whose lease
// expired before leaseBefore (database clock; voidLease for dead owners),
// skipping the ones whose rows are locked. It reports the tasks rescued,
// failed past maxRescues, and how many candidates it could lock.
func (s *Store) rescue(ctx context.Context, cands []batuta.ClaimRef, leaseBefore time.Time, maxRescues int, now time.Time) (rescued, failed, applied int, err error) {
	in := newCompInput(len(cands))
	for i := range cands {
		c := batuta.Completion{ClaimRef: cands[i], Outcome: outcomeRescue, FinishedAt: now}
		if err := in.add(&c, leaseBefore); err != nil {
			return 0, 0, 0, err
		}
	}
	var res []compResult
	var locked []bool
	err = withRetry(ctx, func() error {
		var err error
		res, locked, err = s.completeSkipLocked(ctx, in, maxRescues, now)
		return err
	})
	if err != nil {
		return 0, 0, 0, err
	}
	for i, r := range res {
		if locked[i] {
			applied++
		}
		switch {
		case !r.applied:
		case r.newState == string(batuta.TaskPending):
			rescued++
		case r.newState == string(batuta.TaskFailed):
			failed++
		}
	}
	return rescued, failed, applied, nil
}

// completeSkipLocked runs the completion statement for the items of in
// whose run row (runs of several tasks) and task row it can lock at once,
// in one transaction, and reports which those were; the others are not
// touched (their results are zero).
func (s *Store) completeSkipLocked(ctx context.Context, in *compInput, maxRescues int, now time.Time) ([]compResult, []bool, error) {
	out := make([]compResult, len(in.runs))
	locked := make([]bool, len(in.runs))
	var wake bool
	var finished int
	err := s.conns.with(ctx, func(c *pgx.Conn) error {
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if _, err := tx.Exec(ctx, setGeneric); err != nil {
			return err
		}
		var idx []int
		rows, err := tx.Query(ctx, s.lq.lockSkip, in.runs, in.tokens)
		if err != nil {
			return err
		}
		for rows.Next() {
			var ord int64
			if err := rows.Scan(&ord); err != nil {
				rows.Close()
				return err
			}
			if ord >= 1 && int(ord) <= len(in.runs) {
				idx = append(idx, int(ord)-1)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(idx) == 0 {
			return tx.Commit(ctx)
		}
		sort.Ints(idx)
		sub := in.subset(idx)
		b := &pgx.Batch{}
		lk := s.queueCompletion(b, sub, maxRescues, now)
		br := tx.SendBatch(ctx, b)
		res, w, err := s.readCompletion(br, len(idx), lk)
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if sub.hasChild() {
			pw, err := s.wakeParents(ctx, tx, finishedRuns(sub.runs, res))
			if err != nil {
				return err
			}
			w = w || pw
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		clear(out)
		clear(locked)
		finished, wake = 0, w
		for k, i := range idx {
			out[i], locked[i] = res[k], true
			if res[k].finished != "" {
				finished++
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if finished > 0 {
		s.active.add(-finished)
		s.runsFinished(finishedRuns(in.runs, out))
	}
	if wake {
		s.workAppeared()
	}
	return out, locked, nil
}

// subset returns the items of in at the given indexes.
func (in *compInput) subset(idx []int) *compInput {
	out := newCompInput(len(idx))
	for _, i := range idx {
		out.runs = append(out.runs, in.runs[i])
		out.tasks = append(out.tasks, in.tasks[i])
		out.tokens = append(out.tokens, in.tokens[i])
		out.outcomes = append(out.outcomes, in.outcomes[i])
		out.outputs = append(out.outputs, in.outputs[i])
		out.errs = append(out.errs, in.errs[i])
		out.recs = append(out.recs, in.recs[i])
		out.retryAt = append(out.retryAt, in.retryAt[i])
		out.leaseBefore = append(out.leaseBefore, in.leaseBefore[i])
		out.at = append(out.at, in.at[i])
		out.rateRes = append(out.rateRes, in.rateRes[i])
		out.waitFor = append(out.waitFor, in.waitFor[i])
		out.child = append(out.child, in.child[i])
		out.consume = append(out.consume, in.consume[i])
	}
	out.ops = in.ops
	return out
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
