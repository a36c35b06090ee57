package batuta

import (
	"container/heap"
	"context"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/batuta-dev/batuta/internal/runwatch"
)

// MemoryStoreConfig configures a MemoryStore. The zero value is valid.
type MemoryStoreConfig struct {
	// KeepFinished is how many finished runs are kept for inspection and
	// deduplication; older ones are dropped. Default 10,000. Negative keeps
	// none beyond what Prune leaves.
	KeepFinished int
	// FinishedTTL drops finished runs older than this (by finish time),
	// checked whenever a run is created. Default 24h.
	FinishedTTL time.Duration
}

// MemoryStore is the in-memory Store, the default. It keeps everything in
// this process: "durable" means "while the process lives", so a crash loses
// every unfinished run (use batutasqlite or batutapg to survive crashes).
// Memory is bounded by MemoryStoreConfig's retention and by the
// orchestrator's in-flight cap.
//
// A MemoryStore is safe for concurrent use.
type MemoryStore struct {
	cfg MemoryStoreConfig

	mu       sync.Mutex
	runs     map[string]*memRun
	byKey    map[memKey]*memRun
	wfs      map[string]*memWF // per workflow: ready and delayed tasks, pause
	wfOrder  []*memWF          // every workflow of wfs, for fair claiming
	rr       int
	seq      uint64                // creation order of runs with flow state (ties in group heaps)
	freeGrps []*memGroup           // forgotten groups kept for reuse (keys come and go)
	groups   map[string]*memGroup  // workflow-level concurrency groups with runs
	tgroups  map[string]*memTGroup // task-level concurrency groups with running tasks
	debounce map[memKey]*memRun    // (workflow, debounce key) -> the pending run events merge into
	rates    memRates
	active   int
	finished []*memRun // in finish order (FIFO)
	finHead  int
	finBase  int   // entries compacted away before finished[0]: memRun.finAt - finBase indexes finished
	sigSeq   int64 // the last SignalRecord.Seq handed out
	ticks    map[string]time.Time
	tokens   memTokens // running tasks by lease token
	notify   chan struct{}
	watch    *runwatch.Set // Wait calls of any orchestrator using this store

	pool memPool // per-task arrays of dropped runs, for new runs

	pruneHook func(deleted int) // tests: called after each Prune batch, outside the lock
}

type memKey struct{ workflow, eventID string }

type memRun struct {
	Run                    // snapshot fields kept up to date (Tasks unused)
	wf          *memWF     // the run's workflow (s.wfs[Workflow]; never removed)
	tasks       []memTask  // live task state
	specs       []TaskSpec // shared with the caller, never written
	idx         []memIdx   // per task (and one more): where its dependents start in deps, its pending dependencies; nil if no task has dependencies
	deps        []int32
	attemptSlab []Attempt   // first attempts; with tasks, idx and deps handed to the pool when the run is dropped
	flow        *memRunFlow // nil unless the run uses a concurrency group or debounce
	ops         *memRunOps  // nil unless the run waits, has buffered signals or child runs
	finAt       int         // its position in the finished FIFO, counted from the store's start (finBase)
	// The small fields last, together: memRun (and memRunAndFlow) stay in
	// their size classes.
	remaining int32 // tasks not yet finished
	recycle   bool  // no flow control: nothing points at its tasks once it finished
	canceled  bool
	dropped   bool
	fireOn    bool // some task has a FireOn (else only a last dependency makes a task ready)
	mayFail   bool // a task finished failed or upstream_failed (since reset by RetryRun, perhaps)
}

// memTask is one task's live state. Kept small (int32 counters, the
// lease as UnixNano, no upstream storage): runs allocate one per task and
// the GC scans them.
type memTask struct {
	run        *memRun
	idx        int32
	spent      int32 // attempts that spent the budget
	rescues    int32
	heapIdx    int32 // index in its workflow's delayed heap, -1 if absent
	readied    bool  // made ready by its dependencies (at most once: FireOn)
	rateRsv    bool  // deferred with a rate reservation: the next claim says so
	unparked   bool  // moved back from a full task-level group; a slot is kept for it
	state      memTaskState
	token      int64
	leaseUntil int64 // UnixNano
	dueAt      time.Time
	output     any
	err        string
	attempts   []Attempt
}

// memFinGone replaces, in the finished runs' FIFO, the entry of a run that
// RetryRun reopened: those who read the FIFO skip it as a dropped run.
var memFinGone = &memRun{dropped: true}

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore(cfg MemoryStoreConfig) *MemoryStore {
	if cfg.KeepFinished == 0 {
		cfg.KeepFinished = 10000
	}
	if cfg.FinishedTTL == 0 {
		cfg.FinishedTTL = 24 * time.Hour
	}
	return &MemoryStore{
		cfg:      cfg,
		runs:     make(map[string]*memRun),
		byKey:    make(map[memKey]*memRun),
		wfs:      make(map[string]*memWF),
		groups:   make(map[string]*memGroup),
		tgroups:  make(map[string]*memTGroup),
		debounce: make(map[memKey]*memRun),
		ticks:    make(map[string]time.Time),
		notify:   make(chan struct{}, 1),
		watch:    runwatch.New(-1),
		rates:    memRates{keys: make(map[string]memRate)},
	}
}

var (
	_ WorkNotifier = (*MemoryStore)(nil)
	_ RunWatcher   = (*MemoryStore)(nil)
)

