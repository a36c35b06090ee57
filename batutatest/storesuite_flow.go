package batutatest

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// The flow-control cases of the Store conformance suite (issue 11): delayed
// runs, priorities, workflow and task concurrency limits, debounce, pause,
// rate reservations, deferrals and batch creation. They drive the Store
// directly with explicit clocks, never sleeping. Their names start with
// "Flow" so that `-run 'TestX/Flow'` selects them.

// storeCase is one case of TestStore.
type storeCase = struct {
	name string
	fn   func(t *testing.T, st *storeT)
}

// flowCases lists the flow-control cases; TestStore runs them after the
// others. Names are stable: stores' test filters may refer to them.
var flowCases = []storeCase{
	{"FlowStartAt", testFlowStartAt},
	{"FlowStartSoon", testFlowStartSoon},
	{"FlowCancelDelayedChain", testFlowCancelDelayedChain},
	{"FlowNextDue", testFlowNextDue},
	{"FlowPriorityOrder", testFlowPriority},
	{"FlowQueueHighWaterMark", testFlowQueueHighWater},
	{"FlowQueueOrderPerKey", testFlowQueueOrder},
	{"FlowQueueFairness", testFlowQueueFairness},
	{"FlowQueueSlotFreed", testFlowQueueSlotFreed},
	{"FlowLimitsUnderConcurrentClaimers", testFlowLimitsConcurrent},
	{"FlowCancelInProgress", testFlowCancelInProgress},
	{"FlowCancelNewest", testFlowCancelNewest},
	{"FlowTaskConcurrency", testFlowTaskConcurrency},
	{"FlowDebounce", testFlowDebounce},
	{"FlowPause", testFlowPause},
	{"FlowReserveRate", testFlowReserveRate},
	{"FlowReserveRateConcurrent", testFlowReserveRateConcurrent},
	{"FlowReserveRateBadSpec", testFlowReserveRateBadSpec},
	{"FlowDefer", testFlowDefer},
	{"FlowCreateRuns", testFlowCreateRuns},
}

var one = []batuta.TaskSpec{{Name: "x"}}

// newRun returns a NewRun of wf for event ev, created at at, whose event
// data names ev.
func newRun(wf, ev string, at time.Time, tasks []batuta.TaskSpec) batuta.NewRun {
	return batuta.NewRun{
		ID: newID(at), Workflow: wf, Tasks: tasks, CreatedAt: at,
		Event: batuta.Event{ID: ev, Source: "test", Type: "t", Time: at, Data: []byte(`{"ev":"` + ev + `"}`)},
	}
}

// createRes records nr through CreateRuns and returns its result.
func (st *storeT) createRes(nr batuta.NewRun) batuta.CreateResult {
	st.t.Helper()
	res, err := st.s.CreateRuns(ctxT(st.t), []batuta.NewRun{nr})
	st.must(err)
	if len(res) != 1 {
		st.fatalf("CreateRuns of 1 run returned %d results", len(res))
	}
	return res[0]
}

// createNew records nr and fails unless a new run was created for it.
func (st *storeT) createNew(nr batuta.NewRun) string {
	st.t.Helper()
	res := st.createRes(nr)
	if !res.Created || res.ID != nr.ID || res.Debounced || res.Rejected || len(res.Canceled) != 0 {
		st.fatalf("CreateRuns(%s) = %+v, want a new run %s", nr.Event.ID, res, nr.ID)
	}
	return res.ID
}

// claimOne claims at now and fails unless exactly one task, of run want, is
// returned.
func (st *storeT) claimOne(now time.Time, want string, wfs ...string) batuta.Claim {
	st.t.Helper()
	cs := st.claim(now, 10, wfs...)
	if len(cs) != 1 || cs[0].RunID != want {
		st.fatalf("claim at %v = %s, want one task of run %s", now.Sub(base), claimRuns(cs), want)
	}
	return cs[0]
}

// claimNone claims at now and fails if anything is returned.
func (st *storeT) claimNone(now time.Time, why string, wfs ...string) {
	st.t.Helper()
	if cs := st.claim(now, 10, wfs...); len(cs) != 0 {
		st.fatalf("claim at %v = %s, want nothing (%s)", now.Sub(base), claimRuns(cs), why)
	}
}

func claimRuns(cs []batuta.Claim) string {
	var b bytes.Buffer
	b.WriteString("[")
	for i, c := range cs {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s/%s", c.RunID, c.Task)
	}
	b.WriteString("]")
	return b.String()
}

// completeWith completes c with comp (its ClaimRef and Attempt filled in)
// and fails on an error.
func (st *storeT) completeWith(c batuta.Claim, comp batuta.Completion) batuta.CompleteResult {
	st.t.Helper()
	comp.ClaimRef, comp.Attempt = c.Ref(), c.Attempt
	if comp.FinishedAt.IsZero() {
		comp.FinishedAt = comp.StartedAt
	}
	res, err := st.s.CompleteTasks(ctxT(st.t), []batuta.Completion{comp})
	st.must(err)
	if len(res) != 1 || res[0].Err != nil {
		st.fatalf("complete %s/%s with %s: %+v", c.RunID, c.Task, comp.Outcome, res)
	}
	return res[0]
}

func (st *storeT) nextDue(now time.Time, wfs ...string) time.Time {
	st.t.Helper()
	due, err := st.s.NextDue(ctxT(st.t), wfs, now)
	st.must(err)
	return due
}

func (st *storeT) cancel(id, reason string, now time.Time) {
	st.t.Helper()
	ok, err := st.s.CancelRun(ctxT(st.t), id, reason, now)
	st.must(err)
	if !ok {
		st.fatalf("CancelRun(%s) = false, want true (the run was unfinished)", id)
	}
}

func (st *storeT) setPaused(wf string, paused, wantChanged bool) {
	st.t.Helper()
	changed, err := st.s.SetPaused(ctxT(st.t), wf, paused)
	st.must(err)
	if changed != wantChanged {
		st.fatalf("SetPaused(%s, %v) changed=%v, want %v", wf, paused, changed, wantChanged)
	}
}

func (st *storeT) paused() []string {
	st.t.Helper()
	ws, err := st.s.PausedWorkflows(ctxT(st.t))
	st.must(err)
	return ws
}

func (st *storeT) reserve(spec batuta.RateSpec, now time.Time) time.Time {
	st.t.Helper()
	at, err := st.s.ReserveRate(ctxT(st.t), spec, now)
	st.must(err)
	return at
}

// near reports whether a is within a millisecond of b (durable stores may
// round times to the microsecond).
func near(a, b time.Time) bool {
	d := a.Sub(b)
	return d > -time.Millisecond && d < time.Millisecond
}

// testFlowStartSoon: a run that starts a second after its creation (a cron
// tick created ahead, a short StartAfter) keeps every promise of a delayed
// run, though a store may write it differently: nothing of it is claimed
// before its start, NextDue tells the start, a pause holds it past its
// start, and it is claimed at its start once resumed.
func testFlowStartSoon(t *testing.T, st *storeT) {
	start := base.Add(time.Second)
	nr := newRun("wf", "soon", base, []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}})
	nr.StartAt = start
	id := st.createNew(nr)
	if r := st.get(id); r.State != batuta.RunPending || !r.Task("a").NotBefore.Equal(start) {
		t.Fatalf("run starting soon: state %s, a.NotBefore %v; want pending, %v", r.State, r.Task("a").NotBefore, start)
	}
	st.claimNone(start.Add(-time.Millisecond), "the run starts at its StartAt")
	if due := st.nextDue(base, "wf"); !due.Equal(start) {
		t.Fatalf("NextDue = %v, want the start %v", due, start)
	}
	if due := st.nextDue(base, "other"); !due.IsZero() {
		t.Fatalf("NextDue(other workflow) = %v, want none", due)
	}
	_, err := st.s.SetPaused(ctxT(t), "wf", true)
	st.must(err)
	st.claimNone(start, "paused at its start")
	_, err = st.s.SetPaused(ctxT(t), "wf", false)
	st.must(err)
	c := st.claimOne(start, id)
	if c.Task != "a" {
		t.Fatalf("claimed %s at the start, want a", c.Task)
	}
	st.completeOK(c, batuta.OutcomeSucceeded, nil, start)
	c = st.claimOne(start, id)
	if res := st.completeOK(c, batuta.OutcomeSucceeded, nil, start); c.Task != "b" || res.RunFinished != batuta.RunSucceeded {
		t.Fatalf("b: claimed %s, run finished %q", c.Task, res.RunFinished)
	}
}

