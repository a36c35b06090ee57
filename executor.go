package batuta

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"sort"
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

// executor runs claimed tasks on a bounded pool of workers. One exists per
// call of Orchestrator.Run.
type executor struct {
	o       *Orchestrator
	store   Store
	work    chan Claim
	wake    chan struct{}
	batch   chan batchReq // to the completers; nil for non-durable stores
	durable bool
	// fused: the store records a completion and claims the next task
	// under one lock (the memory store); nil for others.
	fused completeClaimer
	// claimer: a durable store that claims the worker's next task in the
	// transaction of its completion (ClaimingCompleter); workers then call
	// it themselves, without the completers. Nil for others.
	claimer ClaimingCompleter
	// creator: a durable store that claims in the transaction that
	// creates a run (CreatingClaimer), for Submit; nil for others.
	creator CreatingClaimer
	// handMu guards handing claims to the workers from outside the
	// dispatcher (handOff) against shutdown closing work.
	handMu     sync.RWMutex
	workClosed bool
	busy       atomic.Int64 // claims handed to workers and not yet done
	nwork      int64
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
	bgStop       chan struct{} // closed when shutdown stops the background services
	bg           []*service    // heartbeat, rescuer, pruner, completers

	// stopped: hard stop, every task ctx is canceled. Set before the
	// slots are scanned; a worker checks it after publishing its attempt.
	stopped atomic.Bool

	mu      sync.Mutex
	slots   []*slot        // every worker's slot (its running attempt, if any)
	limited map[string]int // running tasks of workflows with a per-process cap (FunctionConfig.Concurrency)
	due     dueHeap
	// askDue: ask the store for its next due time at the next idle moment
	// (set at start, on Resume, on a debounce merge, when the heap is full).
	askDue    bool
	lastAsk   time.Time        // when the store was last asked (by the clock)
	storeDue  time.Time        // the store's last answer
	rateFails int              // consecutive ReserveRate errors, for the backoff
	stuck     map[*slot]string // abandoned attempts still running, for the log
}

// slot is one worker's state, reused for each task it runs.
type slot struct {
	mu    sync.Mutex // guards claim and tctx (read by heartbeat, cancel, stop)
	claim *Claim     // the running attempt's claim, nil between attempts
	tctx  *taskCtx
	in    Input
	comp  [1]Completion
	reply chan batchResp
	cur   Claim               // the claim handed over by the dispatcher
	buf   [2]Claim            // inline claims: the next one is claimed while the current one is still read
	up    [2][]UpstreamResult // their Upstream (fused path)
	upIdx int                 // the one for the next claim
	// The fused path (memory store): the claim parameters, and the task
	// claimed with the last completion (nil: none); claimed is set when
	// that path claimed (or found nothing to claim); hint what the store
	// told about that claim.
	params  ClaimParams
	next    *Claim
	claimed bool
	hint    claimHint
	free    []string  // the uncapped registered workflows, as last read
	capped  bool      // some registered workflow has a per-process cap
	freeTTL int       // inline claims left before free is read again
	ctxs    []taskCtx // attempt contexts not handed out yet (newTaskCtx)
	// The last task run, to find the next one without a map lookup.
	cw  *compiledWorkflow
	pos int
}

// completeClaimer is a store that records a completion and claims the
// next tasks under one lock, without allocating a result slice: the
// memory store. The executor uses it from task to task.
type completeClaimer interface {
	completeAndClaim(c *Completion, p *ClaimParams, up *[]UpstreamResult) (res CompleteResult, cs []Claim, hint claimHint)
}

// claimHint is what the memory store tells about a claim it made with a
// completion.
type claimHint struct {
	pos       int  // the task's position in the workflow (-1: unknown)
	nowStarts bool // the claim's now may serve as the attempt's start
}

func newExecutor(o *Orchestrator) *executor {
	hardCtx, hardCancel := context.WithCancelCause(context.Background())
	ex := &executor{
		o:     o,
		store: o.store,
		// Room for twice the workers: the dispatcher claims for the
		// workers free when it looks (at most Workers) while Submit's and
		// Signal's hand-offs reserve free workers (busy stays <= Workers
		// for them), so at most 2*Workers claims wait and no send blocks.
		work:         make(chan Claim, 2*o.cfg.Workers),
		wake:         make(chan struct{}, 1),
		nwork:        int64(o.cfg.Workers),
		hardCtx:      hardCtx,
		hardCancel:   hardCancel,
		bgCtx:        context.Background(),
		stopDispatch: make(chan struct{}),
		dispatchDone: make(chan struct{}),
		bgStop:       make(chan struct{}),
		limited:      make(map[string]int),
		stuck:        make(map[*slot]string),
		askDue:       true,
	}
	ex.durable = o.store.Durable()
	if fc, ok := o.store.(completeClaimer); ok && !ex.durable {
		ex.fused = fc
	}
	if cc, ok := o.store.(CreatingClaimer); ok && ex.durable {
		ex.creator = cc
	}
	if cc, ok := o.store.(ClaimingCompleter); ok && ex.durable {
		ex.claimer = cc
	} else if ex.durable {
		// Durable stores pay a round trip or a commit per call: batch.
		ex.batch = make(chan batchReq, o.cfg.Workers)
	}
	return ex
}