// WatchRun implements RunWatcher: the runs that finish in this store wake
// the Wait calls of every orchestrator using it.
func (s *MemoryStore) WatchRun(runID string) (<-chan struct{}, func(), bool) {
	s.mu.Lock()
	defer s.mu.Unlock() // runs finish under s.mu: no end is missed in between
	if r := s.runs[runID]; r == nil || r.State.Finished() {
		return closedChan, func() {}, true // finished, or pruned (GetRun tells)
	}
	ch, stop := s.watch.Watch(runID)
	return ch, stop, true
}

// Durable returns false: a MemoryStore dies with its process.
func (s *MemoryStore) Durable() bool { return false }

// WorkAvailable returns a channel that receives when a task becomes ready.
func (s *MemoryStore) WorkAvailable() <-chan struct{} { return s.notify }

func (s *MemoryStore) signal() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// CreateRun implements Store.
func (s *MemoryStore) CreateRun(ctx context.Context, nr NewRun) (string, bool, error) {
	if err := ctx.Err(); err != nil {
		return "", false, err
	}
	r, err := buildMemRun(&nr, &s.pool) // outside the lock: it touches nothing shared
	if err != nil {
		return "", false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(nr.CreatedAt)
	if nr.MaxActive > 0 && s.active >= nr.MaxActive && s.addsRunLocked(&nr) {
		return "", false, fmt.Errorf("%w: %d runs in flight", ErrBusy, s.active)
	}
	res := s.createLocked(&nr, r)
	return res.ID, res.Created, nil
}

// buildMemRun allocates the run's live state and checks its tasks. Its
// per-task arrays come from pool when a dropped run of the same shape left
// some.
func buildMemRun(nr *NewRun, pool *memPool) (*memRun, error) {
	if len(nr.Tasks) == 0 {
		return nil, fmt.Errorf("batuta: memory store: run %s has no tasks", nr.ID)
	}
	var r *memRun
	if nr.Concurrency != nil || nr.Debounce != nil {
		x := &memRunAndFlow{flow: memRunFlow{gIdx: -1}} // one allocation for both
		r = &x.memRun
		r.flow = &x.flow
	} else {
		r = &memRun{}
	}
	r.Run = Run{
		ID: nr.ID, Workflow: nr.Workflow, Event: nr.Event, State: RunPending,
		CreatedAt: nr.CreatedAt, Deadline: nr.Deadline, Priority: nr.Priority,
	}
	n := len(nr.Tasks)
	ndeps := 0
	recycle := nr.Concurrency == nil && nr.Debounce == nil
	for i := range nr.Tasks {
		ndeps += len(nr.Tasks[i].Deps)
		if nr.Tasks[i].Concurrency != nil {
			recycle = false // parked in a group's heap, a task may be pointed at after its run is gone
		}
		if nr.Tasks[i].FireOn != "" {
			r.fireOn = true
		}
	}
	sl := pool.get(n, ndeps)
	r.recycle = recycle
	r.attemptSlab = sl.attempts
	r.tasks = sl.tasks
	r.specs = nr.Tasks
	r.remaining = int32(n)
	// One slab for first attempts, so a task's first attempt allocates
	// nothing. Upstream views are written at claim time into the
	// claimer's storage (see takeLocked): no per-dependency slab here.
	attemptSlab := sl.attempts
	for i, ts := range nr.Tasks {
		// Every field written: a reused array is not cleared first.
		r.tasks[i] = memTask{
			run: r, idx: int32(i), state: msPending, heapIdx: -1,
			attempts: attemptSlab[i : i : i+1],
		}
		for _, d := range ts.Deps {
			if d < 0 || d >= n || d == i {
				return nil, fmt.Errorf("batuta: memory store: task %q has invalid dependency index %d", ts.Name, d)
			}
		}
	}
	// Dependents, compressed: task i's are deps[idx[i].dep:idx[i+1].dep].
	// Count into idx[i+1].dep, sum, then fill with idx[i].dep as cursor.
	// No dependencies at all (a one-task run): no index.
	idx := sl.idx
	if ndeps == 0 {
		return r, nil
	}
	for i, ts := range nr.Tasks {
		idx[i].pending = int32(len(ts.Deps))
		for _, d := range ts.Deps {
			idx[d+1].dep++
		}
	}
	for i := 1; i <= n; i++ {
		idx[i].dep += idx[i-1].dep
	}
	deps := sl.deps
	for i, ts := range nr.Tasks {
		for _, d := range ts.Deps {
			deps[idx[d].dep] = int32(i)
			idx[d].dep++
		}
	}
	// Each cursor ended at the next task's start: shift back.
	for i := n; i > 0; i-- {
		idx[i].dep = idx[i-1].dep
	}
	idx[0].dep = 0
	r.idx, r.deps = idx, deps
	return r, nil
}

// createLocked records the built run r for nr, or finds its duplicate or
// the pending run it debounces into. MaxActive is the caller's.
func (s *MemoryStore) createLocked(nr *NewRun, r *memRun) CreateResult {
	key := memKey{nr.Workflow, nr.Event.ID}
	if old, ok := s.byKey[key]; ok {
		return CreateResult{ID: old.ID}
	}
	if nr.Debounce != nil {
		if m := s.debounceLocked(nr); m != nil {
			return CreateResult{ID: m.ID, Debounced: true}
		}
	}
	w := s.wfLocked(nr.Workflow)
	r.wf = w
	s.runs[r.ID] = r
	s.byKey[key] = r
	s.active++
	res := CreateResult{ID: r.ID, Created: true}
	if nr.Parent != nil {
		s.addChildLocked(r, *nr.Parent)
	}
	var start time.Time
	if nr.StartAt.After(nr.CreatedAt) {
		start = nr.StartAt
	}
	if nr.Debounce != nil || nr.Concurrency != nil {
		start = s.createFlowLocked(nr, r, start, &res)
		if res.Rejected {
			return res
		}
	}
	r.StartAt = start
	for i := range r.tasks {
		t := &r.tasks[i]
		if r.pending(i) != 0 {
			continue
		}
		t.readied = true
		switch {
		case !start.IsZero():
			t.dueAt = start
			heap.Push(&w.delayed, t)
		case r.flow == nil:
			w.ready.push(t)
		default:
			s.pushReadyLocked(t)
		}
	}
	s.signal()
	return res
}

// wfLocked returns the state of workflow name, creating it.
func (s *MemoryStore) wfLocked(name string) *memWF {
	w := s.wfs[name]
	if w == nil {
		w = &memWF{name: name}
		s.wfs[name] = w
		s.wfOrder = append(s.wfOrder, w)
	}
	return w
}

// pushReadyLocked makes t claimable: into its workflow's ready queue, or,
// for a run not yet admitted by its concurrency group, parked with the
// run until the group admits it.
func (s *MemoryStore) pushReadyLocked(t *memTask) {
	r := t.run
	if f := r.flow; f != nil && f.max > 0 && !f.admitted {
		s.parkRunTaskLocked(r, t)
		return
	}
	r.wf.ready.push(t)
}

// ClaimTasks implements Store. Tasks are taken from the selected
// workflows' ready queues, highest run priority first, then in the order
// they became ready; workflows of equal priority are served round-robin.
// Waiting work is never scanned: delayed tasks sit in a heap per workflow,
// runs waiting for admission with their concurrency group, tasks waiting
// for a task-level slot with theirs.
func (s *MemoryStore) ClaimTasks(ctx context.Context, p ClaimParams) ([]Claim, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p.Limit <= 0 {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.claimLocked(&p, nil), nil
}

// claimLocked is ClaimTasks under s.mu. up, if not nil, is storage for
// the first claim's Upstream (see takeLocked).
func (s *MemoryStore) claimLocked(p *ClaimParams, up *[]UpstreamResult) []Claim {
	out := p.Buf[:0:cap(p.Buf)]
	if cap(out) == 0 {
		out = nil
	}
	if len(p.Workflows) == 1 { // the orchestrator's usual call
		if w := s.wfs[p.Workflows[0]]; w != nil && !w.paused {
			s.promoteLocked(w, p.Now)
			s.takeLocked(w, math.MinInt, &out, p, &up)
		}
		return out
	}
	var wsBuf [8]*memWF
	ws := wsBuf[:0]
	if len(p.Workflows) == 0 {
		for _, w := range s.wfOrder {
			if !w.paused {
				ws = append(ws, w)
			}
		}
	} else {
		for _, name := range p.Workflows {
			if w := s.wfs[name]; w != nil && !w.paused {
				ws = append(ws, w)
			}
		}
	}
	if len(ws) == 0 {
		return out
	}
	for _, w := range ws {
		s.promoteLocked(w, p.Now)
	}
	start := s.rr % len(ws)
	s.rr++
	for len(out) < p.Limit {
		best, found := 0, false
		for _, w := range ws {
			if pr, ok := w.ready.top(); ok && (!found || pr > best) {
				best, found = pr, true
			}
		}
		if !found {
			break
		}
		for i := 0; i < len(ws) && len(out) < p.Limit; i++ {
			s.takeLocked(ws[(start+i)%len(ws)], best, &out, p, &up)
		}
	}
	return out
}

// promoteLocked moves w's delayed tasks due at now to the ready set.
func (s *MemoryStore) promoteLocked(w *memWF, now time.Time) {
	for len(w.delayed) > 0 && !w.delayed[0].dueAt.After(now) {
		t := heap.Pop(&w.delayed).(*memTask)
		s.pushReadyLocked(t)
	}
}

// takeLocked claims ready tasks of w with a run priority of at least
// minPrio into *out, up to p.Limit. A claim's Upstream goes to **up (the
// executor's per-worker storage, reused once that claim is done) if *up
// is not nil, which is then used up; otherwise to a new slice.
func (s *MemoryStore) takeLocked(w *memWF, minPrio int, out *[]Claim, p *ClaimParams, up **[]UpstreamResult) {
	for len(*out) < p.Limit {
		t := w.ready.pop(minPrio)
		if t == nil {
			return
		}
		var kept *memTGroup
		if t.unparked {
			kept = s.unparkedPoppedLocked(t)
		}
		if t.state != msPending || t.run.canceled || t.run.dropped {
			if kept != nil {
				s.unparkLocked(kept) // the slot kept for t goes to another
			}
			continue // stale entry
		}
		spec := t.spec()
		if spec.Concurrency != nil && !s.takeTaskSlotLocked(t, spec.Concurrency) {
			continue // parked until a slot of its group frees
		}
		t.token = s.tokens.add(t)
		t.state = msRunning
		t.leaseUntil = p.LeaseUntil.UnixNano()
		r := t.run
		if r.State == RunPending {
			r.State = RunRunning
			if r.StartedAt.IsZero() { // kept by RetryRun
				r.StartedAt = p.Now
			}
			if r.flow != nil {
				s.runStartedLocked(r)
			}
		}
		var ups []UpstreamResult
		if n := len(spec.Deps); n > 0 {
			if b := *up; b != nil {
				if cap(*b) < n {
					*b = make([]UpstreamResult, n)
				}
				ups, *up = (*b)[:n:n], nil
			} else {
				ups = make([]UpstreamResult, n)
			}
			for k, d := range spec.Deps {
				dt := &r.tasks[d]
				ups[k] = UpstreamResult{Name: r.specs[d].Name, State: dt.state.ts(), Output: dt.output, Error: dt.err}
			}
		}
		if *out == nil {
			*out = make([]Claim, 0, min(p.Limit, 16))
		}
		*out = append(*out, Claim{
			RunID: r.ID, Workflow: r.Workflow, Task: spec.Name,
			Attempt: int(t.spent) + 1, Rescues: int(t.rescues), Token: t.token,
			Event: r.Event, RunDeadline: r.Deadline, Upstream: ups,
			RateReserved: t.rateRsv,
		})
		if r.ops != nil || spec.Signal != "" {
			s.claimWaitLocked(t, &(*out)[len(*out)-1])
		}
		t.rateRsv = false
	}
}

func (s *MemoryStore) task(ref ClaimRef) (*memTask, error) {
	t := s.tokens.get(ref.Token)
	if t == nil || t.state != msRunning || t.run.ID != ref.RunID || t.spec().Name != ref.Task {
		return nil, fmt.Errorf("%w: run %s task %s", ErrLeaseLost, ref.RunID, ref.Task)
	}
	return t, nil
}

// dropToken forgets t's lease token: t no longer runs, and frees its
// task-level concurrency slot if it has one.
func (s *MemoryStore) dropToken(t *memTask) {
	if t.token != 0 {
		s.tokens.del(t.token)
		t.token = 0
		if c := t.spec().Concurrency; c != nil {
			s.releaseTaskSlotLocked(c.Key)
		}
	}
}

// ExtendLeases implements Store.
func (s *MemoryStore) ExtendLeases(ctx context.Context, refs []ClaimRef, until time.Time) ([]LeaseStatus, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]LeaseStatus, len(refs))
	for i, ref := range refs {
		t, err := s.task(ref)
		if err != nil {
			out[i] = LeaseLost
			continue
		}
		t.leaseUntil = until.UnixNano()
		out[i] = LeaseHeld
		if t.run.canceled {
			out[i] = LeaseCanceled
		}
	}
	return out, nil
}