// testFlowStartAt: a delayed run exists at once (found, listed, deduplicated,
// canceled) but no task of it is claimed before its start; its root tasks
// show the start as NotBefore, and its later tasks are not delayed further.
// A delayed run does not hold its workflow concurrency slot while it waits.
func testFlowStartAt(t *testing.T, st *storeT) {
	start := base.Add(time.Minute)
	nd := newRun("wf", "later", base, []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}})
	nd.StartAt = start
	id := st.createNew(nd)
	idNow := st.createNew(newRun("wf", "now", base.Add(time.Millisecond), one))

	r := st.get(id)
	if r.State != batuta.RunPending || !r.StartAt.Equal(start) {
		t.Fatalf("delayed run: state %s StartAt %v, want pending, %v", r.State, r.StartAt, start)
	}
	if nb := r.Task("a").NotBefore; !nb.Equal(start) {
		t.Fatalf("root task of a delayed run: NotBefore %v, want %v", nb, start)
	}
	if rn := st.get(idNow); !rn.StartAt.IsZero() || !rn.Task("x").NotBefore.IsZero() {
		t.Fatalf("undelayed run: StartAt %v NotBefore %v, want zero", rn.StartAt, rn.Task("x").NotBefore)
	}
	c := st.claimOne(base, idNow)
	st.completeOK(c, batuta.OutcomeSucceeded, nil, base)
	st.claimNone(start.Add(-time.Millisecond), "the delayed run starts at its StartAt")

	// It exists: found, listed, deduplicated.
	found, err := st.s.FindRun(ctxT(t), "wf", "later")
	st.must(err)
	if found.ID != id || !found.StartAt.Equal(start) {
		t.Fatalf("FindRun(later) = %s StartAt %v", found.ID, found.StartAt)
	}
	rs, err := st.s.ListRuns(ctxT(t), batuta.RunFilter{Workflow: "wf", State: batuta.RunPending})
	st.must(err)
	if len(rs) != 1 || rs[0].ID != id {
		t.Fatalf("ListRuns(pending) = %d runs (first %q), want the delayed run", len(rs), firstID(rs))
	}
	if res := st.createRes(newRun("wf", "later", base.Add(time.Second), one)); res.ID != id || res.Created {
		t.Fatalf("duplicate of a delayed run: %+v, want the delayed run, not created", res)
	}
	if due := st.nextDue(base, "wf"); !due.Equal(start) {
		t.Fatalf("NextDue = %v, want the start %v", due, start)
	}

	c = st.claimOne(start, id)
	if c.Task != "a" || c.Attempt != 1 {
		t.Fatalf("claim at the start: %s attempt %d, want a attempt 1", c.Task, c.Attempt)
	}
	if r := st.get(id); r.State != batuta.RunRunning || !r.Task("a").NotBefore.IsZero() || !r.StartAt.Equal(start) {
		t.Fatalf("after the start: state %s a.NotBefore %v StartAt %v", r.State, r.Task("a").NotBefore, r.StartAt)
	}
	if res := st.completeOK(c, batuta.OutcomeSucceeded, nil, start); res.Ready != 1 {
		t.Fatalf("a done: ready %d, want 1", res.Ready)
	}
	c = st.claimOne(start, id)
	if res := st.completeOK(c, batuta.OutcomeSucceeded, nil, start); c.Task != "b" || res.RunFinished != batuta.RunSucceeded {
		t.Fatalf("b: claimed %s, run finished %q", c.Task, res.RunFinished)
	}

	// Canceling a delayed run finishes it at once; it never runs.
	nc := newRun("wf", "cancel-me", base, one)
	nc.StartAt = base.Add(time.Hour)
	idc := st.createNew(nc)
	st.cancel(idc, "not needed", start)
	if r := st.get(idc); r.State != batuta.RunCanceled || taskState(r, "x") != batuta.TaskCanceled || !r.Task("x").NotBefore.IsZero() {
		t.Fatalf("canceled delayed run: %s, x %s NotBefore %v", r.State, taskState(r, "x"), r.Task("x").NotBefore)
	}
	if due := st.nextDue(start, "wf"); !due.IsZero() {
		t.Fatalf("NextDue after the delayed run was canceled = %v, want zero", due)
	}
	st.claimNone(base.Add(2*time.Hour), "the delayed run was canceled")

	// A run waiting for its start does not take its concurrency group's slot.
	k := &batuta.ConcurrencySpec{Key: "wf/k", Max: 1}
	nk := newRun("wf", "k-later", start, one)
	nk.StartAt, nk.Concurrency = start.Add(time.Hour), k
	idk := st.createNew(nk)
	nn := newRun("wf", "k-now", start.Add(time.Millisecond), one)
	nn.Concurrency = k
	idn := st.createNew(nn)
	c = st.claimOne(start.Add(time.Second), idn)
	st.completeOK(c, batuta.OutcomeSucceeded, nil, start.Add(time.Second))
	// Once due, it waits for the slot like any other run of its group.
	nb := newRun("wf", "k-busy", start.Add(2*time.Second), one)
	nb.Concurrency = k
	idb := st.createNew(nb)
	c = st.claimOne(start.Add(2*time.Second), idb)
	st.claimNone(start.Add(time.Hour), "the delayed run is due but its group is full")
	st.completeOK(c, batuta.OutcomeSucceeded, nil, start.Add(time.Hour))
	st.claimOne(start.Add(time.Hour), idk)
}

// testFlowCancelDelayedChain: canceling a run none of whose tasks started
// (a delayed chain) cancels every task and finishes the run once: the
// store still counts its unfinished runs right (MaxActive).
func testFlowCancelDelayedChain(t *testing.T, st *storeT) {
	nd := newRun("wf", "chain", base, []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{1}}})
	nd.StartAt = base.Add(time.Hour)
	id := st.createNew(nd)
	st.cancel(id, "not needed", base)
	r := st.get(id)
	if r.State != batuta.RunCanceled || r.FinishedAt.IsZero() {
		t.Fatalf("canceled chain: %s finished %v", r.State, r.FinishedAt)
	}
	for _, tr := range r.Tasks {
		if tr.State != batuta.TaskCanceled {
			t.Fatalf("task %s: %s, want canceled", tr.Name, tr.State)
		}
	}
	mk := func(ev string) error {
		nr := newRun("wf", ev, base, one)
		nr.MaxActive = 1
		_, _, err := st.s.CreateRun(ctxT(t), nr)
		return err
	}
	st.must(mk("m1"))
	if err := mk("m2"); !errors.Is(err, batuta.ErrBusy) {
		t.Fatalf("second run at MaxActive 1 after a canceled chain: %v, want ErrBusy (the canceled run counted once)", err)
	}
}