func (ex *executor) poke() {
	select {
	case ex.wake <- struct{}{}:
	default:
	}
}

// start starts the workers, the dispatcher and the background services.
// They run on the executor's own contexts, not on Run's: Run's ctx ending
// is what starts the shutdown, during which they go on draining.
func (ex *executor) start() {
	for i := 0; i < ex.o.cfg.Workers; i++ {
		ex.workersWG.Add(1)
		go ex.worker()
	}
	go ex.dispatch()
	ex.bg = []*service{{run: ex.heartbeat}, {run: ex.rescuer}, {run: ex.pruner}, {run: ex.failureSweeper}}
	if ex.batch != nil {
		for i := 0; i < completers; i++ {
			ex.bg = append(ex.bg, &service{run: ex.completer})
		}
	}
	for _, s := range ex.bg {
		s.start(ex.bgCtx)
	}
}

// shutdown stops claiming, drains, cancels, and abandons, in that order.
func (ex *executor) shutdown() {
	o := ex.o
	ex.draining.Store(true)
	close(ex.stopDispatch)
	<-ex.dispatchDone
	ex.handMu.Lock()
	ex.workClosed = true
	close(ex.work)
	ex.handMu.Unlock()
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
	stopServices(ex.bg)
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
	ex.stopped.Store(true)
	ex.mu.Lock()
	defer ex.mu.Unlock()
	for _, sl := range ex.slots {
		sl.mu.Lock()
		if sl.tctx != nil {
			sl.tctx.cancel(errShutdown)
		}
		sl.mu.Unlock()
	}
}

func (ex *executor) runningNames() []string {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	var names []string
	for _, sl := range ex.slots {
		sl.mu.Lock()
		if c := sl.claim; c != nil {
			names = append(names, c.Workflow+"/"+c.Task+" (run "+c.RunID+")")
		}
		sl.mu.Unlock()
	}
	sort.Strings(names)
	return names
}

// claimInto claims up to max tasks of the registered workflows, honoring
// each workflow's Concurrency cap, letting the store reuse buf's storage.
func (ex *executor) claimInto(buf []Claim, max int, now time.Time) ([]Claim, error) {
	if sh := ex.o.storeHooks; len(sh) > 0 {
		start := time.Now()
		cs, err := ex.claimFromStore(buf, max, now)
		observeStore(sh, StoreOpClaim, start, len(cs), err)
		return cs, err
	}
	return ex.claimFromStore(buf, max, now)
}

