package batuta

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Causes of a task's ctx being canceled, told apart with context.Cause.
var (
	errShutdown    = errors.New("batuta: orchestrator shutting down")
	errRunCanceled = fmt.Errorf("%w: run canceled", ErrCanceled)
	errLeaseLost   = fmt.Errorf("%w: lease lost to another worker", ErrLeaseLost)
	errAttemptDone = errors.New("batuta: attempt returned")
)

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

// executor runs claimed tasks on a bounded pool of workers. One exists per
// call of Orchestrator.Run.
type executor struct {
	o       *Orchestrator
	store   Store
	work    chan Claim
	wake    chan struct{}
	batch   chan batchReq // to the completers; nil for non-durable stores
	durable bool
	busy    atomic.Int64 // claims handed to workers and not yet done
	nwork   int64
	// backlog: the latest claim got all it asked for, so more tasks are
	// likely ready. Workers of a durable store then claim their next task
	// themselves, in parallel, instead of one by one through the dispatcher.
	backlog atomic.Bool

	draining   atomic.Bool
	hardCtx    context.Context
	hardCancel context.CancelCauseFunc
	bgCtx      context.Context // for store calls: outlives Run's ctx until shutdown ends

	stopDispatch chan struct{}
	dispatchDone chan struct{}
	workersWG    sync.WaitGroup
	bgStop       chan struct{}
	bgWG         sync.WaitGroup

	mu       sync.Mutex
	stopped  bool // hard stop: every task ctx is canceled
	inflight map[int64]*slot
	limited  map[string]int // running tasks of workflows with a Concurrency cap
	due      dueHeap
	stuck    map[*slot]string // abandoned attempts still running, for the log
}

// slot is one worker's state, reused for each task it runs.
type slot struct {
	claim *Claim
	tctx  *taskCtx
	in    Input
	comp  [1]Completion
	reply chan batchResp
	cur   Claim    // the claim handed over by the dispatcher
	buf   [1]Claim // inline claims
}

func newExecutor(o *Orchestrator) *executor {
	hardCtx, hardCancel := context.WithCancelCause(context.Background())
	ex := &executor{
		o:            o,
		store:        o.store,
		work:         make(chan Claim, o.cfg.Workers),
		wake:         make(chan struct{}, 1),
		nwork:        int64(o.cfg.Workers),
		hardCtx:      hardCtx,
		hardCancel:   hardCancel,
		bgCtx:        context.Background(),
		stopDispatch: make(chan struct{}),
		dispatchDone: make(chan struct{}),
		bgStop:       make(chan struct{}),
		inflight:     make(map[int64]*slot),
		limited:      make(map[string]int),
		stuck:        make(map[*slot]string),
	}
	ex.durable = o.store.Durable()
	if ex.durable {
		// Durable stores pay a round trip or a commit per call: batch.
		ex.batch = make(chan batchReq, o.cfg.Workers)
	}
	return ex
}

// completers is how many goroutines batch completions for a durable store.
const completers = 2

func (ex *executor) poke() {
	select {
	case ex.wake <- struct{}{}:
	default:
	}
}

func (ex *executor) start() {
	for i := 0; i < ex.o.cfg.Workers; i++ {
		ex.workersWG.Add(1)
		go ex.worker()
	}
	go ex.dispatch()
	ex.bgWG.Add(3)
	go ex.heartbeat()
	go ex.rescuer()
	go ex.pruner()
	if ex.batch != nil {
		ex.bgWG.Add(completers)
		for i := 0; i < completers; i++ {
			go ex.completer()
		}
	}
}