// testFlowNextDue: NextDue reports the earliest due time strictly after
// now among pending tasks of the given workflows, retries included.
func testFlowNextDue(t *testing.T, st *storeT) {
	if due := st.nextDue(base, "wf"); !due.IsZero() {
		t.Fatalf("NextDue of an empty store = %v, want zero", due)
	}
	t1, t2 := base.Add(10*time.Second), base.Add(20*time.Second)
	n2 := newRun("wf", "t2", base, one)
	n2.StartAt = t2
	st.createNew(n2)
	n1 := newRun("wf", "t1", base, one)
	n1.StartAt = t1
	id1 := st.createNew(n1)
	no := newRun("other", "o", base, one)
	no.StartAt = base.Add(5 * time.Second)
	st.createNew(no)
	if due := st.nextDue(base, "wf"); !due.Equal(t1) {
		t.Fatalf("NextDue(wf) = %v, want %v", due, t1)
	}
	if due := st.nextDue(base, "wf", "other"); !due.Equal(base.Add(5 * time.Second)) {
		t.Fatalf("NextDue(wf, other) = %v, want %v", due, base.Add(5*time.Second))
	}
	if due := st.nextDue(base, "none"); !due.IsZero() {
		t.Fatalf("NextDue(none) = %v, want zero", due)
	}
	if due := st.nextDue(t1, "wf"); !due.Equal(t2) {
		t.Fatalf("NextDue at %v = %v, want the next one after now, %v", t1, due, t2)
	}
	// A retry's due time counts too.
	c := st.claimOne(t1, id1, "wf")
	retryAt := t1.Add(3 * time.Second)
	st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeRetry, Error: "again", StartedAt: t1, RetryAt: retryAt})
	if due := st.nextDue(t1, "wf"); !due.Equal(retryAt) {
		t.Fatalf("NextDue with a retry at %v = %v", retryAt, due)
	}
	if x := st.get(id1).Task("x"); !x.NotBefore.Equal(retryAt) || len(x.Attempts) != 1 {
		t.Fatalf("retrying task: NotBefore %v attempts %d, want %v, 1", x.NotBefore, len(x.Attempts), retryAt)
	}
}

// testFlowPriority: ready tasks of higher-priority runs are claimed first,
// equal priorities in order; the priority applies to every task of a run
// and across workflows.
func testFlowPriority(t *testing.T, st *storeT) {
	prios := []int{0, 5, -1, 5, 10}
	ids := make([]string, len(prios))
	for i, p := range prios {
		nr := newRun("wf", fmt.Sprintf("p%d", i), base.Add(time.Duration(i)*time.Millisecond), one)
		nr.Priority = p
		ids[i] = st.createNew(nr)
	}
	if r := st.get(ids[1]); r.Priority != 5 {
		t.Fatalf("Run.Priority = %d, want 5", r.Priority)
	}
	now := base.Add(time.Second)
	for _, w := range []int{4, 1, 3, 0, 2} {
		cs := st.claim(now, 1)
		if len(cs) != 1 || cs[0].RunID != ids[w] {
			t.Fatalf("claim = %s, want run %d (priority %d)", claimRuns(cs), w, prios[w])
		}
		st.completeOK(cs[0], batuta.OutcomeSucceeded, nil, now)
	}

	// A dependent task inherits its run's priority; workflows do not matter.
	low := st.createNew(newRun("wf-a", "low", now, one))
	nh := newRun("wf-b", "high", now.Add(time.Millisecond), []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}})
	nh.Priority = 1
	high := st.createNew(nh)
	want := []string{high, high, low}
	for i, w := range want {
		cs := st.claim(now, 1, "wf-a", "wf-b")
		if len(cs) != 1 || cs[0].RunID != w {
			t.Fatalf("claim %d = %s, want run %s", i, claimRuns(cs), w)
		}
		st.completeOK(cs[0], batuta.OutcomeSucceeded, nil, now)
	}
}

// testFlowQueueHighWater: under a workflow limit (Queue) the admitted,
// unfinished runs of a group never exceed Max while claims and completions
// interleave; an admitted run's other tasks are claimable; runs start in
// creation order.
func testFlowQueueHighWater(t *testing.T, st *storeT) {
	const runs, max = 8, 2
	spec := &batuta.ConcurrencySpec{Key: "wf/k", Max: max}
	tasks := []batuta.TaskSpec{{Name: "a"}, {Name: "b"}, {Name: "join", Deps: []int{0, 1}}}
	var ids []string
	for i := 0; i < runs; i++ {
		nr := newRun("wf", fmt.Sprintf("e%d", i), base.Add(time.Duration(i)*time.Millisecond), tasks)
		nr.Concurrency = spec
		ids = append(ids, st.createNew(nr))
	}
	if r := st.get(ids[0]); r.ConcurrencyKey != "wf/k" {
		t.Fatalf("Run.ConcurrencyKey = %q, want wf/k", r.ConcurrencyKey)
	}
	free := st.createNew(newRun("wf", "free", base, one)) // no limit: never waits
	now := base.Add(time.Second)
	started := map[string]bool{}
	finished := map[string]bool{}
	var order []string
	var running []batuta.Claim
	high := 0
	for round := 0; len(finished) < runs; round++ {
		if round > 200 {
			t.Fatalf("no progress after %d rounds: %d runs finished", round, len(finished))
		}
		for _, c := range st.claim(now, 100) {
			if c.RunID == free {
				st.completeOK(c, batuta.OutcomeSucceeded, nil, now)
				continue
			}
			if !started[c.RunID] {
				started[c.RunID] = true
				order = append(order, c.RunID)
			}
			running = append(running, c)
		}
		inflight := len(started) - len(finished)
		if inflight > max {
			t.Fatalf("round %d: %d runs of the group admitted and unfinished, Max %d", round, inflight, max)
		}
		high = maxInt(high, inflight)
		if len(running) == 0 {
			t.Fatalf("round %d: nothing claimable with %d runs unfinished", round, runs-len(finished))
		}
		// Complete one claim per round (the oldest), so claims and
		// completions interleave.
		c := running[0]
		running = running[1:]
		if res := st.completeOK(c, batuta.OutcomeSucceeded, nil, now); res.RunFinished != "" {
			finished[c.RunID] = true
		}
	}
	if high != max {
		t.Fatalf("high-water mark %d, want exactly Max %d", high, max)
	}
	if !reflect.DeepEqual(order, ids) {
		t.Fatalf("runs admitted in order %v, want creation order %v", order, ids)
	}
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// testFlowQueueOrderPerKey: waiting runs of a group are admitted by
// priority, then creation; other groups and unlimited runs do not wait.
func testFlowQueueOrder(t *testing.T, st *storeT) {
	k := &batuta.ConcurrencySpec{Key: "wf/k", Max: 1}
	mk := func(ev string, i, prio int, spec *batuta.ConcurrencySpec) string {
		nr := newRun("wf", ev, base.Add(time.Duration(i)*time.Millisecond), one)
		nr.Priority, nr.Concurrency = prio, spec
		return st.createNew(nr)
	}
	r0 := mk("r0", 0, 0, k)
	now := base.Add(time.Second)
	c0 := st.claimOne(now, r0)
	r1 := mk("r1", 1, 0, k)
	r2 := mk("r2", 2, 5, k)
	r3 := mk("r3", 3, 0, k)
	gone := mk("gone", 3, 9, k) // canceled while waiting: never runs, takes no slot
	st.cancel(gone, "not needed", now)
	if r := st.get(gone); r.State != batuta.RunCanceled {
		t.Fatalf("waiting run canceled: %s, want canceled at once", r.State)
	}
	other := mk("other", 4, 0, &batuta.ConcurrencySpec{Key: "wf/other", Max: 1})
	free := mk("free", 5, 0, nil)
	cs := st.claim(now, 10)
	if got := claimRunSet(cs); !reflect.DeepEqual(got, sortedStrings(other, free)) {
		t.Fatalf("claim with wf/k full = %s, want the other group's and the unlimited run's tasks", claimRuns(cs))
	}
	for _, c := range cs {
		st.completeOK(c, batuta.OutcomeSucceeded, nil, now)
	}
	st.claimNone(now, "wf/k is full")
	st.completeOK(c0, batuta.OutcomeSucceeded, nil, now)
	for _, want := range []string{r2, r1, r3} {
		c := st.claimOne(now, want)
		st.claimNone(now, "wf/k is full")
		st.completeOK(c, batuta.OutcomeSucceeded, nil, now)
	}
}

func claimRunSet(cs []batuta.Claim) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.RunID)
	}
	sort.Strings(out)
	return out
}