// CompleteTasks implements Store.
func (s *MemoryStore) CompleteTasks(ctx context.Context, cs []Completion) ([]CompleteResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]CompleteResult, len(cs))
	for i := range cs {
		s.completeLocked(&cs[i], &out[i])
	}
	return out, nil
}

// completeAndClaim records one completion and, if p is not nil, claims
// up to p.Limit tasks as ClaimTasks(p) would (the first claim's Upstream
// in *up, grown as needed), under one lock: the executor's path from one
// task to the next with this store, without a result slice to allocate.
// Tasks made ready by c are claimed through the ready queues like any
// others (priorities and FIFO order hold).
//
// hint tells about the first claim: its task's position in the run
// (NewRun.Tasks), and whether p.Now may serve as its attempt's start
// without another clock read: nothing recorded about what the task waited
// for is later than p.Now (see startsByLocked).
func (s *MemoryStore) completeAndClaim(c *Completion, p *ClaimParams, up *[]UpstreamResult) (res CompleteResult, cs []Claim, hint claimHint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.completeLocked(c, &res)
	if p == nil {
		return res, nil, claimHint{pos: -1}
	}
	cs = s.claimLocked(p, up)
	hint.pos = -1
	if len(cs) > 0 {
		if t := s.tokens.get(cs[0].Token); t != nil {
			hint.pos = int(t.idx)
			hint.nowStarts = s.startsByLocked(t, p.Now)
		}
	}
	return res, cs, hint
}

