package batuta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"time"
)

// abandonGrace is how long a worker waits, after an attempt's ctx was
// canceled (timeout, shutdown, lost lease), for the body to return before it
// abandons the attempt as ignoring its ctx. It only delays the abandonment
// of a body that really ignores its ctx.
const abandonGrace = 250 * time.Millisecond

// PanicError is the error of an attempt whose task panicked. It carries the
// panic value and the stack.
type PanicError struct {
	Value any
	Stack string
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("batuta: task panicked: %v\n%s", e.Value, e.Stack)
}

func newPanicError(v any) *PanicError { return &PanicError{Value: v, Stack: string(debug.Stack())} }

func (ex *executor) worker() {
	defer ex.workersWG.Done()
	sl := &slot{}
	ex.mu.Lock()
	ex.slots = append(ex.slots, sl)
	ex.mu.Unlock()
	for sl.cur = range ex.work {
		if nb := sl.cur.notBefore; !nb.IsZero() && !ex.waitNotBefore(nb) {
			// Shutting down before the task's time: back to the store.
			ex.releaseClaims([]Claim{sl.cur}, "claimed ahead of their time while shutting down")
			ex.busy.Add(-1)
			continue
		}
		c := &sl.cur
		sl.hint = claimHint{pos: -1} // set by the fused path for the claims it makes
		var claimedAt time.Time      // zero: read the clock when the task starts
		for c != nil {
			sl.next, sl.claimed = nil, false
			ready := ex.execute(sl, c, claimedAt)
			c, claimedAt = nil, time.Time{}
			if sl.claimed {
				// The store claimed with the completion (memory store).
				if sl.next != nil {
					c = sl.next
					if sl.hint.nowStarts {
						claimedAt = sl.params.Now
					}
				}
				continue
			}
			// Take the next task here rather than through the dispatcher:
			// always a task this completion made ready, with a store where
			// an empty claim is cheap (not durable) any ready task, and with
			// a durable one while a burst of ready tasks lasts (the
			// dispatcher would claim them one round trip at a time).
			if (ready || !ex.durable || ex.backlog.Load()) && !ex.draining.Load() {
				// The clock read at the end of the task serves as now.
				now := sl.comp[0].FinishedAt
				cs, err := ex.claimInto(sl.buf[:0], 1, now)
				if err == nil && len(cs) == 1 {
					c, sl.hint = &cs[0], claimHint{pos: -1}
				} else if !ready {
					ex.backlog.Store(false)
				}
			}
		}
		if ex.busy.Add(-1) == ex.nwork-1 {
			ex.poke() // the dispatcher may be waiting for a free worker
		}
	}
}

// waitNotBefore waits until t, the time a task claimed ahead starts at
// (see claimAhead); false if the executor began shutting down first.
func (ex *executor) waitNotBefore(t time.Time) bool {
	d := t.Sub(ex.o.clock.Now())
	if d <= 0 {
		return true
	}
	timer := ex.o.clock.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C():
		return true
	case <-ex.stopDispatch:
		return false
	}
}