func sortedStrings(s ...string) []string {
	sort.Strings(s)
	return s
}

// testFlowQueueFairness: groups with waiting runs are served round-robin:
// one key with many waiting runs does not delay quiet keys, each admitted
// within the first claims even though the noisy key's runs are older.
func testFlowQueueFairness(t *testing.T, st *storeT) {
	keyOf := map[string]string{}
	mk := func(key, ev string, i int) {
		nr := newRun("wf", ev, base.Add(time.Duration(i)*time.Millisecond), one)
		nr.Concurrency = &batuta.ConcurrencySpec{Key: key, Max: 1}
		keyOf[st.createNew(nr)] = key
	}
	const noisy, quiet = 20, 4
	for i := 0; i < noisy; i++ {
		mk("wf/noisy", fmt.Sprintf("n%d", i), i)
	}
	for q := 0; q < quiet; q++ {
		mk(fmt.Sprintf("wf/quiet%d", q), fmt.Sprintf("q%d", q), noisy+q)
	}
	now := base.Add(time.Second)
	seen := map[string]int{}
	var keys []string
	for i := 0; i < quiet+1; i++ {
		cs := st.claim(now, 1)
		if len(cs) != 1 {
			t.Fatalf("claim %d returned %d tasks, want 1", i, len(cs))
		}
		k := keyOf[cs[0].RunID]
		seen[k]++
		keys = append(keys, k)
		st.completeOK(cs[0], batuta.OutcomeSucceeded, nil, now)
	}
	for q := 0; q < quiet; q++ {
		if k := fmt.Sprintf("wf/quiet%d", q); seen[k] != 1 {
			t.Fatalf("first %d admissions by key: %v; want every quiet key once (round-robin between keys)", quiet+1, keys)
		}
	}
	// The noisy key's runs all run, in order, afterwards.
	left := 0
	for i := 0; i < 2*noisy; i++ {
		cs := st.claim(now, 10)
		if len(cs) == 0 {
			break
		}
		if len(cs) != 1 {
			t.Fatalf("noisy key with Max 1: %d tasks claimed at once", len(cs))
		}
		left++
		st.completeOK(cs[0], batuta.OutcomeSucceeded, nil, now)
	}
	if left != noisy-seen["wf/noisy"] {
		t.Fatalf("%d noisy runs ran after the quiet ones, want %d", left, noisy-seen["wf/noisy"])
	}
}

// testFlowQueueSlotFreed: a group's slot is freed when its run finishes in
// any way: completion, CancelRun (at once when nothing runs, else when the
// running task reports), or a rescue that fails its last task. A rescue
// that requeues the task keeps the run admitted.
func testFlowQueueSlotFreed(t *testing.T, st *storeT) {
	k := &batuta.ConcurrencySpec{Key: "wf/k", Max: 1}
	var ids []string
	for i := 0; i < 5; i++ {
		nr := newRun("wf", fmt.Sprintf("r%d", i), base.Add(time.Duration(i)*time.Millisecond), one)
		nr.Concurrency = k
		ids = append(ids, st.createNew(nr))
	}
	now := base.Add(time.Second)
	// Completion.
	c := st.claimOne(now, ids[0])
	st.claimNone(now, "r0 holds the slot")
	if res := st.completeOK(c, batuta.OutcomeSucceeded, nil, now); res.RunFinished != batuta.RunSucceeded {
		t.Fatalf("r0 finished %q", res.RunFinished)
	}
	// CancelRun of an admitted run with nothing running: freed at once.
	c = st.claimOne(now, ids[1])
	st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeRetry, Error: "later", StartedAt: now, RetryAt: now.Add(time.Hour)})
	st.claimNone(now, "r1 is admitted, waiting for its retry")
	st.cancel(ids[1], "stop r1", now)
	if r := st.get(ids[1]); r.State != batuta.RunCanceled {
		t.Fatalf("r1 after cancel: %s, want canceled", r.State)
	}
	// CancelRun with a task running: freed when the task reports.
	c = st.claimOne(now, ids[2])
	st.cancel(ids[2], "stop r2", now)
	st.claimNone(now, "r2 is canceled but its task still runs")
	if res := st.completeOK(c, batuta.OutcomeCanceled, nil, now); res.RunFinished != batuta.RunCanceled {
		t.Fatalf("r2 finished %q, want canceled", res.RunFinished)
	}
	// Rescue: a requeued task keeps the slot; a failed one frees it.
	st.claimOne(now, ids[3]) // lease until now+1m
	t2 := now.Add(2 * time.Minute)
	if n, f, err := st.s.RescueExpired(ctxT(t), t2, 1); err != nil || n != 1 || f != 0 {
		t.Fatalf("first rescue: %d %d %v, want 1 0", n, f, err)
	}
	c = st.claimOne(t2, ids[3])
	if c.Rescues != 1 {
		t.Fatalf("rescued task claimed with Rescues %d", c.Rescues)
	}
	t3 := t2.Add(2 * time.Minute)
	if n, f, err := st.s.RescueExpired(ctxT(t), t3, 1); err != nil || n != 0 || f != 1 {
		t.Fatalf("second rescue (max 1): %d %d %v, want 0 1", n, f, err)
	}
	if r := st.get(ids[3]); r.State != batuta.RunFailed {
		t.Fatalf("r3 after its task failed by rescue: %s", r.State)
	}
	c = st.claimOne(t3, ids[4])
	st.completeOK(c, batuta.OutcomeSucceeded, nil, t3)
}

// testFlowLimitsConcurrent: claimers racing on one store never exceed a
// workflow-level or a task-level Max. The counts are taken after a claim
// returns and before its completion is sent, so they never exceed what the
// store holds.
func testFlowLimitsConcurrent(t *testing.T, st *storeT) {
	const runs, wfMax, taskMax, workers = 24, 3, 2, 6
	tasks := []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}, Concurrency: &batuta.ConcurrencySpec{Key: "wf/b", Max: taskMax}}}
	for i := 0; i < runs; i++ {
		nr := newRun("wf", fmt.Sprintf("e%d", i), base.Add(time.Duration(i)*time.Millisecond), tasks)
		nr.Concurrency = &batuta.ConcurrencySpec{Key: fmt.Sprintf("wf/k%d", i%2), Max: wfMax}
		st.createNew(nr)
	}
	var mu sync.Mutex
	in := map[string]int{} // runs started and not finished, by group
	bRunning, finished := 0, 0
	high, bHigh := 0, 0
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	deadline := time.Now().Add(20 * time.Second)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := ctxT(t)
			for {
				mu.Lock()
				done := finished == runs
				mu.Unlock()
				if done {
					return
				}
				if time.Now().After(deadline) {
					errc <- fmt.Errorf("not every one of %d runs finished in 20s", runs)
					return
				}
				cs, err := st.s.ClaimTasks(ctx, batuta.ClaimParams{Owner: fmt.Sprintf("w%d", w), Limit: 2, Now: base, LeaseUntil: base.Add(time.Hour)})
				if err != nil {
					errc <- err
					return
				}
				keys := make([]string, len(cs))
				mu.Lock()
				for i, c := range cs {
					var n int
					if _, err := fmt.Sscanf(c.Event.ID, "e%d", &n); err != nil {
						mu.Unlock()
						errc <- fmt.Errorf("claim of unknown event %q", c.Event.ID)
						return
					}
					keys[i] = fmt.Sprintf("wf/k%d", n%2)
					if c.Task == "a" {
						in[keys[i]]++
						high = maxInt(high, in[keys[i]])
					} else {
						bRunning++
						bHigh = maxInt(bHigh, bRunning)
					}
				}
				mu.Unlock()
				runtime.Gosched() // let other claimers in while these run
				for i, c := range cs {
					mu.Lock()
					if c.Task == "b" { // b's completion finishes the run
						bRunning--
						in[keys[i]]--
					}
					mu.Unlock()
					res, err := st.s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: c.Attempt, StartedAt: base, FinishedAt: base}})
					if err == nil && (len(res) != 1 || res[0].Err != nil) {
						err = fmt.Errorf("results %+v", res)
					}
					if err != nil {
						errc <- fmt.Errorf("complete %s/%s: %w", c.RunID, c.Task, err)
						return
					}
					if res[0].RunFinished != "" {
						mu.Lock()
						finished++
						mu.Unlock()
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if high > wfMax || bHigh > taskMax {
		t.Fatalf("high-water marks: %d runs of a group (Max %d), %d b tasks (Max %d)", high, wfMax, bHigh, taskMax)
	}
}