// startsByLocked reports whether the claimed task t became ready through
// events whose recorded times are all at or before now: its first attempt
// (no earlier attempt, rescue, delay or deferral), a run without flow
// control and without a start time, and either no dependencies and a run
// created by now, or dependencies that all finished with an attempt that
// ended by now. A claim made with an older clock than the events that made
// its task ready (a task promoted by a later clock, made ready by another
// worker, created by a later Submit, woken by a signal or a child run)
// must read the clock for its start.
func (s *MemoryStore) startsByLocked(t *memTask, now time.Time) bool {
	r := t.run
	if len(t.attempts) > 0 || t.rescues > 0 || !t.dueAt.IsZero() || t.unparked || r.flow != nil || r.ops != nil || !r.StartAt.IsZero() {
		return false
	}
	deps := t.spec().Deps
	if len(deps) == 0 {
		return !r.CreatedAt.After(now)
	}
	for _, d := range deps {
		dt := &r.tasks[d]
		if !dt.state.finished() || len(dt.attempts) == 0 || dt.attempts[len(dt.attempts)-1].FinishedAt.After(now) {
			return false
		}
	}
	return true
}

// completeLocked records one completion into res. Tasks it makes ready
// are reported in res; the completing orchestrator picks them up without
// a signal.
func (s *MemoryStore) completeLocked(c *Completion, res *CompleteResult) {
	t, err := s.task(c.ClaimRef)
	if err != nil {
		res.Err = err
		return
	}
	r := t.run
	s.dropToken(t)
	if c.ConsumeSignal != 0 && r.ops != nil {
		r.ops.consume(c.ConsumeSignal)
	}
	if c.Outcome != OutcomeSkipped && c.Outcome != OutcomeUpstreamFailed && c.Outcome != OutcomeCanceled && c.Outcome != OutcomeRelease && c.Outcome != OutcomeDefer && c.Outcome != OutcomeWait {
		oc := c.Outcome
		if c.TimedOut {
			oc = OutcomeTimedOut
		}
		t.attempts = recordAttempt(t.attempts, Attempt{
			Number: c.Attempt, StartedAt: c.StartedAt, FinishedAt: c.FinishedAt,
			Outcome: oc, Error: c.Error,
		})
	}
	switch c.Outcome {
	case OutcomeRetry, OutcomeSnooze, OutcomeRelease, OutcomeDefer:
		if c.Outcome == OutcomeRetry {
			t.spent++
		}
		t.rateRsv = c.Outcome == OutcomeDefer && c.RateReserved
		t.state = msPending
		t.err = c.Error
		if r.canceled {
			s.finishTaskLocked(t, TaskCanceled, "run canceled", c.FinishedAt, res)
			return
		}
		if c.Outcome == OutcomeRelease || c.RetryAt.IsZero() {
			s.pushReadyLocked(t)
		} else {
			t.dueAt = c.RetryAt
			heap.Push(&r.wf.delayed, t)
		}
	case OutcomeWait:
		s.waitLocked(t, c, res)
	case OutcomeSucceeded:
		t.spent++
		t.output = c.Output
		t.err = ""
		s.finishTaskLocked(t, TaskSucceeded, "", c.FinishedAt, res)
	case OutcomeFailed:
		t.spent++
		s.finishTaskLocked(t, TaskFailed, c.Error, c.FinishedAt, res)
	case OutcomeSkipped:
		s.finishTaskLocked(t, TaskSkipped, c.Error, c.FinishedAt, res)
	case OutcomeUpstreamFailed:
		s.finishTaskLocked(t, TaskUpstreamFailed, c.Error, c.FinishedAt, res)
	case OutcomeCanceled:
		s.finishTaskLocked(t, TaskCanceled, c.Error, c.FinishedAt, res)
	default:
		res.Err = fmt.Errorf("batuta: memory store: unknown outcome %q", c.Outcome)
	}
}