// execute runs one claimed task (or skips, fails or releases it) and
// records the outcome. It reports whether the completion made tasks ready.
// claimedAt, if not zero, is the clock read the claim was made with, just
// before, when the store saw nothing the claimed task waited for happen
// later (see MemoryStore.startsByLocked): it serves as the attempt's start
// unless the task has a timeout, a run deadline or a rate limit (then the
// clock is read again), so that such a task costs one clock read.
func (ex *executor) execute(sl *slot, c *Claim, claimedAt time.Time) bool {
	o := ex.o
	cw, ct := ex.lookup(sl, c)
	defer func() {
		if cw != nil && cw.localCap > 0 {
			ex.mu.Lock()
			ex.limited[cw.name]--
			ex.mu.Unlock()
			ex.poke() // room under the workflow's cap
		}
	}()
	comp := &sl.comp[0]
	now := claimedAt
	if now.IsZero() || ct == nil || ct.timeout > 0 || ct.rate != nil || ct.wait != nil || !c.RunDeadline.IsZero() {
		now = o.clock.Now()
	}
	*comp = Completion{ClaimRef: c.Ref(), Attempt: c.Attempt, FinishedAt: now}
	ranAttempt := false
	var info AttemptInfo
	var hookCtx context.Context
	join, joinWhy := joinRun, ""
	if ct != nil {
		join, joinWhy = ct.when.decide(c.Upstream)
	}
	switch {
	case ct == nil:
		comp.Outcome, comp.Error = OutcomeFailed, fmt.Sprintf("task %s/%s is not registered in this process", c.Workflow, c.Task)
	case ex.draining.Load():
		comp.Outcome = OutcomeRelease
	case join == joinSkip:
		comp.Outcome, comp.Error = OutcomeSkipped, joinWhy
	case join == joinUpstreamFailed:
		comp.Outcome, comp.Error = OutcomeUpstreamFailed, joinWhy
	case ct.wait != nil && (c.RunDeadline.IsZero() || now.Before(c.RunDeadline)) && ex.waited(sl, c, ct, comp, now):
		// A timer or a signal wait (wait.go): handed back to wait, or
		// finished without a body. No attempt is spent.
	case !c.RunDeadline.IsZero() && !now.Before(c.RunDeadline):
		comp.Outcome, comp.Error = OutcomeFailed, fmt.Sprintf("%v: run exceeded its workflow timeout before the task started", ErrTimeout)
		comp.StartedAt, comp.FinishedAt = now, now
	case ct.sub != nil && !ct.sub.item:
		ranAttempt, hookCtx = ex.subStep(sl, c, ct, comp, &info, now)
	case ct.rate != nil && !c.RateReserved && ex.rateDeferred(sl, c, ct, comp, now):
		// Handed back until its rate-limit slot: no attempt spent.
	default:
		ranAttempt = true
		info = AttemptInfo{RunID: c.RunID, Workflow: c.Workflow, Task: c.Task, Attempt: c.Attempt, Started: now}
		hookCtx = ex.attempt(sl, c, ct, comp, &info)
	}
	ok := ex.complete(sl, c)
	if ranAttempt {
		info.Outcome, info.TimedOut = comp.Outcome, comp.TimedOut
		info.Finished = comp.FinishedAt
		for _, h := range o.hooks {
			h.AttemptFinished(hookCtx, info)
		}
	}
	return ok
}

