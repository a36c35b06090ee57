package batuta

import (
	"container/heap"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Durable waits and operations in the memory store (issues 12 and 13).
//
// Like flow control, they cost nothing to the runs that do not use them: a
// task gets a memWait the first time it waits, a run a memRunOps when a
// signal is buffered for it or a child run names it as parent. A task that
// waits with no time limit sits in no queue at all (memWait.idle): only a
// signal, the end of its child runs or a cancel moves it.

// memWait is the wait state of a task that handed itself back with
// OutcomeWait at least once.
type memWait struct {
	since time.Time // TaskRun.WaitingSince
	what  string    // TaskRun.WaitingFor
	child string    // TaskRun.Child
	// idle: pending after an OutcomeWait with no RetryAt, in no queue or
	// heap until woken (a signal, its child runs finishing).
	idle bool
}

// memRunOps is the wait, signal and child-run state of a run that has
// some.
type memRunOps struct {
	waits     []*memWait          // by task position; nil until a task waits
	sigs      []SignalRecord      // buffered, unconsumed signals, oldest first
	kids      map[string]*memKids // child runs by parent task name
	delivered bool                // a signal completed a task that may have had a ready entry
}

// memKids are the child runs of one task.
type memKids struct {
	runs       []*memRun // every child run ever created for the task (dropped ones too)
	unfinished int
}

// opsOf returns r's operations state, creating it.
func opsOf(r *memRun) *memRunOps {
	if r.ops == nil {
		r.ops = &memRunOps{}
	}
	return r.ops
}

// waitState returns t's wait state, nil if it never waited. It lives with
// the run's operations state, not in memTask, which every task of every
// run allocates.
func (t *memTask) waitState() *memWait {
	if o := t.run.ops; o != nil && o.waits != nil {
		return o.waits[t.idx]
	}
	return nil
}

// oldest returns the oldest buffered signal named name, or nil.
func (o *memRunOps) oldest(name string) *SignalRecord {
	for i := range o.sigs {
		if o.sigs[i].Name == name {
			sr := o.sigs[i]
			return &sr
		}
	}
	return nil
}

// consume deletes the buffered signal seq, if it is still there.
func (o *memRunOps) consume(seq int64) {
	for i := range o.sigs {
		if o.sigs[i].Seq == seq {
			o.sigs = slices.Delete(o.sigs, i, i+1)
			return
		}
	}
}

// claimWaitLocked fills the wait fields of the claim c of t.
func (s *MemoryStore) claimWaitLocked(t *memTask, c *Claim) {
	if w := t.waitState(); w != nil {
		c.WaitingSince = w.since
	}
	if name := t.spec().Signal; name != "" && t.run.ops != nil {
		c.Signal = t.run.ops.oldest(name)
	}
}

// waitLocked records the OutcomeWait completion c of the claimed task t
// (its token already dropped).
func (s *MemoryStore) waitLocked(t *memTask, c *Completion, res *CompleteResult) {
	r := t.run
	w := t.waitState()
	if w == nil {
		o := opsOf(r)
		if o.waits == nil {
			o.waits = make([]*memWait, len(r.tasks))
		}
		w = &memWait{}
		o.waits[t.idx] = w
	}
	if w.since.IsZero() {
		w.since = c.FinishedAt
	}
	w.what = c.WaitFor
	if c.Child != "" {
		w.child = c.Child
	}
	t.state = msPending
	t.err = c.Error
	if r.canceled {
		s.finishTaskLocked(t, TaskCanceled, "run canceled", c.FinishedAt, res)
		return
	}
	switch {
	case s.wakesAtOnceLocked(t):
		s.pushReadyLocked(t)
		s.signal()
	case !c.RetryAt.IsZero():
		t.dueAt = c.RetryAt
		heap.Push(&r.wf.delayed, t)
	default:
		w.idle = true
	}
}

// wakesAtOnceLocked reports whether the task t, about to wait, is due at
// once: a signal it waits for is buffered, or child runs of it exist and
// all finished (their end came while t was claimed).
func (s *MemoryStore) wakesAtOnceLocked(t *memTask) bool {
	o := t.run.ops
	if o == nil {
		return false
	}
	spec := t.spec()
	if spec.Signal != "" && o.oldest(spec.Signal) != nil {
		return true
	}
	k := o.kids[spec.Name]
	return k != nil && len(k.runs) > 0 && k.unfinished == 0
}

// wakeLocked makes the pending task t due at at (a child run finished):
// from no queue into the delayed heap, or earlier in it. A task not yet
// made ready by its dependencies, or already ready, is left alone.
func (s *MemoryStore) wakeLocked(t *memTask, at time.Time) {
	if t.state != msPending || !t.readied || t.run.canceled {
		return
	}
	switch w := t.waitState(); {
	case w != nil && w.idle:
		w.idle = false
		t.dueAt = at
		heap.Push(&t.run.wf.delayed, t)
	case t.heapIdx >= 0 && t.dueAt.After(at):
		t.dueAt = at
		heap.Fix(&t.run.wf.delayed, int(t.heapIdx))
	default:
		return
	}
	s.signal()
}

// addChildLocked links the new run r to its parent's task.
func (s *MemoryStore) addChildLocked(r *memRun, parent RunLink) {
	r.Parent = &parent
	p := s.runs[parent.RunID]
	if p == nil {
		return // pruned, or never existed: nothing to wake
	}
	o := opsOf(p)
	if o.kids == nil {
		o.kids = make(map[string]*memKids)
	}
	k := o.kids[parent.Task]
	if k == nil {
		k = &memKids{}
		o.kids[parent.Task] = k
	}
	k.runs = append(k.runs, r)
	k.unfinished++
}

// kidsOf returns the record of the child runs of the run and task link
// names, or nil.
func (s *MemoryStore) kidsOf(link *RunLink) (*memRun, *memKids) {
	p := s.runs[link.RunID]
	if p == nil || p.ops == nil {
		return nil, nil
	}
	return p, p.ops.kids[link.Task]
}

// childFinishedLocked: the child run r finished at now; if it was the
// last unfinished child of its parent's task, that task is woken.
func (s *MemoryStore) childFinishedLocked(r *memRun, now time.Time) {
	p, k := s.kidsOf(r.Parent)
	if k == nil {
		return
	}
	k.unfinished--
	if k.unfinished > 0 || p.State.Finished() {
		return
	}
	for i := range p.specs {
		if p.specs[i].Name == r.Parent.Task {
			s.wakeLocked(&p.tasks[i], now)
			return
		}
	}
}

// cancelChildrenLocked cancels the unfinished child runs of the canceled
// run r, recursively, and returns how many tasks of other runs that made
// ready.
func (s *MemoryStore) cancelChildrenLocked(r *memRun, reason string, now time.Time) int {
	ready := 0
	why := fmt.Sprintf("parent run %s canceled: %s", r.ID, reason)
	for _, k := range r.ops.kids {
		for _, c := range k.runs {
			if !c.dropped && !c.canceled && !c.State.Finished() {
				ready += s.cancelLocked(c, why, now)
			}
		}
	}
	return ready
}

// defaultMaxBuffered is SignalSend.MaxBuffered's default.
const defaultMaxBuffered = 100

// SendSignal implements Store (see SignalSend for the rules).
func (s *MemoryStore) SendSignal(ctx context.Context, sig SignalSend) (SignalResult, error) {
	if err := ctx.Err(); err != nil {
		return SignalResult{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.runs[sig.RunID]
	if r == nil {
		return SignalResult{}, fmt.Errorf("%w: %s", ErrRunNotFound, sig.RunID)
	}
	if r.State.Finished() {
		return SignalResult{}, fmt.Errorf("%w: run %s is %s (signal %q)", ErrNoWaiter, r.ID, r.State, sig.Name)
	}
	var later *memTask // the first unfinished task that will wait for it
	for i := range r.tasks {
		if r.specs[i].Signal != sig.Name || sig.Name == "" {
			continue
		}
		t := &r.tasks[i]
		if w := t.waitState(); t.state == msPending && w != nil && !w.since.IsZero() {
			return s.deliverLocked(t, &sig), nil
		}
		if later == nil && !t.state.finished() {
			later = t
		}
	}
	if later == nil {
		return SignalResult{}, fmt.Errorf("%w: run %s has no unfinished task waiting for signal %q", ErrNoWaiter, r.ID, sig.Name)
	}
	limit := sig.MaxBuffered
	if limit <= 0 {
		limit = defaultMaxBuffered
	}
	o := opsOf(r)
	if len(o.sigs) >= limit {
		return SignalResult{}, fmt.Errorf("%w: run %s holds %d unconsumed signals (max %d)", ErrSignalBufferFull, r.ID, len(o.sigs), limit)
	}
	s.sigSeq++
	o.sigs = append(o.sigs, SignalRecord{Seq: s.sigSeq, Name: sig.Name, Data: sig.Data, SentAt: sig.SentAt})
	return SignalResult{Task: later.spec().Name}, nil
}

// deliverLocked completes the waiting task t with the signal's data.
func (s *MemoryStore) deliverLocked(t *memTask, sig *SignalSend) SignalResult {
	r := t.run
	if t.heapIdx >= 0 {
		heap.Remove(&r.wf.delayed, int(t.heapIdx))
	}
	t.waitState().idle = false
	// t may still have an entry in a ready queue (it was woken): stale
	// from now on. The run's arrays must then not go to another run, and
	// RetryRun must purge the entry before t can be pending again.
	r.recycle = false
	opsOf(r).delivered = true
	t.output = sig.Data
	var res CompleteResult
	s.finishTaskLocked(t, TaskSucceeded, "", sig.SentAt, &res)
	if res.Ready > 0 {
		s.signal()
	}
	return SignalResult{Delivered: true, Task: t.spec().Name, Ready: res.Ready, RunFinished: res.RunFinished}
}

// maxListRuns caps RunFilter.Limit.
const maxListRuns = 10000

// ListRuns implements Store. It scans the runs the store holds (bounded by
// its retention) and sorts the selected ones by ID.
func (s *MemoryStore) ListRuns(ctx context.Context, f RunFilter) ([]*Run, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, maxListRuns)
	errText := strings.ToLower(f.ErrorContains)
	s.mu.Lock()
	defer s.mu.Unlock()
	var sel []*memRun
	for _, r := range s.runs {
		if runMatches(r, &f, errText) {
			sel = append(sel, r)
		}
	}
	if f.Ascending {
		slices.SortFunc(sel, func(a, b *memRun) int { return strings.Compare(a.ID, b.ID) })
	} else {
		slices.SortFunc(sel, func(a, b *memRun) int { return strings.Compare(b.ID, a.ID) }) // UUIDv7: newest first
	}
	if len(sel) > limit {
		sel = sel[:limit]
	}
	out := make([]*Run, len(sel))
	for i, r := range sel {
		out[i] = s.snapshotLocked(r)
	}
	return out, nil
}

// runMatches reports whether r passes every set field of f; errText is
// f.ErrorContains in lower case.
func runMatches(r *memRun, f *RunFilter, errText string) bool {
	switch {
	case f.Workflow != "" && r.Workflow != f.Workflow,
		f.State != "" && r.State != f.State,
		len(f.States) > 0 && !slices.Contains(f.States, r.State),
		f.EventID != "" && r.Event.ID != f.EventID,
		f.Subject != "" && r.Event.Subject != f.Subject,
		!f.CreatedAfter.IsZero() && r.CreatedAt.Before(f.CreatedAfter),
		!f.CreatedBefore.IsZero() && !r.CreatedAt.Before(f.CreatedBefore),
		errText != "" && !strings.Contains(strings.ToLower(r.Error), errText),
		f.Parent != "" && (r.Parent == nil || r.Parent.RunID != f.Parent),
		f.ParentTask != "" && (r.Parent == nil || r.Parent.Task != f.ParentTask),
		f.After != "" && f.Ascending && r.ID <= f.After,
		f.After != "" && !f.Ascending && r.ID >= f.After:
		return false
	}
	return true
}

// RetryRun implements Store (see RetryParams).
func (s *MemoryStore) RetryRun(ctx context.Context, runID string, p RetryParams) (RetryResult, error) {
	if err := ctx.Err(); err != nil {
		return RetryResult{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.runs[runID]
	if r == nil {
		return RetryResult{}, fmt.Errorf("%w: %s", ErrRunNotFound, runID)
	}
	if !r.State.Finished() {
		return RetryResult{}, fmt.Errorf("%w: run %s is %s", ErrNotRetryable, r.ID, r.State)
	}
	if p.From == "" && r.State == RunSucceeded {
		return RetryResult{}, fmt.Errorf("%w: run %s succeeded (retry it from a task to run it again)", ErrNotRetryable, r.ID)
	}
	reset, names, err := r.resetSet(p.From)
	if err != nil {
		return RetryResult{}, err
	}
	if r.canceled || (r.ops != nil && r.ops.delivered) {
		s.purgeStaleLocked(r)
	}
	for i := range r.tasks {
		if !reset[i] {
			continue
		}
		t := &r.tasks[i]
		pending := int32(0)
		for _, d := range r.specs[i].Deps {
			if reset[d] {
				pending++
			}
		}
		*t = memTask{
			run: r, idx: t.idx, heapIdx: -1, state: msPending,
			attempts: t.attempts,
		}
		if r.idx != nil {
			r.idx[i].pending = pending
		}
		if r.ops != nil && r.ops.waits != nil {
			r.ops.waits[i] = nil
		}
	}
	// Out of the finished FIFO: retention no longer applies to it.
	if i := r.finAt - s.finBase; i >= s.finHead && i < len(s.finished) && s.finished[i] == r {
		s.finished[i] = memFinGone
	}
	r.State = RunPending
	r.Error = ""
	r.FinishedAt = time.Time{}
	r.Deadline = p.Deadline
	r.Retries++
	r.canceled = false
	r.remaining = int32(len(names))
	s.active++
	if r.ops != nil {
		r.ops.delivered = false
	}
	if r.Parent != nil {
		if _, k := s.kidsOf(r.Parent); k != nil {
			k.unfinished++
		}
	}
	if f := r.flow; f != nil && f.max > 0 {
		f.admitted = false
		f.group = nil
		if f.strategy != ConcurrencyQueue {
			// Admitted at once, as at creation; a retry neither cancels
			// other runs nor is rejected.
			g := s.groupLocked(r.ConcurrencyKey, f.max)
			f.group, f.admitted = g, true
			g.admitted++
			if f.strategy == ConcurrencyCancelInProgress {
				g.cip = append(g.cip, r)
			}
		}
	}
	for i := range r.tasks {
		if t := &r.tasks[i]; reset[i] && r.pending(i) == 0 {
			t.readied = true
			s.pushReadyLocked(t)
		}
	}
	s.signal()
	return RetryResult{Reset: names}, nil
}

// resetSet returns the tasks RetryRun resets: from (or, if empty, the
// failed, canceled and upstream_failed tasks) and every task downstream,
// as a mask by position and as names in declaration order.
func (r *memRun) resetSet(from string) ([]bool, []string, error) {
	reset := make([]bool, len(r.tasks))
	var todo []int
	for i := range r.tasks {
		st := r.tasks[i].state
		if (from == "" && (st == msFailed || st == msCanceled || st == msUpstreamFailed)) || (from != "" && r.specs[i].Name == from) {
			reset[i] = true
			todo = append(todo, i)
		}
	}
	if from != "" && len(todo) == 0 {
		return nil, nil, fmt.Errorf("%w: run %s has no task %q", ErrNotRetryable, r.ID, from)
	}
	if len(todo) == 0 {
		return nil, nil, fmt.Errorf("%w: run %s has no failed, canceled or upstream_failed task", ErrNotRetryable, r.ID)
	}
	for len(todo) > 0 {
		i := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if r.idx == nil {
			break
		}
		for _, d := range r.deps[r.idx[i].dep:r.idx[i+1].dep] {
			if !reset[d] {
				reset[d] = true
				todo = append(todo, int(d))
			}
		}
	}
	var names []string
	for i, ok := range reset {
		if ok {
			names = append(names, r.specs[i].Name)
		}
	}
	return reset, names, nil
}

// purgeStaleLocked removes the entries of r's tasks from its workflow's
// ready queue and from task-level groups' waiting heaps: left behind by a
// cancel or a signal delivery, they would otherwise come alive when
// RetryRun makes the tasks pending again.
func (s *MemoryStore) purgeStaleLocked(r *memRun) {
	var freed []*memTGroup
	for li := range r.wf.ready.levels {
		q := &r.wf.ready.levels[li].q
		live := q.items[:q.head]
		for _, t := range q.items[q.head:] {
			if t.run != r {
				live = append(live, t)
				continue
			}
			if t.unparked {
				if g := s.unparkedPoppedLocked(t); g != nil {
					freed = append(freed, g)
				}
			}
		}
		clear(q.items[len(live):])
		q.items = live
	}
	for _, g := range freed {
		s.unparkLocked(g)
	}
	for i := range r.specs {
		c := r.specs[i].Concurrency
		if c == nil {
			continue
		}
		g := s.tgroups[c.Key]
		if g == nil {
			continue
		}
		kept := g.waiting[:0]
		for _, t := range g.waiting {
			if t.run != r {
				kept = append(kept, t)
			}
		}
		clear(g.waiting[len(kept):])
		g.waiting = kept
		heap.Init(&g.waiting)
	}
}

// WorkflowStats implements Store. It scans the runs the store holds.
func (s *MemoryStore) WorkflowStats(ctx context.Context, since, now time.Time) ([]WorkflowStats, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	type acc struct {
		WorkflowStats
		durs []time.Duration
	}
	by := make(map[string]*acc)
	get := func(wf string) *acc {
		a := by[wf]
		if a == nil {
			a = &acc{WorkflowStats: WorkflowStats{Workflow: wf}}
			by[wf] = a
		}
		return a
	}
	for _, r := range s.runs {
		switch {
		case r.State.Finished():
			if r.FinishedAt.Before(since) || !r.FinishedAt.Before(now) {
				continue
			}
			a := get(r.Workflow)
			switch r.State {
			case RunSucceeded:
				a.Succeeded++
			case RunFailed:
				a.Failed++
			default:
				a.Canceled++
			}
			a.durs = append(a.durs, r.FinishedAt.Sub(r.CreatedAt))
		case r.State == RunPending:
			a := get(r.Workflow)
			if r.StartAt.After(now) {
				a.Waiting++
				continue
			}
			a.Pending++
			if a.OldestPending.IsZero() || r.CreatedAt.Before(a.OldestPending) {
				a.OldestPending = r.CreatedAt
			}
		case s.runWaitsLocked(r, now):
			get(r.Workflow).Waiting++
		default:
			get(r.Workflow).Running++
		}
	}
	out := make([]WorkflowStats, 0, len(by))
	for _, a := range by {
		if n := len(a.durs); n > 0 {
			slices.Sort(a.durs)
			a.DurationP50 = a.durs[percentileIndex(n, 50)]
			a.DurationP95 = a.durs[percentileIndex(n, 95)]
		}
		out = append(out, a.WorkflowStats)
	}
	slices.SortFunc(out, func(a, b WorkflowStats) int { return strings.Compare(a.Workflow, b.Workflow) })
	return out, nil
}

// percentileIndex returns the index of the p-th percentile (nearest rank)
// in n sorted values.
func percentileIndex(n, p int) int {
	return max((n*p+99)/100-1, 0)
}

// runWaitsLocked reports whether the started run r only waits: no task of
// it runs or is ready, and at least one waits after an OutcomeWait (with
// no time limit, or one after now). Tasks still waiting for their
// dependencies do not count.
func (s *MemoryStore) runWaitsLocked(r *memRun, now time.Time) bool {
	waits := false
	for i := range r.tasks {
		t := &r.tasks[i]
		w := t.waitState()
		switch {
		case t.state != msPending:
			if t.state == msRunning {
				return false
			}
		case !t.readied:
		case w != nil && (w.idle || (t.heapIdx >= 0 && t.dueAt.After(now))):
			waits = true
		default:
			return false // ready (or due)
		}
	}
	return waits
}