// finishTaskLocked moves t to a terminal state, counts its dependents down
// (making ready those whose last dependency this was, and those that fire
// early on st) and finishes the run when it was the last task.
func (s *MemoryStore) finishTaskLocked(t *memTask, st TaskState, errMsg string, now time.Time, res *CompleteResult) {
	t.state = memStateOf(st)
	t.err = errMsg
	s.dropToken(t)
	r := t.run
	r.remaining--
	if st == TaskFailed && r.Error == "" {
		r.Error = fmt.Sprintf("task %s failed: %s", t.spec().Name, errMsg)
	}
	if st == TaskFailed || st == TaskUpstreamFailed {
		r.mayFail = true
	}
	var dependents []int32
	if r.idx != nil {
		dependents = r.deps[r.idx[t.idx].dep:r.idx[t.idx+1].dep]
	}
	for _, d := range dependents {
		// The counters sit together, apart from the tasks: a dependent
		// whose count does not reach zero is not read (a layered run
		// touches one memTask per task made ready, not per dependency).
		p := &r.idx[d].pending
		*p--
		if *p != 0 && !r.fireOn {
			continue
		}
		dt := &r.tasks[d]
		if dt.state == msPending && !dt.readied && (*p == 0 || dt.spec().FiresOn(st)) {
			dt.readied = true
			if r.canceled {
				// Cancel cascades: the dependents finish too.
				var sub CompleteResult
				s.finishTaskLocked(dt, TaskCanceled, "run canceled", now, &sub)
				if sub.RunFinished != "" {
					res.RunFinished = sub.RunFinished
				}
				continue
			}
			s.pushReadyLocked(dt)
			res.Ready++
		}
	}
	// A cancel cascading to the last task finished the run already.
	if r.remaining == 0 && !r.State.Finished() {
		res.Ready += s.finishRunLocked(r, now)
		res.RunFinished = r.State
	}
}

// finishRunLocked records r's end and returns how many tasks of other runs
// its concurrency slot made ready.
func (s *MemoryStore) finishRunLocked(r *memRun, now time.Time) int {
	switch {
	case r.canceled:
		r.State = RunCanceled
	default:
		r.State = RunSucceeded
		for i := 0; r.mayFail && i < len(r.tasks); i++ { // no pass when none failed
			if st := r.tasks[i].state; st == msFailed || st == msUpstreamFailed {
				r.State = RunFailed
				break
			}
		}
	}
	if r.State == RunSucceeded {
		r.Error = ""
	}
	r.FinishedAt = now
	s.active--
	ready := 0
	if r.flow != nil {
		ready = s.runFinishedFlowLocked(r)
	}
	if r.Parent != nil {
		s.childFinishedLocked(r, now)
	}
	s.watch.Finished(r.ID)
	r.finAt = s.finBase + len(s.finished)
	s.finished = append(s.finished, r)
	if s.cfg.KeepFinished >= 0 {
		for len(s.finished)-s.finHead > s.cfg.KeepFinished {
			s.dropLocked(s.finished[s.finHead])
			s.finished[s.finHead] = nil
			s.finHead++
		}
	}
	s.compactFinishedLocked()
	return ready
}

func (s *MemoryStore) compactFinishedLocked() {
	if s.finHead > 1024 && s.finHead*2 > len(s.finished) {
		s.finished = append(s.finished[:0:0], s.finished[s.finHead:]...)
		s.finBase += s.finHead
		s.finHead = 0
	}
}