// attempt runs the task body and fills comp with the outcome.
func (ex *executor) attempt(sl *slot, c *Claim, ct *compiledTask, comp *Completion, info *AttemptInfo) context.Context {
	o := ex.o
	start := info.Started
	deadline := time.Time{}
	if ct.timeout > 0 {
		deadline = start.Add(ct.timeout)
	}
	runDeadline := !c.RunDeadline.IsZero() && (deadline.IsZero() || c.RunDeadline.Before(deadline))
	if runDeadline {
		deadline = c.RunDeadline
	}
	tc := sl.newTaskCtx(&ex.bgCtx)
	defer tc.cancel(errAttemptDone)
	var taskCtx context.Context = tc
	if !deadline.IsZero() {
		var cancelD context.CancelFunc
		// Deadlines are wall-clock durations measured from the attempt's
		// start: the same on a fake clock.
		taskCtx, cancelD = context.WithTimeout(tc, deadline.Sub(start))
		defer cancelD()
	}
	sl.mu.Lock()
	sl.claim, sl.tctx = c, tc
	sl.mu.Unlock()
	if ex.stopped.Load() { // stopAll may have scanned the slots already
		tc.cancel(errShutdown)
	}
	defer func() {
		sl.mu.Lock()
		sl.claim, sl.tctx = nil, nil
		sl.mu.Unlock()
	}()
	for _, h := range o.hooks {
		taskCtx = h.AttemptStarted(taskCtx, *info)
	}

	var out any
	var err error
	abandoned := false
	if deadline.IsZero() {
		sl.in = Input{claim: c, task: ct, ctx: taskCtx, store: ex.store}
		out, err = callTask(taskCtx, ct.fn, &sl.in)
	} else {
		// Run the body apart, so a task that ignores its ctx cannot hold
		// the worker past its deadline.
		type result struct {
			out any
			err error
		}
		done := make(chan result, 1)
		cc := *c // the worker reuses c's storage; an abandoned body keeps its own copy
		cc.Upstream = slices.Clone(c.Upstream)
		in := &Input{claim: &cc, task: ct, ctx: taskCtx, store: ex.store}
		stuck := &slot{}
		go func() {
			o, e := callTask(taskCtx, ct.fn, in)
			done <- result{o, e}
			ex.mu.Lock()
			delete(ex.stuck, stuck)
			ex.mu.Unlock()
		}()
		select {
		case r := <-done:
			out, err = r.out, r.err
		case <-taskCtx.Done():
			// A body that honours its ctx returns right after the
			// cancellation, but its goroutine may not have been scheduled
			// yet: give it abandonGrace before calling it stuck.
			grace := time.NewTimer(abandonGrace)
			select {
			case r := <-done: // it did return
				grace.Stop()
				out, err = r.out, r.err
			case <-grace.C:
				abandoned = true
				err = tc.causeOf()
				if err == nil {
					err = context.Cause(taskCtx)
				}
				if errors.Is(err, context.DeadlineExceeded) {
					err = fmt.Errorf("%w: task %s exceeded its deadline and ignores ctx", ErrTimeout, c.Task)
				}
				ex.mu.Lock()
				ex.stuck[stuck] = c.Workflow + "/" + c.Task + " (run " + c.RunID + ")"
				ex.mu.Unlock()
				o.log.Warn("batuta: task ignores its canceled context; abandoning the attempt",
					"run", c.RunID, "workflow", c.Workflow, "task", c.Task, "attempt", c.Attempt)
			}
		}
	}
	end := o.clock.Now()
	comp.StartedAt, comp.FinishedAt = start, end
	cause := tc.causeOf()
	timedOut := !deadline.IsZero() && cause == nil && errors.Is(taskCtx.Err(), context.DeadlineExceeded)
	info.Err = err

	switch {
	case err == nil && !abandoned:
		comp.Outcome = OutcomeSucceeded
		if ex.durable {
			b, jerr := json.Marshal(out)
			switch {
			case jerr != nil:
				comp.Outcome, comp.Error = OutcomeFailed, fmt.Sprintf("batuta: output of task %s is not JSON-encodable: %v", c.Task, jerr)
			case len(b) > o.cfg.MaxPayloadBytes:
				comp.Outcome, comp.Error = OutcomeFailed, (&PayloadTooLargeError{What: "output of task " + c.Task, Size: len(b), Limit: o.cfg.MaxPayloadBytes}).Error()
			default:
				comp.Output = json.RawMessage(b)
			}
			if comp.Outcome == OutcomeFailed {
				info.Err = errors.New(comp.Error)
			}
		} else {
			comp.Output = out
		}
		return taskCtx
	case errors.Is(cause, errShutdown):
		comp.Outcome, comp.Error = OutcomeRelease, "orchestrator shut down"
		return taskCtx
	case errors.Is(cause, errLeaseLost):
		// The store will most likely refuse this write (fenced); if it does
		// not, the task simply runs again: at-least-once.
		comp.Outcome, comp.Error = OutcomeRelease, cause.Error()
		return taskCtx
	case errors.Is(cause, errRunCanceled):
		comp.Outcome, comp.Error = OutcomeCanceled, cause.Error()
		return taskCtx
	}
	comp.Error = err.Error()
	comp.TimedOut = timedOut
	var snooze *SnoozeError
	switch {
	case timedOut && runDeadline:
		comp.Outcome = OutcomeFailed
		comp.Error = fmt.Sprintf("%v: workflow timeout reached: %s", ErrTimeout, comp.Error)
	case errors.As(err, &snooze):
		comp.Outcome, comp.RetryAt = OutcomeSnooze, end.Add(snooze.Delay)
	case IsPermanent(err) || c.Attempt >= ct.retry.MaxAttempts:
		comp.Outcome = OutcomeFailed
	default:
		comp.Outcome, comp.RetryAt = OutcomeRetry, end.Add(ct.retry.Backoff(c.Attempt))
	}
	if timedOut && !runDeadline && !errors.Is(err, ErrTimeout) {
		// A body that returned its ctx's error (or anything else) at the
		// deadline: the same ErrTimeout text as an abandoned one.
		comp.Error = fmt.Sprintf("%v: task %s exceeded its timeout of %v: %s", ErrTimeout, c.Task, ct.timeout, comp.Error)
	}
	if !comp.RetryAt.IsZero() {
		ex.addDue(comp.RetryAt)
		ex.poke()
	}
	return taskCtx
}

