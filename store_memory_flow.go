package batuta

import (
	"container/heap"
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Flow control in the memory store (issue 11).
//
// Runs and tasks that use no flow feature pay for none: a run gets a
// memRunFlow only when it has a concurrency group or a debounce key, a
// delayed task waits in its workflow's heap as retries always did, and a
// priority other than 0 adds a level to its workflow's ready queue.
//
//   - Workflow-level groups (memGroup): a Queue run is admitted when its
//     first task becomes due, if its group has room; otherwise it waits in
//     the group's heap (priority, then creation) with its due tasks parked,
//     and is admitted the moment a run of the group finishes. Admission is
//     thus never decided by a claim scanning waiting runs: a busy group
//     holds at most Max runs in the ready queues, so it cannot crowd out
//     quiet groups, whose runs enter the ready queues as soon as they are
//     due (the ready queues are FIFO across groups: round-robin by arrival).
//   - Task-level groups (memTGroup): a claim that finds its task's group
//     full parks the task in the group's heap; each freed slot moves one
//     parked task back to the ready queue, reserved for it until claimed.
//   - Debounce: one entry per (workflow, key) names the pending run that
//     new events merge into; its root tasks' due time moves in the heap.
//   - Rates: GCRA state (the theoretical arrival time) per key, under its
//     own lock; keys idle for longer than Per are forgotten.

// memRunFlow is the flow-control state of a run that uses it.
type memRunFlow struct {
	max       int       // the run's group's Max; 0: no workflow-level group
	group     *memGroup // while admitted or waiting: its group (looked up again at each wait)
	admitted  bool
	gIdx      int        // index in group.waiters, -1 if not waiting
	parked    []*memTask // due tasks waiting for the run's admission
	seq       uint64     // creation order, for ties in the waiting heap
	debKey    memKey     // (workflow, debounce key)
	debounced bool       // s.debounce may name this run
	strategy  ConcurrencyStrategy
}

// memRunAndFlow allocates a run that uses flow control with its state.
type memRunAndFlow struct {
	memRun
	flow memRunFlow
}

// memGroup is a workflow-level concurrency group with unfinished runs.
type memGroup struct {
	key      string
	max      int
	admitted int        // admitted, unfinished runs
	waiters  memRunHeap // runs due but not admitted (Queue)
	cip      []*memRun  // admitted runs in creation order (CancelInProgress)
}

// memTGroup is a task-level concurrency group.
type memTGroup struct {
	key     string
	max     int
	running int         // claimed, not yet completed
	inReady int         // unparked into a ready queue, not yet claimed: slots kept for them
	waiting memParkHeap // tasks that found the group full
}

// memRates holds the GCRA state of rate keys.
type memRates struct {
	mu      sync.Mutex
	keys    map[string]memRate
	sweepAt int
}

type memRate struct {
	tat time.Time     // theoretical arrival time
	per time.Duration // the key's Per, to forget it once idle that long
}

// createFlowLocked applies nr's debounce and concurrency to the new run r,
// already recorded, and returns its start time (zero: at once). For a
// CancelNewest run that found its group full it records r canceled and
// sets res.Rejected.
func (s *MemoryStore) createFlowLocked(nr *NewRun, r *memRun, start time.Time, res *CreateResult) time.Time {
	s.seq++
	f := r.flow // allocated with r (buildMemRun)
	f.seq = s.seq
	if d := nr.Debounce; d != nil {
		if ws := nr.CreatedAt.Add(d.Window); ws.After(nr.CreatedAt) && ws.After(start) {
			start = ws
		}
		f.debKey, f.debounced = memKey{nr.Workflow, d.Key}, true
		s.debounce[f.debKey] = r
	}
	c := nr.Concurrency
	if c == nil {
		return start
	}
	r.ConcurrencyKey = c.Key
	f.max = max(c.Max, 1)
	f.strategy = c.Strategy
	switch c.Strategy {
	case ConcurrencyCancelNewest:
		if g := s.groups[c.Key]; g != nil && g.admitted >= f.max {
			res.Rejected = true
			s.cancelLocked(r, fmt.Sprintf("concurrency limit reached: group %q already holds %d unfinished runs (Max %d, CancelNewest)", c.Key, g.admitted, c.Max), nr.CreatedAt)
			return time.Time{}
		}
		g := s.groupLocked(c.Key, f.max)
		f.group, f.admitted = g, true
		g.admitted++
	case ConcurrencyCancelInProgress:
		if g := s.groups[c.Key]; g != nil {
			live := g.cip[:0]
			for _, o := range g.cip {
				if !o.State.Finished() && !o.canceled {
					live = append(live, o)
				}
			}
			clear(g.cip[len(live):])
			g.cip = live
			for len(g.cip) > 0 && len(g.cip) >= f.max {
				v := g.cip[0]
				g.cip = g.cip[1:]
				s.cancelLocked(v, fmt.Sprintf("canceled by newer run %s (concurrency group %q, Max %d, CancelInProgress)", r.ID, c.Key, c.Max), nr.CreatedAt)
				res.Canceled = append(res.Canceled, v.ID)
			}
		}
		g := s.groupLocked(c.Key, f.max) // a fresh one if the old emptied
		g.cip = append(g.cip, r)
		f.group, f.admitted = g, true
		g.admitted++
	default:
		// Queue: the run joins its group when its first task is due.
	}
	return start
}

func (s *MemoryStore) groupLocked(key string, max int) *memGroup {
	g := s.groups[key]
	if g == nil {
		if n := len(s.freeGrps); n > 0 {
			g, s.freeGrps = s.freeGrps[n-1], s.freeGrps[:n-1]
			g.key = key
		} else {
			g = &memGroup{key: key}
		}
		s.groups[key] = g
	}
	g.max = max
	return g
}

// forgetGroupLocked drops the idle group g, keeping it for reuse.
func (s *MemoryStore) forgetGroupLocked(g *memGroup) {
	if s.groups[g.key] != g {
		return
	}
	delete(s.groups, g.key)
	if len(s.freeGrps) < 256 {
		clear(g.cip)
		*g = memGroup{waiters: g.waiters[:0], cip: g.cip[:0]}
		s.freeGrps = append(s.freeGrps, g)
	}
}

// parkRunTaskLocked holds the due task t of the unadmitted run r and puts
// r in its group's waiting heap, admitting it at once if there is room.
func (s *MemoryStore) parkRunTaskLocked(r *memRun, t *memTask) {
	f := r.flow
	if f.gIdx < 0 {
		// Looked up now, not kept from CreateRun: an idle group is
		// forgotten, and a delayed run may be due long after.
		g := s.groupLocked(r.ConcurrencyKey, f.max)
		f.group = g
		if g.admitted < g.max && len(g.waiters) == 0 {
			f.admitted = true // room: admitted without waiting
			g.admitted++
			r.wf.ready.push(t)
			return
		}
		f.parked = append(f.parked, t)
		heap.Push(&g.waiters, r)
		s.fillGroupLocked(g)
		return
	}
	f.parked = append(f.parked, t)
}

// fillGroupLocked admits waiting runs while g has room and returns how
// many tasks it made ready.
func (s *MemoryStore) fillGroupLocked(g *memGroup) int {
	n := 0
	for g.admitted < g.max && len(g.waiters) > 0 {
		r := heap.Pop(&g.waiters).(*memRun)
		f := r.flow
		f.admitted = true
		g.admitted++
		for _, t := range f.parked {
			if t.state == msPending {
				r.wf.ready.push(t)
				n++
			}
		}
		clear(f.parked)
		f.parked = f.parked[:0]
	}
	if n > 0 {
		s.signal()
	}
	return n
}

// runStartedLocked: r's first task was claimed; events no longer merge
// into it.
func (s *MemoryStore) runStartedLocked(r *memRun) {
	if f := r.flow; f.debounced {
		if s.debounce[f.debKey] == r {
			delete(s.debounce, f.debKey)
		}
		f.debounced = false
	}
}

// runFinishedFlowLocked takes the finished run r out of its debounce entry
// and its concurrency group, admitting the next waiting runs; it returns
// how many tasks that made ready.
func (s *MemoryStore) runFinishedFlowLocked(r *memRun) int {
	s.runStartedLocked(r)
	f := r.flow
	g := f.group
	if g == nil {
		return 0
	}
	f.group = nil
	f.parked = nil
	if f.gIdx >= 0 {
		heap.Remove(&g.waiters, f.gIdx)
	}
	if f.admitted {
		g.admitted--
	}
	n := s.fillGroupLocked(g)
	if g.admitted == 0 && len(g.waiters) == 0 {
		s.forgetGroupLocked(g)
	}
	return n
}

// debounceLocked merges nr into the pending run of its debounce key, if
// there is one whose tasks have not started and whose start time is after
// nr.CreatedAt, and returns that run; nil if nr starts a run of its own.
func (s *MemoryStore) debounceLocked(nr *NewRun) *memRun {
	m := s.debounceTargetLocked(nr)
	if m == nil {
		return nil
	}
	d := nr.Debounce
	start := nr.CreatedAt.Add(d.Window)
	if limit := m.CreatedAt.Add(d.MaxWait); limit.Before(start) {
		start = limit
	}
	if old := (memKey{m.Workflow, m.Event.ID}); s.byKey[old] == m {
		delete(s.byKey, old)
	}
	m.Event = nr.Event
	s.byKey[memKey{nr.Workflow, nr.Event.ID}] = m
	m.StartAt = start
	for i := range m.tasks {
		if t := &m.tasks[i]; len(m.specs[i].Deps) == 0 {
			t.dueAt = start
			heap.Fix(&m.wf.delayed, int(t.heapIdx))
		}
	}
	return m
}

// debounceTargetLocked returns the pending run nr would merge into, or nil.
func (s *MemoryStore) debounceTargetLocked(nr *NewRun) *memRun {
	m := s.debounce[memKey{nr.Workflow, nr.Debounce.Key}]
	if m == nil || m.dropped || m.canceled || m.State != RunPending || !m.StartAt.After(nr.CreatedAt) {
		return nil
	}
	for i := range m.tasks {
		if t := &m.tasks[i]; len(m.specs[i].Deps) == 0 && (t.state != msPending || t.heapIdx < 0) {
			return nil // already due (promoted by a claim with a later clock)
		}
	}
	return m
}

// addsRunLocked reports whether recording nr would add a run: it is not a
// duplicate and does not merge into a debounced one. MaxActive refuses
// only those.
func (s *MemoryStore) addsRunLocked(nr *NewRun) bool {
	if s.byKey[memKey{nr.Workflow, nr.Event.ID}] != nil {
		return false
	}
	return nr.Debounce == nil || s.debounceTargetLocked(nr) == nil
}

// takeTaskSlotLocked takes a slot of t's task-level group c for a claim,
// or parks t in the group and reports false. Slots kept for unparked tasks
// count as taken.
func (s *MemoryStore) takeTaskSlotLocked(t *memTask, c *ConcurrencySpec) bool {
	g := s.tgroups[c.Key]
	if g == nil {
		g = &memTGroup{key: c.Key}
		s.tgroups[c.Key] = g
	}
	g.max = c.Max
	if g.running+g.inReady >= g.max {
		heap.Push(&g.waiting, t)
		return false
	}
	g.running++
	return true
}

// unparkedPoppedLocked: the unparked task t left the ready queue; the
// slot kept for it is now its to take (the caller claims t, or, if t is
// stale, gives the slot to another with unparkLocked). It returns t's
// group.
func (s *MemoryStore) unparkedPoppedLocked(t *memTask) *memTGroup {
	t.unparked = false
	g := s.tgroups[t.spec().Concurrency.Key]
	if g != nil {
		g.inReady--
	}
	return g
}

// releaseTaskSlotLocked: a running task of group key stopped running.
func (s *MemoryStore) releaseTaskSlotLocked(key string) {
	if g := s.tgroups[key]; g != nil {
		g.running--
		s.unparkLocked(g)
	}
}

// unparkLocked moves parked tasks of g back to their ready queues while g
// has free slots, keeping a slot for each, and forgets g once idle.
func (s *MemoryStore) unparkLocked(g *memTGroup) {
	for g.running+g.inReady < g.max && len(g.waiting) > 0 {
		t := heap.Pop(&g.waiting).(*memTask)
		if t.state != msPending || t.run.canceled || t.run.dropped {
			continue
		}
		t.unparked = true
		g.inReady++
		t.run.wf.ready.push(t)
		s.signal()
	}
	if g.running <= 0 && g.inReady <= 0 && len(g.waiting) == 0 && s.tgroups[g.key] == g {
		delete(s.tgroups, g.key)
	}
}

// CreateRuns implements Store: the batch is checked first (tasks, then
// MaxActive once, unless no run of it would be added), then recorded under
// one lock, item by item as CreateRun would.
func (s *MemoryStore) CreateRuns(ctx context.Context, runs []NewRun) ([]CreateResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(runs) == 0 {
		return nil, nil
	}
	built := make([]*memRun, len(runs))
	maxActive := 0
	for i := range runs {
		r, err := buildMemRun(&runs[i], &s.pool)
		if err != nil {
			return nil, err
		}
		built[i] = r
		if m := runs[i].MaxActive; m > 0 && (maxActive == 0 || m < maxActive) {
			maxActive = m
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(runs[0].CreatedAt)
	if maxActive > 0 && s.active >= maxActive {
		for i := range runs {
			if s.addsRunLocked(&runs[i]) {
				return nil, fmt.Errorf("%w: %d runs in flight", ErrBusy, s.active)
			}
		}
	}
	out := make([]CreateResult, len(runs))
	for i := range runs {
		out[i] = s.createLocked(&runs[i], built[i])
	}
	return out, nil
}

// NextDue implements Store. Due tasks are first moved to the ready set, so
// the answer is the top of the first heap entry after now.
func (s *MemoryStore) NextDue(ctx context.Context, workflows []string, now time.Time) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var next time.Time
	consider := func(w *memWF) {
		if w == nil || w.paused {
			return
		}
		s.promoteLocked(w, now)
		if len(w.delayed) > 0 {
			if d := w.delayed[0].dueAt; next.IsZero() || d.Before(next) {
				next = d
			}
		}
	}
	if len(workflows) == 0 {
		for _, w := range s.wfOrder {
			consider(w)
		}
	} else {
		for _, name := range workflows {
			consider(s.wfs[name])
		}
	}
	return next, nil
}

// SetPaused implements Store. Resuming signals WorkAvailable.
func (s *MemoryStore) SetPaused(ctx context.Context, workflow string, paused bool) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.wfLocked(workflow)
	if w.paused == paused {
		return false, nil
	}
	w.paused = paused
	if !paused {
		s.signal()
	}
	return true, nil
}

// PausedWorkflows implements Store.
func (s *MemoryStore) PausedWorkflows(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, w := range s.wfOrder {
		if w.paused {
			out = append(out, w.name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// ReserveRate implements Store with GCRA (see RateSpec).
func (s *MemoryStore) ReserveRate(ctx context.Context, spec RateSpec, now time.Time) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	if err := checkRateSpec(spec); err != nil {
		return time.Time{}, err
	}
	T := spec.Per / time.Duration(spec.Limit)
	if T <= 0 {
		T = 1
	}
	tau := time.Duration(spec.Burst-1) * T
	rs := &s.rates
	rs.mu.Lock()
	defer rs.mu.Unlock()
	tat := rs.keys[spec.Key].tat
	if tat.Before(now) {
		tat = now
	}
	slot := tat.Add(-tau)
	if slot.Before(now) {
		slot = now
	}
	rs.keys[spec.Key] = memRate{tat: tat.Add(T), per: spec.Per}
	if len(rs.keys) > rs.sweepAt {
		for k, v := range rs.keys {
			if v.tat.Add(v.per).Before(now) {
				delete(rs.keys, k)
			}
		}
		rs.sweepAt = 2*len(rs.keys) + 1024
	}
	return slot, nil
}

// checkRateSpec refuses a rate spec the GCRA cannot use.
func checkRateSpec(spec RateSpec) error {
	switch {
	case spec.Limit < 1:
		return fmt.Errorf("%w: rate limit %q: Limit %d, want >= 1", ErrInvalidConfig, spec.Key, spec.Limit)
	case spec.Per <= 0:
		return fmt.Errorf("%w: rate limit %q: Per %v, want > 0", ErrInvalidConfig, spec.Key, spec.Per)
	case spec.Burst < 1:
		return fmt.Errorf("%w: rate limit %q: Burst %d, want >= 1", ErrInvalidConfig, spec.Key, spec.Burst)
	}
	return nil
}

// memRunHeap orders a group's waiting runs: higher priority first, then
// creation.
type memRunHeap []*memRun

func (h memRunHeap) Len() int { return len(h) }
func (h memRunHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	if !a.CreatedAt.Equal(b.CreatedAt) {
		return a.CreatedAt.Before(b.CreatedAt)
	}
	return a.flow.seq < b.flow.seq
}
func (h memRunHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].flow.gIdx, h[j].flow.gIdx = i, j
}
func (h *memRunHeap) Push(x any) {
	r := x.(*memRun)
	r.flow.gIdx = len(*h)
	*h = append(*h, r)
}
func (h *memRunHeap) Pop() any {
	old := *h
	r := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	r.flow.gIdx = -1
	return r
}

// memParkHeap orders tasks parked on a full task-level group: higher run
// priority first, then older runs (UUIDv7 IDs), then declaration order.
type memParkHeap []*memTask

func (h memParkHeap) Len() int { return len(h) }
func (h memParkHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	if a.run.Priority != b.run.Priority {
		return a.run.Priority > b.run.Priority
	}
	if a.run != b.run {
		return a.run.ID < b.run.ID
	}
	return a.idx < b.idx
}
func (h memParkHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *memParkHeap) Push(x any)   { *h = append(*h, x.(*memTask)) }
func (h *memParkHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return t
}