func (s *MemoryStore) dropLocked(r *memRun) {
	if r.dropped {
		return
	}
	r.dropped = true
	delete(s.runs, r.ID)
	if cur := s.byKey[memKey{r.Workflow, r.Event.ID}]; cur == r {
		delete(s.byKey, memKey{r.Workflow, r.Event.ID})
	}
	if r.recycle && !r.canceled && r.State.Finished() {
		// Every task finished (none runs: each dropped its token) and
		// none was canceled: no ready queue, heap or group holds a
		// pointer to them, claims and snapshots hold copies. The arrays
		// go to the next run of the same shape.
		s.pool.put(memSlabs{tasks: r.tasks, attempts: r.attemptSlab, idx: r.idx, deps: r.deps})
		r.tasks, r.attemptSlab, r.idx, r.deps = nil, nil, nil, nil
	}
}

// maxExpire bounds the finished runs one CreateRun drops for the TTL, so
// that a mass expiry does not stall the store; the rest go with the next
// calls (or Prune).
const maxExpire = 256

// expireLocked drops finished runs older than the TTL, at most maxExpire.
func (s *MemoryStore) expireLocked(now time.Time) {
	if now.IsZero() || s.cfg.FinishedTTL <= 0 {
		return
	}
	cut := now.Add(-s.cfg.FinishedTTL)
	for n := 0; s.finHead < len(s.finished) && n < maxExpire; n++ {
		r := s.finished[s.finHead]
		if !r.dropped && !r.FinishedAt.Before(cut) {
			break
		}
		s.dropLocked(r)
		s.finished[s.finHead] = nil
		s.finHead++
	}
	s.compactFinishedLocked()
}

// RescueExpired implements Store.
func (s *MemoryStore) RescueExpired(ctx context.Context, now time.Time, maxRescues int) (int, int, error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var rescued, failed int
	// Only running tasks hold a token: the scan is bounded by the claims
	// in flight, not by the runs waiting (delayed, queued, paused).
	var expired []*memTask
	for _, t := range s.tokens.slots {
		if t != nil && t.state == msRunning && t.leaseUntil < now.UnixNano() {
			expired = append(expired, t)
		}
	}
	for _, t := range expired {
		r := t.run
		t.rescues++
		if int(t.rescues) > maxRescues {
			var res CompleteResult
			s.finishTaskLocked(t, TaskFailed, fmt.Sprintf("lease expired %d times (worker lost each time); giving up", t.rescues), now, &res)
			failed++
			continue
		}
		t.state = msPending
		s.dropToken(t)
		if r.canceled {
			var res CompleteResult
			s.finishTaskLocked(t, TaskCanceled, "run canceled", now, &res)
			continue
		}
		s.pushReadyLocked(t)
		rescued++
	}
	if rescued > 0 || failed > 0 {
		s.signal()
	}
	return rescued, failed, nil
}

// CancelRun implements Store.
func (s *MemoryStore) CancelRun(ctx context.Context, runID, reason string, now time.Time) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.runs[runID]
	if r == nil {
		return false, fmt.Errorf("%w: %s", ErrRunNotFound, runID)
	}
	if r.State.Finished() || r.canceled {
		return false, nil
	}
	if reason == "" {
		reason = "canceled"
	}
	s.cancelLocked(r, reason, now)
	return true, nil
}

// cancelLocked cancels the unfinished run r: its pending tasks at once,
// its running ones when they report. It returns how many tasks of other
// runs became ready (the run's concurrency slot freed).
func (s *MemoryStore) cancelLocked(r *memRun, reason string, now time.Time) int {
	r.canceled = true
	r.Error = reason
	var res CompleteResult
	for i := range r.tasks {
		t := &r.tasks[i]
		if t.state == msPending {
			if t.heapIdx >= 0 {
				heap.Remove(&r.wf.delayed, int(t.heapIdx))
			}
			s.finishTaskLocked(t, TaskCanceled, reason, now, &res)
			if c := t.spec().Concurrency; c != nil {
				if g := s.tgroups[c.Key]; g != nil {
					s.unparkLocked(g) // drops t if it was parked there; forgets g once idle
				}
			}
		}
	}
	if r.ops != nil && len(r.ops.kids) > 0 {
		res.Ready += s.cancelChildrenLocked(r, reason, now)
	}
	if res.Ready > 0 {
		s.signal()
	}
	return res.Ready
}

func (s *MemoryStore) snapshotLocked(r *memRun) *Run {
	out := r.Run
	if out.Parent != nil {
		p := *out.Parent
		out.Parent = &p
	}
	out.Tasks = make([]TaskRun, len(r.tasks))
	for i := range r.tasks {
		t := &r.tasks[i]
		deps := make([]string, len(t.spec().Deps))
		for k, d := range t.spec().Deps {
			deps[k] = r.tasks[d].spec().Name
		}
		out.Tasks[i] = TaskRun{
			Name: t.spec().Name, State: t.state.ts(), Deps: deps, Output: t.output,
			Error: t.err, Attempts: append([]Attempt(nil), t.attempts...), Rescues: int(t.rescues),
		}
		if t.state == msPending && t.heapIdx >= 0 {
			out.Tasks[i].NotBefore = t.dueAt
		}
		if w := t.waitState(); w != nil {
			out.Tasks[i].WaitingSince, out.Tasks[i].WaitingFor, out.Tasks[i].Child = w.since, w.what, w.child
		}
	}
	return &out
}

// GetRun implements Store.
func (s *MemoryStore) GetRun(ctx context.Context, runID string) (*Run, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.runs[runID]
	if r == nil {
		return nil, fmt.Errorf("%w: %s", ErrRunNotFound, runID)
	}
	return s.snapshotLocked(r), nil
}