// rateDeferred reserves a start slot under the task's rate limit. If the
// slot is later than now it fills comp with an OutcomeDefer to that slot
// (RateReserved, so the next claim starts without another reservation) and
// reports true; if the store fails it defers briefly, with backoff, and
// logs (a store error never fails the task). A key function that panics
// fails the task. It reports false when the attempt may start now.
func (ex *executor) rateDeferred(sl *slot, c *Claim, ct *compiledTask, comp *Completion, now time.Time) bool {
	o := ex.o
	r := ct.rate
	key := r.Name
	if r.Key != nil {
		sl.in = Input{claim: c, task: ct, ctx: ex.bgCtx, store: ex.store}
		k, err := callKey(r.Key, &sl.in)
		sl.in = Input{}
		if err != nil {
			comp.Outcome = OutcomeFailed
			comp.Error = fmt.Sprintf("batuta: Task.RateLimit.Key of task %s panicked: %v", c.Task, err)
			comp.StartedAt, comp.FinishedAt = now, now
			return true
		}
		key = flowKey(r.Name, k)
	}
	slot, err := ex.store.ReserveRate(ex.bgCtx, rateSpec(r, key), now)
	if err != nil {
		ex.mu.Lock()
		ex.rateFails++
		n := ex.rateFails
		ex.mu.Unlock()
		d := min(50*time.Millisecond<<min(n-1, 7), 5*time.Second)
		o.log.Error("batuta: reserving a rate-limit slot failed; deferring the task", "run", c.RunID, "task", c.Task,
			"rate_limit", r.Name, "error", err, "retry_in", d)
		comp.Outcome, comp.RetryAt = OutcomeDefer, now.Add(d)
	} else {
		ex.mu.Lock()
		ex.rateFails = 0
		ex.mu.Unlock()
		if !slot.After(now) {
			return false
		}
		comp.Outcome, comp.RetryAt, comp.RateReserved = OutcomeDefer, slot, true
	}
	ex.addDue(comp.RetryAt)
	ex.poke()
	return true
}

func callTask(ctx context.Context, fn TaskFunc, in *Input) (out any, err error) {
	defer func() {
		if p := recover(); p != nil {
			out, err = nil, newPanicError(p)
		}
	}()
	return fn(ctx, in)
}

// complete records the outcome in sl.comp, retrying store errors with
// backoff for up to a lease duration (after that the lease expires and the
// task is rescued: at-least-once). With a durable store the write goes
// through the completers, which batch concurrent completions into one
// store call. It reports whether tasks became ready.
func (ex *executor) complete(sl *slot, c *Claim) bool {
	o := ex.o
	var r CompleteResult
	var err error
	if ex.claimer != nil {
		r, err = ex.completeClaiming(sl, c)
	} else if ex.batch != nil {
		if sl.reply == nil {
			sl.reply = make(chan batchResp, 1)
		}
		select {
		case ex.batch <- batchReq{comp: &sl.comp[0], reply: sl.reply}:
			resp := <-sl.reply
			r, err = resp.res, resp.err
		case <-ex.bgStop:
			err = ErrClosed
		}
	} else if ex.fused != nil {
		var cs []Claim
		p := ex.inlineParams(sl, c)
		var t0 time.Time
		if len(o.storeHooks) > 0 {
			t0 = time.Now()
		}
		r, cs, sl.hint = ex.fused.completeAndClaim(&sl.comp[0], p, &sl.up[sl.upIdx])
		if len(o.storeHooks) > 0 {
			observeStore(o.storeHooks, StoreOpComplete, t0, 1, nil)
		}
		if sl.claimed {
			if len(cs) == 1 {
				sl.next = &cs[0]
			} else {
				sl.freeTTL = 0 // idle: look for new workflows next time
			}
		}
	} else {
		var res []CompleteResult
		if res, err = ex.storeComplete(sl.comp[:]); err == nil {
			r = res[0]
		}
	}
	if err != nil {
		o.log.Error("batuta: giving up recording a task result; the task will be rescued when its lease expires",
			"run", c.RunID, "task", c.Task, "error", err)
		return false
	}
	if r.Err != nil {
		if errors.Is(r.Err, ErrLeaseLost) {
			o.log.Warn("batuta: result discarded: the task's lease was lost to another worker",
				"run", c.RunID, "task", c.Task, "attempt", c.Attempt)
		} else {
			o.log.Error("batuta: recording task result failed", "run", c.RunID, "task", c.Task, "error", r.Err)
		}
		return false
	}
	if r.RunFinished != "" {
		o.runFinished(ex.bgCtx, c.RunID, c.Workflow, r.RunFinished)
	}
	if sl.comp[0].Outcome == OutcomeRelease || r.Ready > 1 && ex.busy.Load() < ex.nwork {
		// More than the completing worker takes inline, and a worker is
		// free to take it (with none free the dispatcher would claim
		// nothing; the next worker to free up pokes it).
		ex.poke()
	}
	return r.Ready > 0
}