// shutdown stops claiming, drains, cancels, and abandons, in that order.
func (ex *executor) shutdown() {
	o := ex.o
	ex.draining.Store(true)
	close(ex.stopDispatch)
	<-ex.dispatchDone
	close(ex.work)
	done := make(chan struct{})
	go func() {
		ex.workersWG.Wait()
		close(done)
	}()
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-done:
			return true
		case <-t.C:
			return false
		}
	}
	if !wait(o.cfg.ShutdownGrace) {
		o.log.Warn("batuta: shutdown grace period over; canceling running tasks", "running", ex.runningNames())
		ex.stopAll()
		if !wait(o.cfg.ShutdownKill) {
			o.log.Error("batuta: tasks ignore their canceled context; abandoning them", "tasks", ex.runningNames())
		}
	}
	ex.stopAll()
	close(ex.bgStop)
	ex.bgWG.Wait()
	ex.mu.Lock()
	if len(ex.stuck) > 0 {
		var names []string
		for _, n := range ex.stuck {
			names = append(names, n)
		}
		sort.Strings(names)
		o.log.Error("batuta: timed-out tasks still running after shutdown (they ignore ctx)", "tasks", names)
	}
	ex.mu.Unlock()
}

// stopAll cancels every running attempt's ctx (and those started later).
func (ex *executor) stopAll() {
	ex.hardCancel(errShutdown)
	ex.mu.Lock()
	defer ex.mu.Unlock()
	ex.stopped = true
	for _, sl := range ex.inflight {
		if sl.tctx != nil {
			sl.tctx.cancel(errShutdown)
		}
	}
}

func (ex *executor) runningNames() []string {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	var names []string
	for _, sl := range ex.inflight {
		if c := sl.claim; c != nil {
			names = append(names, c.Workflow+"/"+c.Task+" (run "+c.RunID+")")
		}
	}
	sort.Strings(names)
	return names
}

// claim claims up to max tasks of the registered workflows, honoring each
// workflow's Concurrency cap.
func (ex *executor) claim(max int) ([]Claim, error) {
	return ex.claimInto(nil, max, ex.o.clock.Now())
}

// claimInto is claim, letting the store reuse buf's storage.
func (ex *executor) claimInto(buf []Claim, max int, now time.Time) ([]Claim, error) {
	o := ex.o
	o.mu.RLock()
	names, free, capped := o.wfNames, o.uncapped, o.capped
	o.mu.RUnlock()
	if len(names) == 0 || max <= 0 {
		return nil, nil
	}
	p := ClaimParams{Owner: o.cfg.NodeID, Limit: max, Now: now, LeaseUntil: now.Add(o.cfg.LeaseDuration), Buf: buf}
	var out []Claim
	if len(free) > 0 {
		p.Workflows = free
		cs, err := ex.store.ClaimTasks(ex.bgCtx, p)
		if err != nil {
			return nil, err
		}
		out = cs
	}
	for _, cw := range capped {
		left := max - len(out)
		if left <= 0 {
			break
		}
		ex.mu.Lock()
		rem := min(cw.concurrency-ex.limited[cw.name], left)
		if rem > 0 {
			ex.limited[cw.name] += rem // reserve, give back what we do not get
		}
		ex.mu.Unlock()
		if rem <= 0 {
			continue
		}
		p.Workflows, p.Limit, p.Buf = []string{cw.name}, rem, nil
		cs, err := ex.store.ClaimTasks(ex.bgCtx, p)
		ex.mu.Lock()
		ex.limited[cw.name] -= rem - len(cs)
		ex.mu.Unlock()
		if err != nil {
			return out, err
		}
		out = append(out, cs...)
	}
	return out, nil
}