// FindRun implements Store.
func (s *MemoryStore) FindRun(ctx context.Context, workflow, eventID string) (*Run, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.byKey[memKey{workflow, eventID}]
	if r == nil {
		return nil, fmt.Errorf("%w: workflow %s event %s", ErrRunNotFound, workflow, eventID)
	}
	return s.snapshotLocked(r), nil
}

// Prune implements Store. It deletes the oldest finished runs first, in
// batches of p.BatchSize (default 1000) runs, each under the store's lock
// once, yielding between batches so that Submit, claims and completions
// wait for one batch at most. It stops at the first finished run it keeps
// (so a run finished out of order with its neighbours may wait for a later
// pass), or when ctx ends.
func (s *MemoryStore) Prune(ctx context.Context, p PrunePolicy) (int, error) {
	bs := p.BatchSize
	if bs <= 0 {
		bs = defaultPruneBatch
	}
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, more := s.pruneBatch(p, bs)
		total += n
		if s.pruneHook != nil {
			s.pruneHook(n)
		}
		if !more {
			return total, nil
		}
		runtime.Gosched() // let those who waited for the lock in
	}
}

// defaultPruneBatch is PrunePolicy.BatchSize's default.
const defaultPruneBatch = 1000

// pruneBatch deletes up to bs finished runs (looking at no more than 4*bs)
// under the lock, and reports whether more may be left.
func (s *MemoryStore) pruneBatch(p PrunePolicy, bs int) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.compactFinishedLocked()
	n := 0
	for looked := 0; s.finHead < len(s.finished); looked++ {
		if n == bs || looked == 4*bs {
			return n, true
		}
		r := s.finished[s.finHead]
		if !r.dropped {
			newer := len(s.finished) - s.finHead - 1 // finished after r (upper bound)
			byAge := !p.Before.IsZero() && r.FinishedAt.Before(p.Before)
			byCount := p.KeepLast > 0 && newer >= p.KeepLast
			if !byAge && !byCount {
				return n, false
			}
			s.dropLocked(r)
			n++
		}
		s.finished[s.finHead] = nil
		s.finHead++
	}
	return n, false
}

// LastTick implements Store.
func (s *MemoryStore) LastTick(ctx context.Context, schedule string) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ticks[schedule], nil
}

// RecordTick implements Store.
func (s *MemoryStore) RecordTick(ctx context.Context, schedule string, tick time.Time) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !tick.After(s.ticks[schedule]) {
		return false, nil
	}
	s.ticks[schedule] = tick
	return true, nil
}

func (t *memTask) spec() *TaskSpec { return &t.run.specs[t.idx] }

// memIdx is a run's per-task index entry: where the task's dependents
// start in memRun.deps, and how many of its dependencies have not
// finished (counted down as they finish; a task's FireOn may make it
// ready earlier).
type memIdx struct {
	dep     int32
	pending int32
}

// pending returns how many dependencies of task i have not finished.
func (r *memRun) pending(i int) int32 {
	if r.idx == nil {
		return 0
	}
	return r.idx[i].pending
}

// memWF is one workflow's share of the store.
type memWF struct {
	name    string
	ready   memReadyQ    // claimable tasks by priority
	delayed memDelayHeap // pending tasks due later (start, retry, snooze, deferral)
	paused  bool
}

// memReadyQ holds a workflow's claimable tasks: one FIFO per run priority,
// highest first. Runs without a priority use a single level.
type memReadyQ struct {
	levels []memLevel // by priority, descending
}

type memLevel struct {
	prio int
	q    memQueue
}

func (m *memReadyQ) push(t *memTask) {
	p := t.run.Priority
	for i := range m.levels {
		if l := &m.levels[i]; l.prio == p {
			l.q.push(t)
			return
		} else if l.prio < p {
			m.levels = append(m.levels, memLevel{})
			copy(m.levels[i+1:], m.levels[i:])
			m.levels[i] = memLevel{prio: p}
			m.levels[i].q.push(t)
			return
		}
	}
	m.levels = append(m.levels, memLevel{prio: p})
	m.levels[len(m.levels)-1].q.push(t)
}

// pop removes the oldest task of the highest non-empty level whose
// priority is at least minPrio (stale entries included: the caller skips
// them). Empty levels other than priority 0 are dropped.
func (m *memReadyQ) pop(minPrio int) *memTask {
	for i := 0; i < len(m.levels); {
		l := &m.levels[i]
		if l.prio < minPrio {
			return nil
		}
		if t := l.q.pop(); t != nil {
			return t
		}
		if l.prio != 0 {
			m.levels = slices.Delete(m.levels, i, i+1)
			continue
		}
		i++
	}
	return nil
}

// top returns the priority of the highest non-empty level.
func (m *memReadyQ) top() (int, bool) {
	for i := range m.levels {
		if l := &m.levels[i]; l.q.head < len(l.q.items) {
			return l.prio, true
		}
	}
	return 0, false
}

// memQueue is a FIFO of ready tasks.
type memQueue struct {
	items []*memTask
	head  int
}

func (q *memQueue) push(t *memTask) { q.items = append(q.items, t) }