// testFlowCancelInProgress: a new run of a full group cancels the oldest
// unfinished runs (as CancelRun would) and is admitted at once.
func testFlowCancelInProgress(t *testing.T, st *storeT) {
	mk := func(key, ev string, i, max int) batuta.NewRun {
		nr := newRun("wf", ev, base.Add(time.Duration(i)*time.Millisecond), one)
		nr.Concurrency = &batuta.ConcurrencySpec{Key: key, Max: max, Strategy: batuta.ConcurrencyCancelInProgress}
		return nr
	}
	r1 := st.createNew(mk("wf/k", "r1", 0, 1))
	a := st.claimOne(base, r1)
	n2 := mk("wf/k", "r2", 1, 1)
	res := st.createRes(n2)
	if !res.Created || res.ID != n2.ID || res.Rejected || !reflect.DeepEqual(res.Canceled, []string{r1}) {
		t.Fatalf("CreateRuns over the limit = %+v, want created, Canceled [%s]", res, r1)
	}
	ls, err := st.s.ExtendLeases(ctxT(t), []batuta.ClaimRef{a.Ref()}, base.Add(time.Hour))
	st.must(err)
	if !reflect.DeepEqual(ls, []batuta.LeaseStatus{batuta.LeaseCanceled}) {
		t.Fatalf("heartbeat of the canceled run's task = %v, want [canceled]", ls)
	}
	if r := st.get(r1); r.Finished() || r.Error == "" {
		t.Fatalf("canceled run with a running task: %s error %q, want unfinished with a reason", r.State, r.Error)
	}
	st.claimOne(base, n2.ID) // admitted at once
	if res := st.completeOK(a, batuta.OutcomeCanceled, nil, base); res.RunFinished != batuta.RunCanceled {
		t.Fatalf("canceled run's task reported: run finished %q, want canceled", res.RunFinished)
	}
	// Max 2: the oldest goes first; one with nothing running ends at once.
	q1 := st.createNew(mk("wf/k2", "q1", 10, 2))
	q2 := st.createNew(mk("wf/k2", "q2", 11, 2))
	n3, n4 := mk("wf/k2", "q3", 12, 2), mk("wf/k2", "q4", 13, 2)
	if res := st.createRes(n3); !res.Created || !reflect.DeepEqual(res.Canceled, []string{q1}) {
		t.Fatalf("third run of a Max 2 group: %+v, want Canceled [%s]", res, q1)
	}
	if r := st.get(q1); r.State != batuta.RunCanceled || taskState(r, "x") != batuta.TaskCanceled || r.Error == "" {
		t.Fatalf("canceled pending run: %s x %s error %q", r.State, taskState(r, "x"), r.Error)
	}
	if res := st.createRes(n4); !res.Created || !reflect.DeepEqual(res.Canceled, []string{q2}) {
		t.Fatalf("fourth run: %+v, want Canceled [%s]", res, q2)
	}
	if got := claimRunSet(st.claim(base, 10)); !reflect.DeepEqual(got, sortedStrings(n3.ID, n4.ID)) {
		t.Fatalf("claimable: %v, want the two newest runs", got)
	}
}

// testFlowCancelNewest: a new run that finds its group full is recorded
// canceled at once, with the reason, and never runs.
func testFlowCancelNewest(t *testing.T, st *storeT) {
	mk := func(ev string, i int) batuta.NewRun {
		nr := newRun("wf", ev, base.Add(time.Duration(i)*time.Millisecond), []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}})
		nr.Concurrency = &batuta.ConcurrencySpec{Key: "wf/k", Max: 1, Strategy: batuta.ConcurrencyCancelNewest}
		return nr
	}
	r1 := st.createNew(mk("r1", 0)) // pending, not yet claimed: it holds the slot
	n2 := mk("r2", 1)
	res := st.createRes(n2)
	if !res.Created || !res.Rejected || res.ID != n2.ID || res.Debounced {
		t.Fatalf("CreateRuns into a full group = %+v, want created and rejected", res)
	}
	r := st.get(n2.ID)
	if r.State != batuta.RunCanceled || r.Error == "" || r.FinishedAt.IsZero() || r.ConcurrencyKey != "wf/k" {
		t.Fatalf("rejected run: state %s error %q finished %v key %q", r.State, r.Error, r.FinishedAt, r.ConcurrencyKey)
	}
	for _, tr := range r.Tasks {
		if tr.State != batuta.TaskCanceled || len(tr.Attempts) != 0 {
			t.Fatalf("rejected run's task %s: %s, %d attempts", tr.Name, tr.State, len(tr.Attempts))
		}
	}
	if res := st.createRes(mk("r2", 2)); res.ID != n2.ID || res.Created || res.Rejected {
		t.Fatalf("duplicate of a rejected run: %+v, want the rejected run, not created", res)
	}
	a := st.claimOne(base, r1)
	st.completeOK(a, batuta.OutcomeSucceeded, nil, base)
	st.completeOK(st.claimOne(base, r1), batuta.OutcomeSucceeded, nil, base)
	r3 := st.createNew(mk("r3", 3))
	st.claimOne(base, r3)
}

// testFlowTaskConcurrency: at most Max tasks of a task-level group run at
// once; every way a claim ends frees its slot (success, failure, retry,
// snooze, deferral, release, rescue); other tasks do not wait.
func testFlowTaskConcurrency(t *testing.T, st *storeT) {
	const max = 2
	limited := []batuta.TaskSpec{{Name: "x", Concurrency: &batuta.ConcurrencySpec{Key: "wf/x", Max: max}}}
	for i := 0; i < 12; i++ {
		st.createNew(newRun("wf", fmt.Sprintf("e%d", i), base.Add(time.Duration(i)*time.Millisecond), limited))
	}
	free := st.createNew(newRun("wf", "free", base, []batuta.TaskSpec{{Name: "y"}}))
	now := base.Add(time.Second)
	running := map[string]batuta.Claim{}
	claim := func(at time.Time, want int, why string) {
		t.Helper()
		got := 0
		for _, c := range st.claim(at, 100) {
			if c.RunID == free {
				st.completeOK(c, batuta.OutcomeSucceeded, nil, at)
				continue
			}
			if _, dup := running[c.RunID]; dup {
				t.Fatalf("run %s claimed while its task runs", c.RunID)
			}
			running[c.RunID] = c
			got++
		}
		if len(running) > max {
			t.Fatalf("%s: %d tasks of the group running, Max %d", why, len(running), max)
		}
		if got != want {
			t.Fatalf("%s: claimed %d limited tasks, want %d", why, got, want)
		}
	}
	pick := func() batuta.Claim {
		for id, c := range running {
			delete(running, id)
			return c
		}
		t.Fatal("nothing running")
		return batuta.Claim{}
	}
	claim(now, max, "first claim")
	later := now.Add(time.Hour)
	for _, oc := range []batuta.Outcome{batuta.OutcomeSucceeded, batuta.OutcomeFailed, batuta.OutcomeRetry,
		batuta.OutcomeSnooze, batuta.OutcomeDefer, batuta.OutcomeRelease} {
		comp := batuta.Completion{Outcome: oc, StartedAt: now}
		switch oc {
		case batuta.OutcomeRetry, batuta.OutcomeSnooze, batuta.OutcomeDefer:
			comp.RetryAt = later
		case batuta.OutcomeRelease:
			comp.StartedAt, comp.FinishedAt = time.Time{}, now
		case batuta.OutcomeFailed:
			comp.Error = "boom"
		}
		st.claimNone(now, "the group is full")
		st.completeWith(pick(), comp)
		claim(now, 1, fmt.Sprintf("after %s", oc))
	}
	t2 := now.Add(2 * time.Minute) // the leases (1m) expired
	if n, _, err := st.s.RescueExpired(ctxT(t), t2, 5); err != nil || n != max {
		t.Fatalf("rescue: %d, %v; want %d", n, err, max)
	}
	running = map[string]batuta.Claim{}
	claim(t2, max, "after rescue")
}