func (ex *executor) dispatch() {
	defer close(ex.dispatchDone)
	o := ex.o
	var notify <-chan struct{}
	if wn, ok := ex.store.(WorkNotifier); ok {
		notify = wn.WorkAvailable()
	}
	errBackoff := time.Duration(0)
	var buf []Claim
	poll := time.NewTimer(o.cfg.PollInterval)
	defer poll.Stop()
	for {
		if ex.draining.Load() {
			return
		}
		free := ex.nwork - ex.busy.Load()
		want := min(free, int64(o.cfg.ClaimBatch))
		got := 0
		if want > 0 {
			if cap(buf) < int(want) {
				buf = make([]Claim, 0, want)
			}
			cs, err := ex.claimInto(buf[:0], int(want), o.clock.Now())
			if err != nil {
				errBackoff = min(max(errBackoff*2, 50*time.Millisecond), 5*time.Second)
				o.log.Error("batuta: claiming tasks failed", "error", err, "retry_in", errBackoff)
			} else {
				errBackoff = 0
			}
			got = len(cs)
			ex.backlog.Store(err == nil && int64(got) == want)
			for i := range cs {
				ex.busy.Add(1)
				ex.work <- cs[i]
				cs[i] = Claim{} // drop references for the GC
			}
			if got > 0 && int64(got) == want && errBackoff == 0 {
				continue // there may be more
			}
		}
		wait := o.cfg.PollInterval
		if errBackoff > 0 {
			wait = errBackoff
		}
		var dueC <-chan time.Time
		var dueT Timer
		if d, ok := ex.nextDue(); ok && errBackoff == 0 {
			dueT = o.clock.NewTimer(d.Sub(o.clock.Now()))
			dueC = dueT.C()
		}
		poll.Reset(wait)
		select {
		case <-ex.stopDispatch:
		case <-ex.wake:
		case <-notify:
		case <-poll.C:
		case <-dueC:
		}
		if !poll.Stop() {
			select {
			case <-poll.C:
			default:
			}
		}
		if dueT != nil {
			dueT.Stop()
		}
	}
}

// nextDue pops due times that passed and returns the earliest future one.
func (ex *executor) nextDue() (time.Time, bool) {
	now := ex.o.clock.Now()
	ex.mu.Lock()
	defer ex.mu.Unlock()
	for len(ex.due) > 0 && !ex.due[0].After(now) {
		heap.Pop(&ex.due)
	}
	if len(ex.due) == 0 {
		return time.Time{}, false
	}
	return ex.due[0], true
}