func (q *memQueue) pop() *memTask {
	if q.head == len(q.items) {
		if q.head > 0 {
			q.items, q.head = q.items[:0], 0
			if cap(q.items) > memQueueKeep {
				q.items = nil // a burst is over: do not hold its storage
			}
		}
		return nil
	}
	t := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	if q.head > 4096 && q.head*2 > len(q.items) {
		// Compact in place: the storage is kept for the next pushes
		// (a new slice here would be grown again push by push).
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	return t
}

// memQueueKeep is the most entries' storage an empty queue keeps.
const memQueueKeep = 1 << 16

// memDelayHeap orders tasks by due time.
type memDelayHeap []*memTask

func (h memDelayHeap) Len() int           { return len(h) }
func (h memDelayHeap) Less(i, j int) bool { return h[i].dueAt.Before(h[j].dueAt) }
func (h memDelayHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = int32(i), int32(j)
}
func (h *memDelayHeap) Push(x any) {
	t := x.(*memTask)
	t.heapIdx = int32(len(*h))
	*h = append(*h, t)
}
func (h *memDelayHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.heapIdx = -1
	return t
}

// memTokens maps the lease tokens of running tasks to their tasks without
// hashing: a table indexed by the token's low bits. Tokens are still
// unique and increasing (a token whose slot is taken is skipped), and the
// table stays at most half full, so a lookup is one index and a compare.
// It grows with the most tasks running at once and is never shrunk.
type memTokens struct {
	slots []*memTask // len is 0 or a power of 2
	live  int
	last  int64 // the last token handed out
}

// add gives t a new token and records it.
func (m *memTokens) add(t *memTask) int64 {
	if (m.live+1)*2 > len(m.slots) {
		m.grow()
	}
	mask := int64(len(m.slots) - 1)
	for {
		m.last++
		if m.slots[m.last&mask] == nil {
			break
		}
	}
	m.slots[m.last&mask] = t
	m.live++
	return m.last
}

// grow doubles the table. Live tokens in distinct slots stay in distinct
// slots: the new mask keeps every bit of the old one.
func (m *memTokens) grow() {
	old := m.slots
	m.slots = make([]*memTask, max(2*len(old), 64))
	mask := int64(len(m.slots) - 1)
	for _, t := range old {
		if t != nil {
			m.slots[t.token&mask] = t
		}
	}
}

// get returns the running task holding token tok, or nil.
func (m *memTokens) get(tok int64) *memTask {
	if tok <= 0 || len(m.slots) == 0 {
		return nil
	}
	if t := m.slots[tok&int64(len(m.slots)-1)]; t != nil && t.token == tok {
		return t
	}
	return nil
}

// del forgets token tok.
func (m *memTokens) del(tok int64) {
	if len(m.slots) == 0 {
		return
	}
	i := tok & int64(len(m.slots)-1)
	if t := m.slots[i]; t != nil && t.token == tok {
		m.slots[i] = nil
		m.live--
	}
}

// memTaskState is a task's state in memTask: one byte where TaskState is a
// string header.
type memTaskState uint8

const (
	msPending memTaskState = iota
	msRunning
	msSucceeded
	msFailed
	msSkipped
	msUpstreamFailed
	msCanceled
)

var memStateNames = [...]TaskState{
	msPending: TaskPending, msRunning: TaskRunning, msSucceeded: TaskSucceeded, msFailed: TaskFailed,
	msSkipped: TaskSkipped, msUpstreamFailed: TaskUpstreamFailed, msCanceled: TaskCanceled,
}

// ts returns the state as the Store API spells it.
func (m memTaskState) ts() TaskState { return memStateNames[m] }

// finished reports whether the state is terminal.
func (m memTaskState) finished() bool { return m >= msSucceeded }

// memStateOf returns the memTaskState of st (pending for an unknown state).
func memStateOf(st TaskState) memTaskState {
	for m, n := range memStateNames {
		if n == st {
			return memTaskState(m)
		}
	}
	return msPending
}

// memSlabs are a run's per-task arrays.
type memSlabs struct {
	tasks    []memTask
	attempts []Attempt // first attempts
	idx      []memIdx
	deps     []int32
}

// memPool keeps the arrays of a few dropped runs for new runs of the same
// shape (task and dependency counts): a workflow's runs then reuse memory
// instead of allocating (and having the GC scan and sweep) some 300 bytes
// per task. It has its own lock: runs are built outside the store's.
type memPool struct {
	mu   sync.Mutex
	free []memSlabs // at most memPoolSize, the most recent last
}

// memPoolSize bounds the arrays kept: the shapes of a few workflows.
const memPoolSize = 4

// get returns cleared arrays for n tasks with ndeps dependencies.
func (p *memPool) get(n, ndeps int) memSlabs {
	p.mu.Lock()
	for i := len(p.free) - 1; i >= 0; i-- {
		if sl := p.free[i]; len(sl.tasks) == n && len(sl.deps) == ndeps {
			p.free = append(p.free[:i], p.free[i+1:]...)
			p.free[len(p.free) : len(p.free)+1][0] = memSlabs{}
			p.mu.Unlock()
			// tasks are overwritten whole by buildMemRun; first attempts
			// are written by append before they are read.
			clear(sl.idx)
			if ndeps == 0 {
				sl.idx = nil // buildMemRun builds no index
			}
			return sl
		}
	}
	p.mu.Unlock()
	sl := memSlabs{tasks: make([]memTask, n), attempts: make([]Attempt, n)}
	if ndeps > 0 {
		sl.idx, sl.deps = make([]memIdx, n+1), make([]int32, ndeps)
	}
	return sl
}

// put keeps sl for a later run, dropping the oldest kept if full.
func (p *memPool) put(sl memSlabs) {
	if len(sl.tasks) < 64 {
		return // small runs: allocating is as cheap
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) == memPoolSize {
		copy(p.free, p.free[1:])
		p.free = p.free[:memPoolSize-1]
	}
	p.free = append(p.free, sl)
}