// testFlowDebounce: events with one debounce key inside the window merge
// into one pending run (last event wins, start moved, capped by MaxWait);
// no merge once the start time passed; a duplicate Event.ID is found first.
func testFlowDebounce(t *testing.T, st *storeT) {
	db := &batuta.DebounceSpec{Key: "wf/d", Window: 10 * time.Second, MaxWait: 30 * time.Second}
	sec := func(n int) time.Time { return base.Add(time.Duration(n) * time.Second) }
	mk := func(ev string, at time.Time) batuta.NewRun {
		nr := newRun("wf", ev, at, one)
		nr.Debounce = db
		return nr
	}
	n1 := mk("e1", sec(0))
	id := st.createNew(n1)
	check := func(ev string, start time.Time) {
		t.Helper()
		r := st.get(id)
		if r.Event.ID != ev || !bytes.Equal(r.Event.Data, []byte(`{"ev":"`+ev+`"}`)) || !r.StartAt.Equal(start) ||
			!r.Task("x").NotBefore.Equal(start) || !r.CreatedAt.Equal(sec(0)) || r.State != batuta.RunPending {
			t.Fatalf("debounced run: event %s %s start %v not-before %v created %v state %s; want event %s start %v created %v",
				r.Event.ID, r.Event.Data, r.StartAt, r.Task("x").NotBefore, r.CreatedAt, r.State, ev, start, sec(0))
		}
	}
	check("e1", sec(10))
	merge := func(ev string, at time.Time) {
		t.Helper()
		n := mk(ev, at)
		res := st.createRes(n)
		if res.ID != id || res.Created || !res.Debounced || res.Rejected {
			t.Fatalf("event %s at %v: %+v, want merged into %s", ev, at.Sub(base), res, id)
		}
		if _, err := st.s.GetRun(ctxT(t), n.ID); !errors.Is(err, batuta.ErrRunNotFound) {
			t.Fatalf("merged NewRun's own ID exists: %v", err)
		}
	}
	merge("e2", sec(5))
	check("e2", sec(15))
	if _, err := st.s.FindRun(ctxT(t), "wf", "e1"); !errors.Is(err, batuta.ErrRunNotFound) {
		t.Fatalf("FindRun(e1) after the merge: %v, want ErrRunNotFound (the dedupe key is the last event's)", err)
	}
	if r, err := st.s.FindRun(ctxT(t), "wf", "e2"); err != nil || r.ID != id {
		t.Fatalf("FindRun(e2) = %v, want the debounced run", err)
	}
	// A duplicate Event.ID is found first: nothing moves.
	if res := st.createRes(mk("e2", sec(12))); res.ID != id || res.Created || res.Debounced {
		t.Fatalf("duplicate event in the window: %+v, want the run, not debounced", res)
	}
	check("e2", sec(15))
	// Through CreateRun too.
	got, created, err := st.s.CreateRun(ctxT(t), mk("e3", sec(14)))
	st.must(err)
	if got != id || created {
		t.Fatalf("CreateRun of a debounced event = %s, %v; want %s, false", got, created, id)
	}
	check("e3", sec(24))
	merge("e4", sec(22)) // CreatedAt+Window (32s) is past the first event's MaxWait
	check("e4", sec(30))
	st.claimNone(sec(30).Add(-time.Millisecond), "the debounced run starts at 30s")
	if due := st.nextDue(sec(22), "wf"); !due.Equal(sec(30)) {
		t.Fatalf("NextDue = %v, want %v", due, sec(30))
	}
	// Another key is another run.
	no := newRun("wf", "o1", sec(23), one)
	no.Debounce = &batuta.DebounceSpec{Key: "wf/other", Window: time.Hour, MaxWait: time.Hour}
	st.createNew(no)
	// Once the start time passed, even unclaimed, a new run begins.
	n5 := mk("e5", sec(31))
	id5 := st.createNew(n5)
	if r := st.get(id5); !r.StartAt.Equal(sec(41)) {
		t.Fatalf("new debounced run: StartAt %v, want %v", r.StartAt, sec(41))
	}
	c := st.claimOne(sec(31), id)
	if c.Event.ID != "e4" || !bytes.Equal(c.Event.Data, []byte(`{"ev":"e4"}`)) {
		t.Fatalf("claim carries event %s %s, want the last one, e4", c.Event.ID, c.Event.Data)
	}
	st.completeOK(c, batuta.OutcomeSucceeded, nil, sec(31))
	n6 := mk("e6", sec(32))
	res := st.createRes(n6)
	if res.ID != id5 || !res.Debounced {
		t.Fatalf("event after the first run started: %+v, want merged into the second run %s", res, id5)
	}
	if r := st.get(id5); !r.StartAt.Equal(sec(42)) || r.Event.ID != "e6" {
		t.Fatalf("second run: start %v event %s, want %v e6", r.StartAt, r.Event.ID, sec(42))
	}
	// A StartAt later than the window wins.
	nl := mk("late", sec(40))
	nl.Debounce = &batuta.DebounceSpec{Key: "wf/late", Window: time.Second, MaxWait: time.Minute}
	nl.StartAt = sec(100)
	idl := st.createNew(nl)
	if r := st.get(idl); !r.StartAt.Equal(sec(100)) {
		t.Fatalf("debounced run with a later StartAt: start %v, want %v", r.StartAt, sec(100))
	}
}

// testFlowPause: a paused workflow's tasks are not claimed (running ones
// complete), NextDue ignores it, new runs are accepted and wait; resuming
// makes them claimable and signals a WorkNotifier.
func testFlowPause(t *testing.T, st *storeT) {
	if ws := st.paused(); len(ws) != 0 {
		t.Fatalf("PausedWorkflows of a new store = %v", ws)
	}
	r1 := st.create("wf", "r1", []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}})
	a := st.claimOne(base, r1)
	st.setPaused("wf", true, true)
	st.setPaused("wf", true, false)
	st.setPaused("a-wf", true, true) // a workflow with no runs yet
	if ws := st.paused(); !reflect.DeepEqual(ws, []string{"a-wf", "wf"}) {
		t.Fatalf("PausedWorkflows = %v, want [a-wf wf]", ws)
	}
	r2 := st.create("wf", "r2", one) // accepted while paused
	nd := newRun("wf", "r3", base, one)
	nd.StartAt = base.Add(time.Minute)
	r3 := st.createNew(nd)
	other := st.create("other", "o", one)
	st.completeOK(st.claimOne(base, other), batuta.OutcomeSucceeded, nil, base)
	st.claimNone(base, "wf is paused", "wf")
	if res := st.completeOK(a, batuta.OutcomeSucceeded, nil, base); res.Err != nil {
		t.Fatal(res.Err)
	}
	st.claimNone(base.Add(2*time.Minute), "wf is paused")
	if due := st.nextDue(base, "wf"); !due.IsZero() {
		t.Fatalf("NextDue of a paused workflow = %v, want zero", due)
	}
	if r := st.get(r1); r.Finished() || taskState(r, "a") != batuta.TaskSucceeded {
		t.Fatalf("run paused mid-way: %s, a %s", r.State, taskState(r, "a"))
	}

	wn, _ := st.s.(batuta.WorkNotifier)
	if wn != nil {
		for drained := false; !drained; {
			select {
			case <-wn.WorkAvailable():
			default:
				drained = true
			}
		}
	}
	st.setPaused("wf", false, true)
	st.setPaused("wf", false, false)
	if ws := st.paused(); !reflect.DeepEqual(ws, []string{"a-wf"}) {
		t.Fatalf("PausedWorkflows after resume = %v, want [a-wf]", ws)
	}
	if wn != nil {
		select {
		case <-wn.WorkAvailable():
		case <-time.After(10 * time.Second):
			t.Fatal("resuming a workflow did not signal WorkAvailable")
		}
	}
	if due := st.nextDue(base, "wf"); !due.Equal(base.Add(time.Minute)) {
		t.Fatalf("NextDue after resume = %v, want %v", due, base.Add(time.Minute))
	}
	cs := st.claim(base, 10)
	if got := claimRunSet(cs); !reflect.DeepEqual(got, sortedStrings(r1, r2)) {
		t.Fatalf("claim after resume = %s, want r1's b and r2's x", claimRuns(cs))
	}
	st.claimOne(base.Add(time.Minute), r3)
}