func (ex *executor) worker() {
	defer ex.workersWG.Done()
	sl := &slot{}
	for sl.cur = range ex.work {
		c := &sl.cur
		for c != nil {
			ready := ex.execute(sl, c)
			c = nil
			// Take the next task here rather than through the dispatcher:
			// always a task this completion made ready, with a store where
			// an empty claim is cheap (not durable) any ready task, and with
			// a durable one while a burst of ready tasks lasts (the
			// dispatcher would claim them one round trip at a time).
			if (ready || !ex.durable || ex.backlog.Load()) && !ex.draining.Load() {
				// The clock read at the end of the task serves as now.
				cs, err := ex.claimInto(sl.buf[:0], 1, sl.comp[0].FinishedAt)
				if err == nil && len(cs) == 1 {
					c = &cs[0]
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

// execute runs one claimed task (or skips, fails or releases it) and
// records the outcome. It reports whether the completion made tasks ready.
func (ex *executor) execute(sl *slot, c *Claim) bool {
	o := ex.o
	cw, _ := o.workflow(c.Workflow)
	var ct *compiledTask
	if cw != nil {
		if i, ok := cw.index[c.Task]; ok {
			ct = &cw.tasks[i]
		}
	}
	defer func() {
		if cw != nil && cw.concurrency > 0 {
			ex.mu.Lock()
			ex.limited[cw.name]--
			ex.mu.Unlock()
			ex.poke() // room under the workflow's cap
		}
	}()
	comp := &sl.comp[0]
	now := o.clock.Now()
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
	case !c.RunDeadline.IsZero() && !now.Before(c.RunDeadline):
		comp.Outcome, comp.Error = OutcomeFailed, fmt.Sprintf("%v: run exceeded its workflow timeout before the task started", ErrTimeout)
		comp.StartedAt, comp.FinishedAt = now, now
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
	tc := &taskCtx{parent: ex.bgCtx}
	defer tc.cancel(errAttemptDone)
	var taskCtx context.Context = tc
	if !deadline.IsZero() {
		var cancelD context.CancelFunc
		// Deadlines are wall-clock durations measured from the attempt's
		// start: the same on a fake clock.
		taskCtx, cancelD = context.WithTimeout(tc, deadline.Sub(start))
		defer cancelD()
	}
	ex.mu.Lock()
	sl.claim, sl.tctx = c, tc
	ex.inflight[c.Token] = sl
	if ex.stopped {
		tc.cancel(errShutdown)
	}
	ex.mu.Unlock()
	defer func() {
		ex.mu.Lock()
		delete(ex.inflight, c.Token)
		sl.claim, sl.tctx = nil, nil
		ex.mu.Unlock()
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
			select {
			case r := <-done: // it did return
				out, err = r.out, r.err
			default:
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
	timedOut := cause == nil && errors.Is(taskCtx.Err(), context.DeadlineExceeded)
	info.Err = err

	switch {
	case err == nil && !abandoned:
		comp.Outcome = OutcomeSucceeded
		if ex.store.Durable() {
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
	if timedOut && !strings.Contains(comp.Error, "timeout") && !strings.Contains(comp.Error, "deadline") {
		comp.Error = fmt.Sprintf("%v: %s", ErrTimeout, comp.Error)
	}
	if !comp.RetryAt.IsZero() {
		ex.mu.Lock()
		heap.Push(&ex.due, comp.RetryAt)
		ex.mu.Unlock()
		ex.poke()
	}
	return taskCtx
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
	if ex.batch != nil {
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
	if r.Ready > 1 || sl.comp[0].Outcome == OutcomeRelease {
		ex.poke() // more than the completing worker takes inline
	}
	return r.Ready > 0
}

// storeComplete calls CompleteTasks, retrying failed calls with backoff for
// up to a lease duration past the last renewal of the claims' leases: while
// it retries, it renews them (every LeaseDuration/3; the heartbeat no
// longer does once the attempt is over), so a completion that takes several
// tries is not rescued and run again meanwhile. It gives up after
// maxCompleteLeases lease durations in all.
func (ex *executor) storeComplete(comps []Completion) ([]CompleteResult, error) {
	o := ex.o
	backoff := 20 * time.Millisecond
	start := time.Now()
	deadline := start.Add(o.cfg.LeaseDuration)
	var renewed time.Time
	for {
		res, err := ex.store.CompleteTasks(ex.bgCtx, comps)
		if err == nil && len(res) == len(comps) {
			return res, nil
		}
		if err == nil {
			err = fmt.Errorf("store returned %d results for %d completions", len(res), len(comps))
		}
		if time.Since(renewed) >= o.cfg.LeaseDuration/3 && time.Since(start) < maxCompleteLeases*o.cfg.LeaseDuration {
			renewed = time.Now()
			refs := make([]ClaimRef, len(comps))
			for i := range comps {
				refs[i] = comps[i].ClaimRef
			}
			sts, xerr := ex.store.ExtendLeases(ex.bgCtx, refs, o.clock.Now().Add(o.cfg.LeaseDuration))
			if xerr == nil && slices.Contains(sts, LeaseHeld) {
				deadline = renewed.Add(o.cfg.LeaseDuration)
			}
		}
		wait := min(backoff, max(o.cfg.LeaseDuration/3, time.Millisecond)) // renew in time
		if time.Now().Add(wait).After(deadline) {
			return nil, err
		}
		o.log.Warn("batuta: recording task results failed; retrying", "completions", len(comps), "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		<-t.C
		backoff = min(backoff*2, 2*time.Second)
	}
}

// maxCompleteLeases bounds, in lease durations, how long storeComplete
// keeps renewing the leases of a completion it retries.
const maxCompleteLeases = 10

type batchReq struct {
	comp  *Completion
	reply chan batchResp
}

type batchResp struct {
	res CompleteResult
	err error
}

// maxCompletionBatch bounds one CompleteTasks call made by a completer.
const maxCompletionBatch = 256

// completer turns concurrent completions into batched store calls: it
// takes one request, then whatever else is already waiting.
func (ex *executor) completer() {
	defer ex.bgWG.Done()
	reqs := make([]batchReq, 0, maxCompletionBatch)
	comps := make([]Completion, 0, maxCompletionBatch)
	flush := func() {
		comps = comps[:0]
		for _, rq := range reqs {
			comps = append(comps, *rq.comp)
		}
		res, err := ex.storeComplete(comps)
		for i, rq := range reqs {
			if err != nil {
				rq.reply <- batchResp{err: err}
			} else {
				rq.reply <- batchResp{res: res[i]}
			}
		}
		clear(comps)
		reqs = reqs[:0]
	}
	for {
		select {
		case rq := <-ex.batch:
			reqs = append(reqs, rq)
		more:
			for len(reqs) < maxCompletionBatch {
				select {
				case rq := <-ex.batch:
					reqs = append(reqs, rq)
				default:
					break more
				}
			}
			flush()
		case <-ex.bgStop:
			for {
				select {
				case rq := <-ex.batch:
					reqs = append(reqs, rq)
					flush()
				default:
					return
				}
			}
		}
	}
}

// cancelRun cancels this process's running attempts of a run.
func (ex *executor) cancelRun(runID string) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	for _, sl := range ex.inflight {
		if sl.claim != nil && sl.claim.RunID == runID && sl.tctx != nil {
			sl.tctx.cancel(errRunCanceled)
		}
	}
}

// heartbeat renews the leases of running attempts and stops those whose
// lease was lost or whose run was canceled elsewhere.
func (ex *executor) heartbeat() {
	defer ex.bgWG.Done()
	o := ex.o
	every := max(o.cfg.LeaseDuration/3, time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ex.bgStop:
			return
		case <-t.C:
		}
		ex.mu.Lock()
		refs := make([]ClaimRef, 0, len(ex.inflight))
		for _, sl := range ex.inflight {
			if sl.claim != nil {
				refs = append(refs, sl.claim.Ref())
			}
		}
		ex.mu.Unlock()
		if len(refs) == 0 {
			continue
		}
		sts, err := ex.store.ExtendLeases(ex.bgCtx, refs, o.clock.Now().Add(o.cfg.LeaseDuration))
		if err != nil {
			o.log.Warn("batuta: renewing leases failed", "error", err)
			continue
		}
		ex.mu.Lock()
		for i, st := range sts {
			if i >= len(refs) {
				break
			}
			sl := ex.inflight[refs[i].Token]
			if sl == nil || sl.tctx == nil {
				continue
			}
			switch st {
			case LeaseLost:
				sl.tctx.cancel(errLeaseLost)
			case LeaseCanceled:
				sl.tctx.cancel(errRunCanceled)
			}
		}
		ex.mu.Unlock()
	}
}

// rescuer returns tasks whose lease expired (their worker died) to the
// ready set.
func (ex *executor) rescuer() {
	defer ex.bgWG.Done()
	o := ex.o
	every := max(o.cfg.LeaseDuration/2, time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ex.bgStop:
			return
		case <-t.C:
		}
		n, failed, err := ex.store.RescueExpired(ex.bgCtx, o.clock.Now(), o.cfg.MaxRescues)
		if err != nil {
			o.log.Warn("batuta: rescuing expired leases failed", "error", err)
			continue
		}
		if n > 0 || failed > 0 {
			o.log.Warn("batuta: rescued tasks whose worker was lost", "rescued", n, "failed_after_max_rescues", failed)
			ex.poke()
		}
	}
}

// pruner deletes finished runs past the retention, in small batches.
func (ex *executor) pruner() {
	defer ex.bgWG.Done()
	o := ex.o
	if o.cfg.Retention < 0 && o.cfg.RetentionCount == 0 {
		return
	}
	t := time.NewTicker(o.cfg.RetentionInterval)
	defer t.Stop()
	for {
		select {
		case <-ex.bgStop:
			return
		case <-t.C:
		}
		p := PrunePolicy{KeepLast: o.cfg.RetentionCount, BatchSize: 500}
		if o.cfg.Retention > 0 {
			p.Before = o.clock.Now().Add(-o.cfg.Retention)
		}
		n, err := ex.store.Prune(ex.bgCtx, p)
		if err != nil {
			o.log.Warn("batuta: pruning finished runs failed", "error", err)
		} else if n > 0 {
			o.log.Debug("batuta: pruned finished runs", "deleted", n)
		}
	}
}

type dueHeap []time.Time

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].Before(h[j]) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(time.Time)) }
func (h *dueHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}