// completeClaiming records the worker's completion through a
// ClaimingCompleter, claiming the worker's next task in the same
// transaction when inlineParams allows (sl.claimed then says so, and
// sl.next holds the task). When that claim comes back empty although the
// completion made tasks ready (another worker took them, or the store
// recorded the completion apart), sl.claimed is cleared so the worker
// claims as it would have without the store's help.
func (ex *executor) completeClaiming(sl *slot, c *Claim) (CompleteResult, error) {
	p := ex.inlineParams(sl, c)
	var params ClaimParams
	if p != nil {
		params = *p
	}
	res, cs, err := ex.storeCompleteWith(sl.comp[:], params)
	if err != nil {
		sl.claimed = false
		return CompleteResult{}, err
	}
	if sl.claimed {
		sl.hint = claimHint{pos: -1}
		switch {
		case len(cs) > 0:
			k := sl.upIdx // the buffer c does not use
			sl.buf[k] = cs[0]
			sl.next = &sl.buf[k]
			if len(cs) > 1 { // p.Limit is 1: a store returns no more
				ex.o.log.Error("batuta: the store claimed more tasks than asked; releasing the extra ones", "asked", 1, "claimed", len(cs))
				ex.releaseClaims(cs[1:], "claimed over the limit")
			}
		case res[0].Ready > 0:
			sl.claimed = false
		default:
			sl.freeTTL = 0 // idle: look for new workflows next time
		}
	}
	return res[0], nil
}

// lookup returns the compiled workflow and task a claim names (nil if this
// process has not registered them). A worker usually runs the task
// declared after the one it ran last (a chain, a fan-out), which is tried
// before the maps.
func (ex *executor) lookup(sl *slot, c *Claim) (*compiledWorkflow, *compiledTask) {
	cw := sl.cw
	if cw == nil || cw.name != c.Workflow {
		cw, _ = ex.o.workflow(c.Workflow)
		if cw == nil {
			return nil, nil
		}
		sl.cw, sl.pos = cw, -1 // registered workflows are never replaced
	}
	if i := sl.hint.pos; i >= 0 && i < len(cw.tasks) && cw.tasks[i].name == c.Task {
		sl.pos = i // the store said where
		return cw, &cw.tasks[i]
	}
	if i := sl.pos + 1; i < len(cw.tasks) && cw.tasks[i].name == c.Task {
		sl.pos = i
		return cw, &cw.tasks[i]
	}
	i, ok := cw.index[c.Task]
	if !ok {
		return cw, nil
	}
	sl.pos = i
	return cw, &cw.tasks[i]
}

// inlineParams returns the parameters for claiming the worker's next task
// along with the completion of c (fused path), or nil to claim apart: while
// draining, or when a workflow has a per-process cap (claimInto reserves
// room under it). It sets sl.claimed when it returns parameters.
//
// The registered workflows are read under the orchestrator's lock once per
// freeEvery tasks, and after a claim that found nothing: a workflow
// registered meanwhile is claimed by the dispatcher until then (workflows
// are never unregistered, and a workflow's cap never changes).
func (ex *executor) inlineParams(sl *slot, c *Claim) *ClaimParams {
	if ex.draining.Load() {
		return nil
	}
	o := ex.o
	if sl.freeTTL <= 0 {
		o.mu.RLock()
		sl.free, sl.capped = o.uncapped, len(o.capped) > 0
		o.mu.RUnlock()
		sl.freeTTL = freeEvery
	}
	sl.freeTTL--
	if sl.capped || len(sl.free) == 0 {
		sl.freeTTL = 0
		return nil
	}
	// The claim goes to the buffer c does not use: c is read until the
	// worker moves on.
	k := 0
	if c == &sl.buf[0] {
		k = 1
	}
	sl.upIdx = k
	now := sl.comp[0].FinishedAt
	p := &sl.params
	// The lease end is moved only once the clock moved a millisecond
	// past the time it was computed from (a lease at most that much
	// shorter; a time.Add saved per task).
	if d := now.Sub(p.LeaseUntil) + o.cfg.LeaseDuration; p.LeaseUntil.IsZero() || d < 0 || d >= time.Millisecond {
		p.LeaseUntil = now.Add(o.cfg.LeaseDuration)
	}
	p.Owner, p.Workflows, p.Limit, p.Now, p.Buf = o.cfg.NodeID, sl.free, 1, now, sl.buf[k:k:k+1]
	sl.claimed = true
	return p
}

// freeEvery is how many inline claims a worker makes with the list of
// registered workflows it read last.
const freeEvery = 256

// taskCtxChunk is how many attempt contexts a worker allocates at once.
const taskCtxChunk = 32

// newTaskCtx returns a fresh context for an attempt, carved from a chunk
// the worker allocates every taskCtxChunk attempts (one allocation instead
// of one per attempt). A context is never reused: one kept by a task after
// its attempt keeps its chunk alive, and stays canceled.
func (sl *slot) newTaskCtx(parent *context.Context) *taskCtx {
	if len(sl.ctxs) == 0 {
		sl.ctxs = make([]taskCtx, taskCtxChunk)
	}
	tc := &sl.ctxs[0]
	sl.ctxs = sl.ctxs[1:]
	tc.parent = parent
	return tc
}