// testFlowReserveRate: GCRA reservations: the first Burst start at once,
// the next ones Per/Limit apart; the backlog stays when time moves; keys
// are independent; an idle key gets its burst back.
func testFlowReserveRate(t *testing.T, st *storeT) {
	spec := batuta.RateSpec{Key: "api", Limit: 10, Per: time.Second, Burst: 3} // T = 100ms
	const T = 100 * time.Millisecond
	for i := 0; i < 3; i++ {
		if at := st.reserve(spec, base); at.After(base) {
			t.Fatalf("reservation %d of a burst of 3: %v after now", i+1, at.Sub(base))
		}
	}
	for i := 1; i <= 3; i++ {
		if at, want := st.reserve(spec, base), base.Add(time.Duration(i)*T); !near(at, want) {
			t.Fatalf("reservation %d: %v, want %v", 3+i, at.Sub(base), want.Sub(base))
		}
	}
	// The clock moved but the backlog stays: TAT is base+600ms.
	if at, want := st.reserve(spec, base.Add(150*time.Millisecond)), base.Add(400*time.Millisecond); !near(at, want) {
		t.Fatalf("reservation at 150ms: %v, want %v", at.Sub(base), want.Sub(base))
	}
	other := spec
	other.Key = "api/other"
	if at := st.reserve(other, base); at.After(base) {
		t.Fatalf("another key waits: %v", at.Sub(base))
	}
	later := base.Add(10 * time.Second)
	for i := 0; i < 3; i++ {
		if at := st.reserve(spec, later); at.After(later) {
			t.Fatalf("idle key, reservation %d: %v after now", i+1, at.Sub(later))
		}
	}
	if at, want := st.reserve(spec, later), later.Add(T); !near(at, want) {
		t.Fatalf("idle key, reservation 4: %v, want %v", at.Sub(later), want.Sub(later))
	}
	// Burst 1: one at once, then strictly spaced.
	slow := batuta.RateSpec{Key: "slow", Limit: 2, Per: time.Minute, Burst: 1}
	for i := 0; i < 4; i++ {
		want := base.Add(time.Duration(i) * 30 * time.Second)
		at := st.reserve(slow, base)
		if (i == 0 && at.After(base)) || (i > 0 && !near(at, want)) {
			t.Fatalf("Burst 1, reservation %d: %v, want %v", i+1, at.Sub(base), want.Sub(base))
		}
	}
}

// testFlowReserveRateConcurrent: concurrent callers get distinct slots,
// Per/Limit apart.
func testFlowReserveRateConcurrent(t *testing.T, st *storeT) {
	spec := batuta.RateSpec{Key: "conc", Limit: 100, Per: time.Second, Burst: 1} // T = 10ms
	const workers, each = 8, 5
	var mu sync.Mutex
	var slots []time.Time
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				at, err := st.s.ReserveRate(ctxT(t), spec, base)
				if err != nil {
					errc <- err
					return
				}
				mu.Lock()
				slots = append(slots, at)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	sort.Slice(slots, func(i, j int) bool { return slots[i].Before(slots[j]) })
	if slots[0].After(base) {
		t.Fatalf("first slot %v after now", slots[0].Sub(base))
	}
	for i := 1; i < len(slots); i++ {
		if want := base.Add(time.Duration(i) * 10 * time.Millisecond); !near(slots[i], want) {
			t.Fatalf("slot %d of %d concurrent reservations: %v, want %v (distinct, 10ms apart)", i, len(slots), slots[i].Sub(base), want.Sub(base))
		}
	}
}

// testFlowReserveRateBadSpec: an invalid rate spec is refused with an
// error and reserves nothing.
func testFlowReserveRateBadSpec(t *testing.T, st *storeT) {
	good := batuta.RateSpec{Key: "k", Limit: 1, Per: time.Minute, Burst: 1}
	for _, bad := range []batuta.RateSpec{
		{Key: "k", Limit: 0, Per: time.Minute, Burst: 1},
		{Key: "k", Limit: 1, Per: 0, Burst: 1},
		{Key: "k", Limit: 1, Per: -time.Second, Burst: 1},
		{Key: "k", Limit: 1, Per: time.Minute, Burst: 0},
	} {
		if _, err := st.s.ReserveRate(ctxT(t), bad, base); err == nil {
			t.Fatalf("ReserveRate(%+v) succeeded, want an error", bad)
		}
	}
	if at := st.reserve(good, base); at.After(base) {
		t.Fatalf("after refused specs, the first reservation waits: %v", at.Sub(base))
	}
}

// testFlowDefer: OutcomeDefer hands the task back due at RetryAt, records
// no attempt, shows NotBefore, and with RateReserved the next claim (only)
// reports Claim.RateReserved. A deferred task keeps its run's admission.
func testFlowDefer(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", one)
	c := st.claimOne(base, id)
	if c.RateReserved {
		t.Fatal("first claim reports RateReserved")
	}
	at := base.Add(5 * time.Second)
	st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeDefer, FinishedAt: base, RetryAt: at, RateReserved: true})
	x := st.get(id).Task("x")
	if x.State != batuta.TaskPending || len(x.Attempts) != 0 || !x.NotBefore.Equal(at) {
		t.Fatalf("deferred task: %s, %d attempts, NotBefore %v; want pending, 0, %v", x.State, len(x.Attempts), x.NotBefore, at)
	}
	st.claimNone(at.Add(-time.Millisecond), "deferred until 5s")
	if due := st.nextDue(base, "wf"); !due.Equal(at) {
		t.Fatalf("NextDue = %v, want %v", due, at)
	}
	c = st.claimOne(at, id)
	if !c.RateReserved || c.Attempt != 1 {
		t.Fatalf("claim after a reserved deferral: RateReserved %v attempt %d, want true 1", c.RateReserved, c.Attempt)
	}
	st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeRelease, FinishedAt: at})
	c = st.claimOne(at, id)
	if c.RateReserved {
		t.Fatal("RateReserved reported by a second claim")
	}
	at2 := at.Add(time.Second)
	st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeDefer, FinishedAt: at, RetryAt: at2})
	c = st.claimOne(at2, id)
	if c.RateReserved || c.Attempt != 1 {
		t.Fatalf("claim after a deferral without reservation: RateReserved %v attempt %d", c.RateReserved, c.Attempt)
	}
	st.completeOK(c, batuta.OutcomeSucceeded, nil, at2)
	if x := st.get(id).Task("x"); len(x.Attempts) != 1 || x.Attempts[0].Outcome != batuta.OutcomeSucceeded || !x.NotBefore.IsZero() {
		t.Fatalf("attempts %+v NotBefore %v; want only the success", x.Attempts, x.NotBefore)
	}

	// A deferred task keeps its run admitted: the group stays full.
	k := &batuta.ConcurrencySpec{Key: "wf2/k", Max: 1}
	q1, q2 := newRun("wf2", "q1", base, one), newRun("wf2", "q2", base.Add(time.Millisecond), one)
	q1.Concurrency, q2.Concurrency = k, k
	st.createNew(q1)
	st.createNew(q2)
	c = st.claimOne(base, q1.ID, "wf2")
	st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeDefer, FinishedAt: base, RetryAt: at, RateReserved: true})
	st.claimNone(base.Add(time.Second), "q1 keeps its slot while deferred", "wf2")
	c = st.claimOne(at, q1.ID, "wf2")
	st.completeOK(c, batuta.OutcomeSucceeded, nil, at)
	st.claimOne(at, q2.ID, "wf2")
}