// claimFromStore is claimInto without the StoreHooks.
func (ex *executor) claimFromStore(buf []Claim, max int, now time.Time) ([]Claim, error) {
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
		rem := min(cw.localCap-ex.limited[cw.name], left)
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
	// ahead, while in the future: the due time the dispatcher woke for
	// early (see claimAhead); its claims see the tasks due by then, which
	// the workers start then.
	var ahead, dueAt time.Time
	for {
		if ex.draining.Load() {
			return
		}
		free := ex.nwork - ex.busy.Load()
		want := min(free, int64(o.cfg.ClaimBatch))
		now := o.clock.Now()
		claimNow := now
		if ahead.After(now) {
			claimNow = ahead
		} else {
			ahead = time.Time{}
		}
		if want > 0 {
			if cap(buf) < int(want) {
				buf = make([]Claim, 0, want)
			}
			cs, err := ex.claimInto(buf[:0], int(want), claimNow)
			if err != nil {
				errBackoff = min(max(errBackoff*2, 50*time.Millisecond), 5*time.Second)
				o.log.Error("batuta: claiming tasks failed", "error", err, "retry_in", errBackoff)
			} else {
				errBackoff = 0
			}
			got := len(cs)
			ex.backlog.Store(err == nil && int64(got) == want)
			for i := range cs {
				if claimNow.After(now) {
					cs[i].notBefore = claimNow
				}
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
		if errBackoff == 0 {
			ex.askStoreDue()
		}
		var dueC <-chan time.Time
		var dueT Timer
		through := o.clock.Now()
		if ahead.After(through) {
			through = ahead // its due times are served
		}
		d, ok, passed, alone := ex.nextDue(through)
		if passed && errBackoff == 0 {
			// A due time passed since the claim above (one the store
			// just told, microseconds away): claim again rather than
			// sleep until the next poll.
			continue
		}
		if ok && errBackoff == 0 {
			lead := time.Duration(0)
			if ex.durable && alone {
				lead = claimAhead
			}
			dueT, dueAt = o.clock.NewTimer(d.Sub(o.clock.Now())-lead), d
			dueC = dueT.C()
		}
		poll.Reset(wait)
		select {
		case <-ex.stopDispatch:
		case <-ex.wake:
		case <-notify:
		case <-poll.C:
		case <-dueC:
			if dueAt.After(o.clock.Now()) {
				ahead = dueAt // woken claimAhead early
			}
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

// claimAhead is how long before a known due time (a delayed run's start,
// a retry, a timer) the dispatcher of a durable store claims the tasks due
// then, when no other due time it knows follows within claimAhead: the
// claim's round trip, which takes milliseconds when a burst of tasks comes
// due at one instant (cron ticks shared by many schedules), is then done by
// the time, and the workers start the tasks at it. A task already due that
// such a claim takes waits for the time too (at most claimAhead); a worker
// holds the task meanwhile.
const claimAhead = 20 * time.Millisecond

// nextDue pops due times not after now and returns the earliest later one;
// passed reports whether it popped one; alone, whether no other due time
// follows it within claimAhead (only then is it claimed ahead: a worker
// holding a task claimed ahead does nothing until its time, so a dense
// stream of due times, a timer every few microseconds, is claimed at each
// time as it comes rather than by workers held idle).
func (ex *executor) nextDue(now time.Time) (next time.Time, ok, passed, alone bool) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	for len(ex.due) > 0 && !ex.due[0].After(now) {
		heap.Pop(&ex.due)
		passed = true
	}
	if len(ex.due) == 0 {
		return time.Time{}, false, passed, false
	}
	next, alone = ex.due[0], true
	end := next.Add(claimAhead)
	for _, t := range ex.due[1:] {
		if t.After(next) && !t.After(end) {
			alone = false
			break
		}
	}
	return next, true, passed, alone
}

// maxDue bounds the due heap: past it, due times are left to the store
// (a million reminders for tomorrow cost no memory here).
const maxDue = 4096

// addDue makes the dispatcher wake at t (a delayed run's start, a retry).
func (ex *executor) addDue(t time.Time) {
	ex.mu.Lock()
	if len(ex.due) < maxDue {
		heap.Push(&ex.due, t)
	} else {
		ex.askDue = true // the store knows the earliest
	}
	ex.mu.Unlock()
}

// refreshDue makes the dispatcher ask the store for its next due time at
// its next idle moment.
func (ex *executor) refreshDue() {
	ex.mu.Lock()
	ex.askDue = true
	ex.mu.Unlock()
}

// askStoreDue asks the store when the next pending task of the registered
// workflows comes due (a run delayed by another process or before a
// restart, a retry recorded elsewhere) and adds it to the due heap: when
// refreshDue asked for it, once the store's last answer has passed
// (however the dispatcher woke), and otherwise at most once per
// PollInterval.
func (ex *executor) askStoreDue() {
	o := ex.o
	now := o.clock.Now()
	ex.mu.Lock()
	ask := ex.askDue || now.Sub(ex.lastAsk) >= o.cfg.PollInterval ||
		!ex.storeDue.IsZero() && !now.Before(ex.storeDue)
	if ask {
		ex.askDue, ex.lastAsk, ex.storeDue = false, now, time.Time{}
	}
	ex.mu.Unlock()
	if !ask {
		return
	}
	o.mu.RLock()
	names := o.wfNames
	o.mu.RUnlock()
	if len(names) == 0 {
		return
	}
	t, err := ex.store.NextDue(ex.bgCtx, names, now)
	if err != nil {
		if errors.Is(err, errors.ErrUnsupported) {
			ex.mu.Lock()
			ex.lastAsk = now.Add(time.Hour) // a store without it: ask rarely, log once
			ex.mu.Unlock()
		}
		o.log.Warn("batuta: asking the store for the next due task failed; polling instead", "error", err)
		return
	}
	if t.After(now) {
		ex.mu.Lock()
		heap.Push(&ex.due, t)
		ex.storeDue = t
		ex.mu.Unlock()
	}
}

// cancelRun cancels this process's running attempts of a run and reports
// whether there were any (their workers then publish the run's end).
func (ex *executor) cancelRun(runID string) bool {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	found := false
	for _, sl := range ex.slots {
		sl.mu.Lock()
		if sl.claim != nil && sl.claim.RunID == runID && sl.tctx != nil {
			sl.tctx.cancel(errRunCanceled)
			found = true
		}
		sl.mu.Unlock()
	}
	return found
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