// testFlowCreateRuns: a batch records each run as CreateRun would (dedupe
// inside the batch and against stored runs, debounce, concurrency
// strategies), answers in order, checks MaxActive once, and on error
// records nothing.
func testFlowCreateRuns(t *testing.T, st *storeT) {
	existing := st.create("wf", "e0", one)
	if res, err := st.s.CreateRuns(ctxT(t), nil); err != nil || len(res) != 0 {
		t.Fatalf("CreateRuns(nil) = %v, %v", res, err)
	}
	a, b, dupA, dup0, e := newRun("wf", "e1", base, one), newRun("wf", "e2", base, one), newRun("wf", "e1", base, one),
		newRun("wf", "e0", base, one), newRun("wf", "e3", base, one)
	res, err := st.s.CreateRuns(ctxT(t), []batuta.NewRun{a, b, dupA, dup0, e})
	st.must(err)
	want := []batuta.CreateResult{{ID: a.ID, Created: true}, {ID: b.ID, Created: true}, {ID: a.ID}, {ID: existing}, {ID: e.ID, Created: true}}
	if len(res) != len(want) {
		t.Fatalf("CreateRuns of 5 = %d results", len(res))
	}
	for i := range want {
		if res[i].ID != want[i].ID || res[i].Created != want[i].Created || res[i].Debounced || res[i].Rejected || len(res[i].Canceled) != 0 {
			t.Fatalf("result %d = %+v, want %+v", i, res[i], want[i])
		}
	}
	for _, id := range []string{dupA.ID, dup0.ID} {
		if _, err := st.s.GetRun(ctxT(t), id); !errors.Is(err, batuta.ErrRunNotFound) {
			t.Fatalf("a duplicate's own ID exists: %v", err)
		}
	}
	cs := st.claim(base, 10)
	if got := claimRunSet(cs); !reflect.DeepEqual(got, sortedStrings(existing, a.ID, b.ID, e.ID)) {
		t.Fatalf("claimable after the batch: %s", claimRuns(cs))
	}
	for _, c := range cs {
		st.completeOK(c, batuta.OutcomeSucceeded, nil, base)
	}

	// Concurrency and debounce apply item by item.
	k1, k2 := newRun("wf", "k1", base, one), newRun("wf", "k2", base, one)
	k1.Concurrency = &batuta.ConcurrencySpec{Key: "wf/k", Max: 1, Strategy: batuta.ConcurrencyCancelNewest}
	k2.Concurrency = k1.Concurrency
	d1, d2 := newRun("wf", "d1", base, one), newRun("wf", "d2", base.Add(time.Second), one)
	d1.Debounce = &batuta.DebounceSpec{Key: "wf/d", Window: time.Minute, MaxWait: time.Hour}
	d2.Debounce = d1.Debounce
	res, err = st.s.CreateRuns(ctxT(t), []batuta.NewRun{k1, k2, d1, d2})
	st.must(err)
	if len(res) != 4 || !res[0].Created || res[0].Rejected || !res[1].Created || !res[1].Rejected ||
		!res[2].Created || res[3].ID != d1.ID || !res[3].Debounced || res[3].Created {
		t.Fatalf("batch with limits and debounce = %+v", res)
	}
	if r := st.get(d1.ID); r.Event.ID != "d2" || !r.StartAt.Equal(base.Add(time.Second+time.Minute)) {
		t.Fatalf("debounced within a batch: event %s start %v", r.Event.ID, r.StartAt)
	}

	// MaxActive: two unfinished runs now (k1, d1). Checked once per batch;
	// an error records nothing.
	busy := []batuta.NewRun{newRun("wf", "b1", base, one), newRun("wf", "b2", base, one)}
	for i := range busy {
		busy[i].MaxActive = 2
	}
	if _, err := st.s.CreateRuns(ctxT(t), busy); !errors.Is(err, batuta.ErrBusy) {
		t.Fatalf("batch at MaxActive: %v, want ErrBusy", err)
	}
	for _, ev := range []string{"b1", "b2"} {
		if _, err := st.s.FindRun(ctxT(t), "wf", ev); !errors.Is(err, batuta.ErrRunNotFound) {
			t.Fatalf("refused batch recorded %s: %v", ev, err)
		}
	}
	ok := []batuta.NewRun{newRun("wf", "c1", base, one), newRun("wf", "c2", base, one), newRun("wf", "c3", base, one)}
	for i := range ok {
		ok[i].MaxActive = 3
	}
	res, err = st.s.CreateRuns(ctxT(t), ok)
	st.must(err)
	for i := range res {
		if !res[i].Created {
			t.Fatalf("batch below MaxActive (checked once): result %d %+v", i, res[i])
		}
	}
}

// testFlowReopen: every waiting state survives a restart: a delayed run,
// a deferral with its reservation flag, a pause and a rate key's backlog.
func testFlowReopen(t *testing.T, st *storeT) {
	nd := newRun("wf", "later", base, one)
	nd.StartAt = base.Add(time.Minute)
	id := st.createNew(nd)
	x := st.create("wf", "x", one)
	c := st.claimOne(base, x)
	st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeDefer, FinishedAt: base, RetryAt: base.Add(30 * time.Second), RateReserved: true})
	st.setPaused("p", true, true)
	spec := batuta.RateSpec{Key: "r", Limit: 1, Per: time.Minute, Burst: 1}
	if at := st.reserve(spec, base); at.After(base) {
		t.Fatalf("first reservation: %v", at.Sub(base))
	}
	if at := st.reserve(spec, base); !near(at, base.Add(time.Minute)) {
		t.Fatalf("second reservation: %v, want 1m", at.Sub(base))
	}

	st.s = st.suite.Reopen(t, st.s)

	if ws := st.paused(); !reflect.DeepEqual(ws, []string{"p"}) {
		t.Fatalf("PausedWorkflows after reopen = %v", ws)
	}
	if r := st.get(id); !r.StartAt.Equal(base.Add(time.Minute)) || r.State != batuta.RunPending {
		t.Fatalf("delayed run after reopen: %s StartAt %v", r.State, r.StartAt)
	}
	if due := st.nextDue(base, "wf"); !due.Equal(base.Add(30 * time.Second)) {
		t.Fatalf("NextDue after reopen = %v, want 30s", due.Sub(base))
	}
	if at := st.reserve(spec, base); !near(at, base.Add(2*time.Minute)) {
		t.Fatalf("reservation after reopen: %v, want 2m (the backlog is durable)", at.Sub(base))
	}
	st.claimNone(base.Add(29*time.Second), "deferred until 30s")
	if c := st.claimOne(base.Add(30*time.Second), x); !c.RateReserved || c.Attempt != 1 {
		t.Fatalf("deferred claim after reopen: RateReserved %v attempt %d", c.RateReserved, c.Attempt)
	}
	st.claimOne(base.Add(time.Minute), id)
}
