package batutatest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// The durable-wait and operations cases of the Store conformance suite
// (issues 13 and 12): OutcomeWait, signals, child runs, RunFilter,
// RetryRun and WorkflowStats. They drive the Store directly with explicit
// clocks, never sleeping. Their names start with "Ops" so that
// `-run 'TestX/Ops'` selects them. Signal data and outputs are given as
// json.RawMessage (as the orchestrator gives them to a durable store) and
// compared as JSON.

// opsCases lists the durable-wait and operations cases; TestStore runs
// them after the flow cases. Names are stable: stores' test filters may
// refer to them.
var opsCases = []storeCase{
	{"OpsWaitTimer", testOpsWaitTimer},
	{"OpsWaitForever", testOpsWaitForever},
	{"OpsSignalBuffered", testOpsSignalBuffered},
	{"OpsSignalWhileClaimed", testOpsSignalWhileClaimed},
	{"OpsSignalDelivered", testOpsSignalDelivered},
	{"OpsSignalErrors", testOpsSignalErrors},
	{"OpsChildLink", testOpsChildLink},
	{"OpsChildLastWakes", testOpsChildLastWakes},
	{"OpsChildFinishedBeforeWait", testOpsChildFinishedBeforeWait},
	{"OpsCancelCascades", testOpsCancelCascades},
	{"OpsRunFilter", testOpsRunFilter},
	{"OpsRunFilterPaging", testOpsRunFilterPaging},
	{"OpsRunFilterLimitCap", testOpsRunFilterLimitCap},
	{"OpsRetryRun", testOpsRetryRun},
	{"OpsRetryRunFrom", testOpsRetryRunFrom},
	{"OpsRetryRunCanceled", testOpsRetryRunCanceled},
	{"OpsRetryRunConcurrency", testOpsRetryRunConcurrency},
	{"OpsRetryRunChild", testOpsRetryRunChild},
	{"OpsWorkflowStats", testOpsWorkflowStats},
}

// raw is JSON data as the orchestrator hands it to a durable store.
func raw(s string) json.RawMessage { return json.RawMessage(s) }

// sameJSON reports whether v (an output or signal data: the Go value from
// the in-memory store, JSON from a durable one) encodes want.
func sameJSON(v any, want string) bool {
	got, err := batuta.OutputAs[json.RawMessage](v)
	return err == nil && jsonEqual(got, []byte(want))
}

// waitOn completes c with OutcomeWait at at, due again at retryAt (zero:
// only when woken).
func (st *storeT) waitOn(c batuta.Claim, at, retryAt time.Time, waitFor, child string) batuta.CompleteResult {
	st.t.Helper()
	return st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeWait, StartedAt: at, FinishedAt: at, RetryAt: retryAt, WaitFor: waitFor, Child: child})
}

func (st *storeT) send(runID, name string, data any, at time.Time, maxBuffered int) (batuta.SignalResult, error) {
	st.t.Helper()
	return st.s.SendSignal(ctxT(st.t), batuta.SignalSend{RunID: runID, Name: name, Data: data, SentAt: at, MaxBuffered: maxBuffered})
}

func (st *storeT) sendOK(runID, name string, data any, at time.Time) batuta.SignalResult {
	st.t.Helper()
	res, err := st.send(runID, name, data, at, 0)
	if err != nil {
		st.fatalf("SendSignal(%s, %q): %v", runID, name, err)
	}
	return res
}

// child records a run of workflow wf whose parent is the task of run
// parent, created at at.
func (st *storeT) child(wf, ev string, at time.Time, tasks []batuta.TaskSpec, parent, task string) string {
	st.t.Helper()
	nr := newRun(wf, ev, at, tasks)
	nr.Parent = &batuta.RunLink{RunID: parent, Task: task}
	return st.createNew(nr)
}

func (st *storeT) list(f batuta.RunFilter) []*batuta.Run {
	st.t.Helper()
	rs, err := st.s.ListRuns(ctxT(st.t), f)
	st.must(err)
	return rs
}

func runIDs(rs []*batuta.Run) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

// testOpsWaitTimer: a task handed back with OutcomeWait is pending again,
// due at RetryAt (NotBefore, NextDue), with no attempt spent or recorded;
// WaitingSince is set by the first wait only, WaitingFor by the last; the
// claim reports WaitingSince; the run is not finished meanwhile.
func testOpsWaitTimer(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "w"}, {Name: "after", Deps: []int{0}}})
	c := st.claimOne(base, id)
	if c.Task != "w" || !c.WaitingSince.IsZero() {
		t.Fatalf("first claim: %s WaitingSince %v, want w, zero", c.Task, c.WaitingSince)
	}
	t1, due := base.Add(time.Second), base.Add(time.Minute)
	if res := st.waitOn(c, t1, due, "timer", ""); res.RunFinished != "" || res.Ready != 0 {
		t.Fatalf("wait: %+v, want nothing finished or ready", res)
	}
	r := st.get(id)
	w := r.Task("w")
	if r.State != batuta.RunRunning || w.State != batuta.TaskPending || !near(w.NotBefore, due) ||
		!near(w.WaitingSince, t1) || w.WaitingFor != "timer" || len(w.Attempts) != 0 {
		t.Fatalf("after the wait: run %s, w %+v; want running, w pending NotBefore %v WaitingSince %v WaitingFor timer, no attempt", r.State, *w, due, t1)
	}
	st.claimNone(due.Add(-time.Millisecond), "the task waits until its RetryAt")
	if nd := st.nextDue(t1, "wf"); !near(nd, due) {
		t.Fatalf("NextDue = %v, want the wait's RetryAt %v", nd, due)
	}
	c = st.claimOne(due, id)
	if c.Task != "w" || c.Attempt != 1 || !near(c.WaitingSince, t1) {
		t.Fatalf("claim at RetryAt: %s attempt %d WaitingSince %v, want w, attempt 1 (a wait spends none), %v", c.Task, c.Attempt, c.WaitingSince, t1)
	}
	due2 := due.Add(time.Minute)
	st.waitOn(c, due, due2, "timer again", "")
	w = st.get(id).Task("w")
	if !near(w.WaitingSince, t1) || w.WaitingFor != "timer again" || !near(w.NotBefore, due2) || len(w.Attempts) != 0 {
		t.Fatalf("second wait: %+v, want WaitingSince kept %v, WaitingFor replaced, NotBefore %v", *w, t1, due2)
	}
	c = st.claimOne(due2, id)
	if c.Attempt != 1 {
		t.Fatalf("claim after two waits: attempt %d, want 1", c.Attempt)
	}
	if res := st.completeOK(c, batuta.OutcomeSucceeded, raw(`"done"`), due2); res.Ready != 1 {
		t.Fatalf("w done: ready %d, want 1", res.Ready)
	}
	w = st.get(id).Task("w")
	if w.State != batuta.TaskSucceeded || len(w.Attempts) != 1 || w.Attempts[0].Number != 1 ||
		!near(w.WaitingSince, t1) || w.WaitingFor != "timer again" || !w.NotBefore.IsZero() {
		t.Fatalf("finished waiter: %+v, want succeeded with one attempt, the wait kept as a record", *w)
	}
	c = st.claimOne(due2, id)
	if res := st.completeOK(c, batuta.OutcomeSucceeded, nil, due2); c.Task != "after" || res.RunFinished != batuta.RunSucceeded {
		t.Fatalf("after: claimed %s, run finished %q", c.Task, res.RunFinished)
	}
}

// testOpsWaitForever: a wait with no RetryAt is due never by time (no
// NotBefore, never claimed, ignored by NextDue); Child is kept by later
// waits that name none; canceling the run cancels the waiting task at
// once.
func testOpsWaitForever(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "w"}})
	later := newRun("wf", "later", base, one)
	later.StartAt = base.Add(time.Hour)
	idLater := st.createNew(later)
	c := st.claimOne(base, id)
	st.waitOn(c, base, base.Add(time.Minute), "run kid-1", "kid-1")
	c = st.claimOne(base.Add(time.Minute), id)
	st.waitOn(c, base.Add(time.Minute), time.Time{}, "forever", "")
	w := st.get(id).Task("w")
	if w.State != batuta.TaskPending || !w.NotBefore.IsZero() || w.Child != "kid-1" || w.WaitingFor != "forever" || !near(w.WaitingSince, base) {
		t.Fatalf("waiting forever: %+v, want pending, no NotBefore, Child kid-1 kept, WaitingFor forever", *w)
	}
	if nd := st.nextDue(base.Add(time.Minute), "wf"); !nd.Equal(later.StartAt) {
		t.Fatalf("NextDue = %v, want the delayed run's start %v (a wait with no time is never due)", nd, later.StartAt)
	}
	st.claimNone(base.Add(59*time.Minute), "the task waits with no time limit")
	st.claimOne(base.Add(100*time.Hour), idLater)
	st.claimNone(base.Add(1000*time.Hour), "the task waits with no time limit")
	st.cancel(id, "stop", base.Add(2*time.Hour))
	r := st.get(id)
	if r.State != batuta.RunCanceled || taskState(r, "w") != batuta.TaskCanceled || !near(r.FinishedAt, base.Add(2*time.Hour)) {
		t.Fatalf("canceled while waiting: run %s w %s finished %v", r.State, taskState(r, "w"), r.FinishedAt)
	}
}

// testOpsSignalBuffered: signals sent before their task waits are buffered
// and carried by its claims, oldest first and by name; a completion
// consumes one only when accepted (a stale token consumes nothing).
func testOpsSignalBuffered(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{
		{Name: "a", Signal: "s"}, {Name: "b", Signal: "s", Deps: []int{0}}, {Name: "c", Signal: "t", Deps: []int{1}},
	})
	if res := st.sendOK(id, "t", raw(`"T"`), base); res.Delivered || res.Task != "c" {
		t.Fatalf("signal t before c waits: %+v, want buffered for c", res)
	}
	for i, want := range []string{"1", "2"} {
		if res := st.sendOK(id, "s", raw(want), base.Add(time.Duration(i+1)*time.Millisecond)); res.Delivered || res.Task != "a" {
			t.Fatalf("signal s #%d: %+v, want buffered for a (the first unfinished task waiting for s)", i+1, res)
		}
	}
	cs, err := st.s.ClaimTasks(ctxT(t), batuta.ClaimParams{Owner: "w1", Limit: 1, Now: base.Add(time.Second), LeaseUntil: base.Add(time.Minute)})
	st.must(err)
	if len(cs) != 1 || cs[0].Task != "a" || cs[0].Signal == nil {
		t.Fatalf("claim of a: %+v, want a with a signal", cs)
	}
	old := cs[0]
	if sg := old.Signal; sg.Name != "s" || !sameJSON(sg.Data, "1") || sg.Seq == 0 || !near(sg.SentAt, base.Add(time.Millisecond)) {
		t.Fatalf("a's signal: %+v, want the oldest s (data 1, sent at +1ms)", *sg)
	}
	// The lease expires; the stale worker's completion consumes nothing.
	if n, _, err := st.s.RescueExpired(ctxT(t), base.Add(2*time.Minute), 5); err != nil || n != 1 {
		t.Fatalf("rescue: %d, %v", n, err)
	}
	res, err := st.s.CompleteTasks(ctxT(t), []batuta.Completion{{ClaimRef: old.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: 1,
		Output: old.Signal.Data, StartedAt: base, FinishedAt: base.Add(3 * time.Minute), ConsumeSignal: old.Signal.Seq}})
	st.must(err)
	if !errors.Is(res[0].Err, batuta.ErrLeaseLost) {
		t.Fatalf("stale completion: %v, want ErrLeaseLost", res[0].Err)
	}
	now := base.Add(3 * time.Minute)
	c := st.claimOne(now, id)
	if c.Signal == nil || c.Signal.Seq != old.Signal.Seq || !sameJSON(c.Signal.Data, "1") {
		t.Fatalf("claim after the stale completion: signal %+v, want the same (seq %d, data 1)", c.Signal, old.Signal.Seq)
	}
	// A completion that does not consume leaves the signal buffered.
	st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeRelease, StartedAt: now})
	c = st.claimOne(now, id)
	if c.Signal == nil || c.Signal.Seq != old.Signal.Seq {
		t.Fatalf("claim after a release: signal %+v, want seq %d still", c.Signal, old.Signal.Seq)
	}
	st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeSucceeded, Output: c.Signal.Data, StartedAt: now, ConsumeSignal: c.Signal.Seq})
	c = st.claimOne(now, id)
	if c.Task != "b" || c.Signal == nil || c.Signal.Name != "s" || !sameJSON(c.Signal.Data, "2") || c.Signal.Seq <= old.Signal.Seq {
		t.Fatalf("claim of b: %s signal %+v, want b with the second s (data 2)", c.Task, c.Signal)
	}
	st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeSucceeded, Output: c.Signal.Data, StartedAt: now, ConsumeSignal: c.Signal.Seq})
	c = st.claimOne(now, id)
	if c.Task != "c" || c.Signal == nil || c.Signal.Name != "t" || !sameJSON(c.Signal.Data, `"T"`) {
		t.Fatalf("claim of c: %s signal %+v, want c with t", c.Task, c.Signal)
	}
	res2 := st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeSucceeded, Output: c.Signal.Data, StartedAt: now, ConsumeSignal: c.Signal.Seq})
	if res2.RunFinished != batuta.RunSucceeded {
		t.Fatalf("run after c: %q, want succeeded", res2.RunFinished)
	}
	r := st.get(id)
	if !sameJSON(r.Task("a").Output, "1") || !sameJSON(r.Task("b").Output, "2") || !sameJSON(r.Task("c").Output, `"T"`) {
		t.Fatalf("outputs %v %v %v, want 1 2 \"T\"", r.Task("a").Output, r.Task("b").Output, r.Task("c").Output)
	}
}

// testOpsSignalWhileClaimed: a signal sent while its task is claimed is
// buffered; the task's OutcomeWait then makes it due at once (no RetryAt
// needed) and the next claim carries the signal.
func testOpsSignalWhileClaimed(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "w", Signal: "go"}})
	c := st.claimOne(base, id)
	if c.Signal != nil {
		t.Fatalf("claim with nothing buffered: signal %+v", *c.Signal)
	}
	if res := st.sendOK(id, "go", raw(`{"ok":true}`), base.Add(time.Second)); res.Delivered || res.Task != "w" {
		t.Fatalf("signal while claimed: %+v, want buffered for w", res)
	}
	at := base.Add(2 * time.Second)
	st.waitOn(c, at, time.Time{}, "signal go", "")
	c = st.claimOne(at, id)
	if c.Signal == nil || !sameJSON(c.Signal.Data, `{"ok":true}`) || !near(c.WaitingSince, at) {
		t.Fatalf("claim after the wait: signal %+v WaitingSince %v, want the buffered signal, %v", c.Signal, c.WaitingSince, at)
	}
	res := st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeSucceeded, Output: c.Signal.Data, StartedAt: at, ConsumeSignal: c.Signal.Seq})
	if res.RunFinished != batuta.RunSucceeded {
		t.Fatalf("run: %q, want succeeded", res.RunFinished)
	}
	if _, err := st.send(id, "go", raw(`1`), at, 0); !errors.Is(err, batuta.ErrNoWaiter) {
		t.Fatalf("signal to the finished run: %v, want ErrNoWaiter", err)
	}
}

// testOpsSignalDelivered: a signal to a waiting task completes it at once
// with the data as output, recording no attempt and keeping its wait
// record; its dependents are counted down (Ready), its timeout forgotten
// (NextDue); a delivery may finish the run; of two waiting tasks the
// first in declaration order takes it.
func testOpsSignalDelivered(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "w", Signal: "go"}, {Name: "next", Deps: []int{0}}})
	c := st.claimOne(base, id)
	st.waitOn(c, base, base.Add(time.Hour), "signal go", "")
	sent := base.Add(5 * time.Second)
	res := st.sendOK(id, "go", raw(`{"v":7}`), sent)
	if !res.Delivered || res.Task != "w" || res.Ready != 1 || res.RunFinished != "" {
		t.Fatalf("SendSignal to a waiting task: %+v, want delivered to w, 1 ready", res)
	}
	w := st.get(id).Task("w")
	if w.State != batuta.TaskSucceeded || !sameJSON(w.Output, `{"v":7}`) || len(w.Attempts) != 0 ||
		!near(w.WaitingSince, base) || w.WaitingFor != "signal go" || !w.NotBefore.IsZero() {
		t.Fatalf("delivered task: %+v, want succeeded with the data, no attempt, wait record kept", *w)
	}
	if nd := st.nextDue(base, "wf"); !nd.IsZero() {
		t.Fatalf("NextDue after the delivery = %v, want zero (the timeout is gone)", nd)
	}
	c = st.claimOne(sent, id)
	if c.Task != "next" || len(c.Upstream) != 1 || c.Upstream[0].State != batuta.TaskSucceeded || !sameJSON(c.Upstream[0].Output, `{"v":7}`) {
		t.Fatalf("next: %+v, want the signal's data upstream", c)
	}
	st.completeOK(c, batuta.OutcomeSucceeded, nil, sent)

	// A delivery that finishes the run.
	id2 := st.create("wf", "e2", []batuta.TaskSpec{{Name: "only", Signal: "go"}})
	st.waitOn(st.claimOne(base, id2), base, time.Time{}, "signal go", "")
	res = st.sendOK(id2, "go", raw(`1`), base.Add(time.Minute))
	if r := st.get(id2); !res.Delivered || res.RunFinished != batuta.RunSucceeded || r.State != batuta.RunSucceeded || !near(r.FinishedAt, base.Add(time.Minute)) {
		t.Fatalf("delivery to the last task: %+v, run %s finished %v, want the run succeeded at %v", res, r.State, r.FinishedAt, base.Add(time.Minute))
	}

	// Two waiting tasks: declaration order.
	id3 := st.create("wf", "e3", []batuta.TaskSpec{{Name: "x", Signal: "go"}, {Name: "y", Signal: "go"}})
	cs := st.claim(base, 10)
	if len(cs) != 2 {
		t.Fatalf("claim: %d tasks, want x and y", len(cs))
	}
	for i := len(cs) - 1; i >= 0; i-- { // y waits first
		st.waitOn(cs[i], base, time.Time{}, "signal go", "")
	}
	if res := st.sendOK(id3, "go", raw(`"one"`), base); !res.Delivered || res.Task != "x" {
		t.Fatalf("first signal: %+v, want delivered to x", res)
	}
	if res := st.sendOK(id3, "go", raw(`"two"`), base); !res.Delivered || res.Task != "y" || res.RunFinished != batuta.RunSucceeded {
		t.Fatalf("second signal: %+v, want delivered to y, finishing the run", res)
	}
	if r := st.get(id3); !sameJSON(r.Task("x").Output, `"one"`) || !sameJSON(r.Task("y").Output, `"two"`) {
		t.Fatalf("outputs x %v y %v", r.Task("x").Output, r.Task("y").Output)
	}
}

// testOpsSignalErrors: ErrRunNotFound, ErrNoWaiter (no task waits for the
// name, the task finished, the run finished) and ErrSignalBufferFull (at
// MaxBuffered, default 100), losing none of the buffered signals.
func testOpsSignalErrors(t *testing.T, st *storeT) {
	if _, err := st.send(newID(base), "go", raw(`1`), base, 0); !errors.Is(err, batuta.ErrRunNotFound) {
		t.Fatalf("signal to no run: %v, want ErrRunNotFound", err)
	}
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "w", Signal: "go"}, {Name: "z"}})
	if _, err := st.send(id, "nope", raw(`1`), base, 0); !errors.Is(err, batuta.ErrNoWaiter) {
		t.Fatalf("signal no task waits for: %v, want ErrNoWaiter", err)
	}
	byTask := st.byTask(st.claim(base, 10))
	st.completeOK(byTask["w"], batuta.OutcomeSucceeded, nil, base)
	if _, err := st.send(id, "go", raw(`1`), base, 0); !errors.Is(err, batuta.ErrNoWaiter) {
		t.Fatalf("signal to a finished waiter of an unfinished run: %v, want ErrNoWaiter", err)
	}
	st.completeOK(byTask["z"], batuta.OutcomeSucceeded, nil, base)
	if _, err := st.send(id, "go", raw(`1`), base, 0); !errors.Is(err, batuta.ErrNoWaiter) {
		t.Fatalf("signal to a finished run: %v, want ErrNoWaiter", err)
	}

	id2 := st.create("wf", "e2", []batuta.TaskSpec{{Name: "w", Signal: "go"}})
	for i := 0; i < 3; i++ {
		if _, err := st.send(id2, "go", raw(fmt.Sprint(i)), base.Add(time.Duration(i)*time.Millisecond), 3); err != nil {
			t.Fatalf("signal %d of 3: %v", i, err)
		}
	}
	if _, err := st.send(id2, "go", raw(`3`), base.Add(time.Second), 3); !errors.Is(err, batuta.ErrSignalBufferFull) {
		t.Fatalf("fourth signal at MaxBuffered 3: %v, want ErrSignalBufferFull", err)
	}
	c := st.claimOne(base.Add(time.Second), id2)
	if c.Signal == nil || !sameJSON(c.Signal.Data, "0") {
		t.Fatalf("claim after a refused signal: %+v, want the first buffered (0)", c.Signal)
	}
	st.completeWith(c, batuta.Completion{Outcome: batuta.OutcomeWait, StartedAt: base.Add(time.Second), ConsumeSignal: c.Signal.Seq})
	if _, err := st.send(id2, "go", raw(`3`), base.Add(time.Second), 3); err != nil {
		t.Fatalf("signal once one was consumed: %v", err)
	}

	id3 := st.create("wf", "e3", []batuta.TaskSpec{{Name: "w", Signal: "go"}})
	for i := 0; i < 100; i++ {
		if _, err := st.send(id3, "go", raw(fmt.Sprint(i)), base, 0); err != nil {
			t.Fatalf("signal %d of the default 100: %v", i, err)
		}
	}
	if _, err := st.send(id3, "go", raw(`100`), base, 0); !errors.Is(err, batuta.ErrSignalBufferFull) {
		t.Fatalf("signal 101 with the default bound: %v, want ErrSignalBufferFull", err)
	}
}

// testOpsChildLink: a child run links to its parent (Run.Parent), the
// parent's task to it (TaskRun.Child); ListRuns selects children by
// Parent and ParentTask; the parent task waiting with no time limit is
// due at once when the child finishes (NotBefore: the finish time).
func testOpsChildLink(t *testing.T, st *storeT) {
	p := st.create("parent", "e1", []batuta.TaskSpec{{Name: "call"}, {Name: "after", Deps: []int{0}}})
	c := st.claimOne(base, p, "parent")
	kid := st.child("child", "k1", base.Add(time.Second), one, p, "call")
	other := st.create("other", "k2", one)
	if r := st.get(kid); r.Parent == nil || r.Parent.RunID != p || r.Parent.Task != "call" {
		t.Fatalf("child's Parent = %+v, want %s/call", r.Parent, p)
	}
	if r := st.get(p); r.Parent != nil {
		t.Fatalf("a run with no parent: Parent %+v", r.Parent)
	}
	st.waitOn(c, base.Add(time.Second), time.Time{}, "run "+kid, kid)
	if ct := st.get(p).Task("call"); ct.Child != kid || ct.WaitingFor != "run "+kid {
		t.Fatalf("parent task: Child %q WaitingFor %q, want %s", ct.Child, ct.WaitingFor, kid)
	}
	if got := runIDs(st.list(batuta.RunFilter{Parent: p})); len(got) != 1 || got[0] != kid {
		t.Fatalf("ListRuns(Parent) = %v, want [%s]", got, kid)
	}
	if got := runIDs(st.list(batuta.RunFilter{Parent: p, ParentTask: "call"})); len(got) != 1 || got[0] != kid {
		t.Fatalf("ListRuns(Parent, ParentTask call) = %v, want [%s]", got, kid)
	}
	if got := st.list(batuta.RunFilter{Parent: p, ParentTask: "after"}); len(got) != 0 {
		t.Fatalf("ListRuns(Parent, ParentTask after) = %v, want none", runIDs(got))
	}
	st.claimNone(base.Add(time.Hour), "the parent task waits for its child", "parent")
	ck := st.claimOne(base.Add(2*time.Second), kid, "child")
	done := base.Add(3 * time.Second)
	if res := st.completeOK(ck, batuta.OutcomeSucceeded, raw(`"kid"`), done); res.RunFinished != batuta.RunSucceeded {
		t.Fatalf("child run: %q, want succeeded", res.RunFinished)
	}
	if ct := st.get(p).Task("call"); ct.State != batuta.TaskPending || !near(ct.NotBefore, done) {
		t.Fatalf("parent task after its child finished: %s NotBefore %v, want pending, due at %v", ct.State, ct.NotBefore, done)
	}
	c = st.claimOne(done, p, "parent")
	if c.Task != "call" || c.Attempt != 1 || !near(c.WaitingSince, base.Add(time.Second)) {
		t.Fatalf("woken parent task: %s attempt %d WaitingSince %v", c.Task, c.Attempt, c.WaitingSince)
	}
	st.completeOK(c, batuta.OutcomeSucceeded, nil, done)
	if r := st.get(other); r.State != batuta.RunPending || r.Parent != nil {
		t.Fatalf("unrelated run: %s parent %+v", r.State, r.Parent)
	}
}

// testOpsChildLastWakes: a parent task with several child runs is woken
// only when the last unfinished one finishes, whichever way each finishes
// (its last task, CancelRun, a rescue that fails it).
func testOpsChildLastWakes(t *testing.T, st *storeT) {
	p := st.create("parent", "e1", []batuta.TaskSpec{{Name: "fan"}})
	c := st.claimOne(base, p, "parent")
	k1 := st.child("child", "k1", base, one, p, "fan")
	n2 := newRun("child", "k2", base, one)
	n2.Parent, n2.StartAt = &batuta.RunLink{RunID: p, Task: "fan"}, base.Add(time.Hour) // not started: canceled at once
	k2 := st.createNew(n2)
	k3 := st.child("child", "k3", base, one, p, "fan")
	st.waitOn(c, base, time.Time{}, "3 runs", "")
	cs := st.claim(base, 10, "child")
	byRun := map[string]batuta.Claim{}
	for _, c := range cs {
		byRun[c.RunID] = c
	}
	if len(cs) != 2 || byRun[k1].RunID == "" || byRun[k3].RunID == "" {
		t.Fatalf("child claims: %s, want k1 and k3", claimRuns(cs))
	}
	st.completeOK(byRun[k1], batuta.OutcomeSucceeded, nil, base.Add(time.Second))
	st.claimNone(base.Add(10*time.Hour), "two children unfinished", "parent")
	st.cancel(k2, "no need", base.Add(2*time.Second))
	st.claimNone(base.Add(10*time.Hour), "one child unfinished", "parent")
	failedAt := base.Add(5 * time.Minute)
	if n, f, err := st.s.RescueExpired(ctxT(t), failedAt, 0); err != nil || n != 0 || f != 1 {
		t.Fatalf("RescueExpired(max 0) = %d rescued %d failed %v, want k3's task failed", n, f, err)
	}
	if r := st.get(k3); r.State != batuta.RunFailed {
		t.Fatalf("k3: %s, want failed", r.State)
	}
	if ct := st.get(p).Task("fan"); !near(ct.NotBefore, failedAt) {
		t.Fatalf("parent task NotBefore %v, want the last child's finish %v", ct.NotBefore, failedAt)
	}
	if c := st.claimOne(failedAt, p, "parent"); c.Task != "fan" {
		t.Fatalf("woken: %s", c.Task)
	}
}

// testOpsChildFinishedBeforeWait: a child that finished while its parent
// task was still claimed makes the task's OutcomeWait due at once; one
// still running does not; a child finishing before a wait's RetryAt makes
// the task due at its finish.
func testOpsChildFinishedBeforeWait(t *testing.T, st *storeT) {
	p := st.create("parent", "e1", []batuta.TaskSpec{{Name: "a"}, {Name: "b"}})
	pc := st.byTask(st.claim(base, 10, "parent"))
	kidA := st.child("child", "ka", base, one, p, "a")
	kidB := st.child("child", "kb", base, one, p, "b")
	kc := map[string]batuta.Claim{}
	for _, c := range st.claim(base, 10, "child") {
		kc[c.RunID] = c
	}
	if len(kc) != 2 {
		t.Fatalf("child claims: %d, want 2", len(kc))
	}
	st.completeOK(kc[kidA], batuta.OutcomeSucceeded, nil, base.Add(time.Second))
	at := base.Add(2 * time.Second)
	st.waitOn(pc["a"], at, time.Time{}, "run "+kidA, kidA)
	st.waitOn(pc["b"], at, base.Add(time.Hour), "run "+kidB, kidB)
	if c := st.claimOne(at, p, "parent"); c.Task != "a" {
		t.Fatalf("claim after the waits: %s, want a (its child finished before it waited), not b", c.Task)
	}
	doneB := base.Add(10 * time.Second)
	st.completeOK(kc[kidB], batuta.OutcomeSucceeded, nil, doneB)
	if b := st.get(p).Task("b"); !near(b.NotBefore, doneB) {
		t.Fatalf("b's NotBefore after its child finished: %v, want %v (before its timeout)", b.NotBefore, doneB)
	}
	if c := st.claimOne(doneB, p, "parent"); c.Task != "b" {
		t.Fatalf("claim after b's child finished: %s, want b", c.Task)
	}
}

// testOpsCancelCascades: canceling a run cancels its unfinished child
// runs, and theirs, at once; unrelated runs are untouched.
func testOpsCancelCascades(t *testing.T, st *storeT) {
	p := st.create("parent", "e1", []batuta.TaskSpec{{Name: "t"}})
	pt := st.claimOne(base, p, "parent")
	kid := st.child("child", "k1", base, []batuta.TaskSpec{{Name: "u"}}, p, "t")
	other := st.create("other", "o1", one)
	cu := st.claimOne(base, kid, "child")
	grand := st.child("grand", "g1", base, []batuta.TaskSpec{{Name: "v"}, {Name: "w", Deps: []int{0}}}, kid, "u")
	st.waitOn(cu, base, time.Time{}, "run "+grand, grand)
	st.waitOn(pt, base, time.Time{}, "run "+kid, kid)
	st.cancel(p, "stop", base.Add(time.Second))
	for _, id := range []string{p, kid, grand} {
		r := st.get(id)
		if r.State != batuta.RunCanceled || r.FinishedAt.IsZero() {
			t.Fatalf("run %s after its ancestor was canceled: %s finished %v, want canceled", id, r.State, r.FinishedAt)
		}
		for _, tr := range r.Tasks {
			if tr.State != batuta.TaskCanceled {
				t.Fatalf("run %s task %s: %s, want canceled", id, tr.Name, tr.State)
			}
		}
	}
	if r := st.get(other); r.State != batuta.RunPending {
		t.Fatalf("unrelated run: %s, want pending", r.State)
	}
	st.claimOne(base.Add(time.Second), other, "other")
}

// createBatch records n one-task runs of wf through CreateRuns, created
// one millisecond apart from at, and returns their IDs in creation order.
func (st *storeT) createBatch(wf string, n int, at time.Time) []string {
	st.t.Helper()
	ids := make([]string, 0, n)
	for len(ids) < n {
		batch := make([]batuta.NewRun, 0, min(1000, n-len(ids)))
		for len(ids)+len(batch) < n && len(batch) < cap(batch) {
			i := len(ids) + len(batch)
			batch = append(batch, newRun(wf, fmt.Sprintf("%s-%d", wf, i), at.Add(time.Duration(i)*time.Millisecond), one))
		}
		res, err := st.s.CreateRuns(ctxT(st.t), batch)
		st.must(err)
		for i, r := range res {
			if !r.Created || r.ID != batch[i].ID {
				st.fatalf("CreateRuns item %d: %+v, want created %s", i, r, batch[i].ID)
			}
			ids = append(ids, r.ID)
		}
	}
	return ids
}

// testOpsRunFilter: RunFilter's fields select by states, event ID and
// subject, creation time (inclusive, exclusive), error text (any case),
// together; Ascending lists oldest first; After is a cursor in either
// order.
func testOpsRunFilter(t *testing.T, st *storeT) {
	mk := func(wf, ev, subject string, minute int, startLater bool) string {
		nr := newRun(wf, ev, base.Add(time.Duration(minute)*time.Minute), one)
		nr.Event.Subject = subject
		if startLater {
			nr.StartAt = base.Add(time.Hour)
		}
		return st.createNew(nr)
	}
	r0 := mk("a", "e0", "order-1", 0, false)
	r1 := mk("a", "e1", "order-2", 1, false)
	r2 := mk("b", "e2", "order-1", 2, true)
	r3 := mk("a", "e3", "order-1", 3, true)
	for _, c := range st.claim(base.Add(5*time.Minute), 10, "a") {
		switch c.RunID {
		case r0:
			st.completeOK(c, batuta.OutcomeSucceeded, nil, base.Add(5*time.Minute))
		case r1:
			st.complete(c, batuta.OutcomeFailed, nil, "Payment GATEWAY timeout", base.Add(5*time.Minute))
		default:
			t.Fatalf("claimed %s/%s, want r0 and r1 only", c.RunID, c.Task)
		}
	}
	st.cancel(r2, "Stopped by operator", base.Add(5*time.Minute))
	cases := []struct {
		name string
		f    batuta.RunFilter
		want []string
	}{
		{"EventID", batuta.RunFilter{EventID: "e1"}, []string{r1}},
		{"Subject", batuta.RunFilter{Subject: "order-1"}, []string{r3, r2, r0}},
		{"Subject+Workflow", batuta.RunFilter{Subject: "order-1", Workflow: "a"}, []string{r3, r0}},
		{"Created", batuta.RunFilter{CreatedAfter: base.Add(time.Minute), CreatedBefore: base.Add(3 * time.Minute)}, []string{r2, r1}},
		{"States", batuta.RunFilter{States: []batuta.RunState{batuta.RunFailed, batuta.RunCanceled}}, []string{r2, r1}},
		{"State+States", batuta.RunFilter{State: batuta.RunFailed, States: []batuta.RunState{batuta.RunFailed, batuta.RunCanceled}}, []string{r1}},
		{"StateNotInStates", batuta.RunFilter{State: batuta.RunSucceeded, States: []batuta.RunState{batuta.RunFailed}}, nil},
		{"ErrorContains", batuta.RunFilter{ErrorContains: "gateway"}, []string{r1}},
		{"ErrorContainsCase", batuta.RunFilter{ErrorContains: "STOPPED by"}, []string{r2}},
		{"ErrorContainsNone", batuta.RunFilter{ErrorContains: "nothing like it"}, nil},
		{"Ascending", batuta.RunFilter{Ascending: true}, []string{r0, r1, r2, r3}},
		{"AscendingLimit", batuta.RunFilter{Ascending: true, Limit: 2}, []string{r0, r1}},
		{"After", batuta.RunFilter{After: r2}, []string{r1, r0}},
		{"AfterAscending", batuta.RunFilter{After: r1, Ascending: true}, []string{r2, r3}},
		{"AfterLast", batuta.RunFilter{After: r0}, nil},
		{"Everything", batuta.RunFilter{Workflow: "a", Subject: "order-1", States: []batuta.RunState{batuta.RunSucceeded, batuta.RunPending},
			CreatedAfter: base, CreatedBefore: base.Add(4 * time.Minute), Ascending: true, After: r0}, []string{r3}},
	}
	for _, tc := range cases {
		got := runIDs(st.list(tc.f))
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: ListRuns = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// testOpsRunFilterPaging: paging with After and Limit through 250 runs of
// a workflow (among others), newest first and oldest first, finds each
// run exactly once, in order; Limit 0 means 100.
func testOpsRunFilterPaging(t *testing.T, st *storeT) {
	ids := st.createBatch("paged", 250, base)
	st.createBatch("noise", 30, base)
	if n := len(st.list(batuta.RunFilter{Workflow: "paged"})); n != 100 {
		t.Fatalf("ListRuns with no Limit = %d runs, want the default 100", n)
	}
	for _, asc := range []bool{false, true} {
		seen := map[string]bool{}
		var order []string
		after := ""
		for pages := 0; ; pages++ {
			if pages > 40 {
				t.Fatalf("ascending=%v: more than 40 pages of 7 for 250 runs", asc)
			}
			page := st.list(batuta.RunFilter{Workflow: "paged", Ascending: asc, After: after, Limit: 7})
			if len(page) > 7 {
				t.Fatalf("ascending=%v: page of %d, want at most 7", asc, len(page))
			}
			for _, r := range page {
				if r.Workflow != "paged" || seen[r.ID] {
					t.Fatalf("ascending=%v: run %s (workflow %s) twice or from the wrong workflow", asc, r.ID, r.Workflow)
				}
				seen[r.ID] = true
				order = append(order, r.ID)
			}
			if len(page) < 7 {
				break
			}
			after = page[len(page)-1].ID
		}
		if len(order) != 250 {
			t.Fatalf("ascending=%v: paged through %d runs, want 250", asc, len(order))
		}
		for i, id := range order {
			want := ids[len(ids)-1-i]
			if asc {
				want = ids[i]
			}
			if id != want {
				t.Fatalf("ascending=%v: run %d of the listing is %s, want %s", asc, i, id, want)
			}
		}
	}
}

// testOpsRunFilterLimitCap: a Limit over 10000 lists 10000 runs.
func testOpsRunFilterLimitCap(t *testing.T, st *storeT) {
	st.createBatch("many", 10005, base)
	if n := len(st.list(batuta.RunFilter{Limit: 20000})); n != 10000 {
		t.Fatalf("ListRuns(Limit 20000) over 10005 runs = %d, want the cap 10000", n)
	}
	if n := len(st.list(batuta.RunFilter{Limit: 10000, Ascending: true})); n != 10000 {
		t.Fatalf("ListRuns(Limit 10000) = %d, want 10000", n)
	}
}

func (st *storeT) retry(id string, p batuta.RetryParams) batuta.RetryResult {
	st.t.Helper()
	res, err := st.s.RetryRun(ctxT(st.t), id, p)
	if err != nil {
		st.fatalf("RetryRun(%s, %+v): %v", id, p, err)
	}
	return res
}

func attemptNumbers(tr *batuta.TaskRun) []int {
	var out []int
	for _, a := range tr.Attempts {
		out = append(out, a.Number)
	}
	return out
}

// testOpsRetryRun: RetryRun reopens a failed run: its failed and
// upstream_failed tasks and everything downstream (a compensation that ran
// because of the failure included) become pending with a fresh retry
// budget and their attempt records kept; the others keep their state and
// output; the run is pending with Retries 1, no error, its start kept and
// the new deadline, and finishes again once the reset tasks complete.
func testOpsRetryRun(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{
		{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{0}},
		{Name: "d", Deps: []int{1, 2}}, {Name: "comp", Deps: []int{1}},
	})
	st.completeOK(st.claimOne(base, id), batuta.OutcomeSucceeded, raw(`"A"`), base)
	cs := st.byTask(st.claim(base, 10))
	st.completeWith(cs["b"], batuta.Completion{Outcome: batuta.OutcomeRetry, Error: "flaky", StartedAt: base, RetryAt: base.Add(time.Second)})
	st.completeOK(cs["c"], batuta.OutcomeSucceeded, raw(`"C"`), base)
	b := st.claimOne(base.Add(time.Second), id)
	if b.Attempt != 2 {
		t.Fatalf("b's second claim: attempt %d", b.Attempt)
	}
	st.complete(b, batuta.OutcomeFailed, nil, "down", base.Add(time.Second))
	cs = st.byTask(st.claim(base.Add(time.Second), 10))
	st.completeWith(cs["d"], batuta.Completion{Outcome: batuta.OutcomeUpstreamFailed, Error: "b failed", StartedAt: base.Add(time.Second)})
	res := st.completeOK(cs["comp"], batuta.OutcomeSucceeded, raw(`"undone"`), base.Add(2*time.Second))
	if res.RunFinished != batuta.RunFailed {
		t.Fatalf("first run: %q, want failed", res.RunFinished)
	}
	before := st.get(id)

	now, deadline := base.Add(time.Hour), base.Add(2*time.Hour)
	rr := st.retry(id, batuta.RetryParams{Now: now, Deadline: deadline})
	if fmt.Sprint(rr.Reset) != "[b d comp]" {
		t.Fatalf("Reset = %v, want [b d comp] (declaration order)", rr.Reset)
	}
	r := st.get(id)
	if r.State != batuta.RunPending || r.Retries != 1 || r.Error != "" || !r.FinishedAt.IsZero() ||
		!near(r.StartedAt, before.StartedAt) || !near(r.Deadline, deadline) {
		t.Fatalf("reopened run: state %s retries %d error %q finished %v started %v deadline %v", r.State, r.Retries, r.Error, r.FinishedAt, r.StartedAt, r.Deadline)
	}
	for _, name := range []string{"a", "c"} {
		if tr := r.Task(name); tr.State != batuta.TaskSucceeded || !sameJSON(tr.Output, `"`+strings.ToUpper(name)+`"`) || len(tr.Attempts) != 1 {
			t.Fatalf("task %s not reset: %+v, want succeeded with its output and attempt", name, *tr)
		}
	}
	for _, name := range []string{"b", "d", "comp"} {
		tr := r.Task(name)
		if tr.State != batuta.TaskPending || tr.Output != nil || tr.Error != "" || len(tr.Attempts) != len(before.Task(name).Attempts) {
			t.Fatalf("reset task %s: %+v, want pending, no output or error, attempts kept", name, *tr)
		}
	}
	b = st.claimOne(now, id)
	if b.Task != "b" || b.Attempt != 1 || !near(b.RunDeadline, deadline) || len(b.Upstream) != 1 || !sameJSON(b.Upstream[0].Output, `"A"`) {
		t.Fatalf("claim after the retry: %s attempt %d deadline %v upstream %+v, want b, attempt 1 (a fresh budget), the new deadline, a's output", b.Task, b.Attempt, b.RunDeadline, b.Upstream)
	}
	if r := st.get(id); r.State != batuta.RunRunning || !near(r.StartedAt, before.StartedAt) {
		t.Fatalf("run after the claim: %s started %v, want running, started at first %v", r.State, r.StartedAt, before.StartedAt)
	}
	st.claimNone(now.Add(time.Hour), "d and comp wait for b again")
	if res := st.completeOK(b, batuta.OutcomeSucceeded, raw(`"B"`), now); res.Ready != 2 {
		t.Fatalf("b done: ready %d, want 2 (d and comp)", res.Ready)
	}
	cs = st.byTask(st.claim(now, 10))
	if len(cs) != 2 || cs["d"].Upstream == nil || cs["comp"].Upstream == nil {
		t.Fatalf("after b: %v, want d and comp", claimNames(st.claim(now, 10)))
	}
	if cs["comp"].Upstream[0].State != batuta.TaskSucceeded {
		t.Fatalf("comp's upstream b: %s, want succeeded (decided again)", cs["comp"].Upstream[0].State)
	}
	st.completeWith(cs["comp"], batuta.Completion{Outcome: batuta.OutcomeSkipped, Error: "b succeeded", StartedAt: now})
	res = st.completeOK(cs["d"], batuta.OutcomeSucceeded, nil, now.Add(time.Minute))
	r = st.get(id)
	if res.RunFinished != batuta.RunSucceeded || r.State != batuta.RunSucceeded || !near(r.FinishedAt, now.Add(time.Minute)) || r.Retries != 1 {
		t.Fatalf("run after the retried tasks: %q %s finished %v retries %d", res.RunFinished, r.State, r.FinishedAt, r.Retries)
	}
	if got := attemptNumbers(r.Task("b")); fmt.Sprint(got) != "[1 2 1]" {
		t.Fatalf("b's attempts: %v, want [1 2 1] (old ones kept, new ones numbered from 1)", got)
	}
	if tr := r.Task("comp"); tr.State != batuta.TaskSkipped || len(tr.Attempts) != 1 {
		t.Fatalf("comp: %+v, want skipped this time, its first attempt kept", *tr)
	}
	if _, err := st.s.RetryRun(ctxT(t), id, batuta.RetryParams{Now: now}); !errors.Is(err, batuta.ErrNotRetryable) {
		t.Fatalf("RetryRun of the succeeded run: %v, want ErrNotRetryable", err)
	}
}

// testOpsRetryRunFrom: with From, the task and its downstream tasks are
// reset whatever their state, which retries a succeeded run; From naming
// no task, an unfinished run and an unknown run are refused, changing
// nothing.
func testOpsRetryRunFrom(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "x"}, {Name: "y", Deps: []int{0}}, {Name: "z", Deps: []int{1}}, {Name: "w", Deps: []int{0}}})
	if _, err := st.s.RetryRun(ctxT(t), newID(base), batuta.RetryParams{Now: base}); !errors.Is(err, batuta.ErrRunNotFound) {
		t.Fatalf("RetryRun of no run: %v, want ErrRunNotFound", err)
	}
	for _, from := range []string{"", "y"} {
		if _, err := st.s.RetryRun(ctxT(t), id, batuta.RetryParams{From: from, Now: base}); !errors.Is(err, batuta.ErrNotRetryable) {
			t.Fatalf("RetryRun(From %q) of an unfinished run: %v, want ErrNotRetryable", from, err)
		}
	}
	now := base
	for i := 0; i < 4; i++ {
		for _, c := range st.claim(now, 10) {
			st.completeOK(c, batuta.OutcomeSucceeded, raw(fmt.Sprintf("%q", c.Task+"1")), now)
		}
	}
	if r := st.get(id); r.State != batuta.RunSucceeded {
		t.Fatalf("run: %s", r.State)
	}
	if _, err := st.s.RetryRun(ctxT(t), id, batuta.RetryParams{From: "nope", Now: now}); !errors.Is(err, batuta.ErrNotRetryable) {
		t.Fatalf("RetryRun(From nope): %v, want ErrNotRetryable", err)
	}
	if r := st.get(id); r.State != batuta.RunSucceeded || r.Retries != 0 || taskState(r, "y") != batuta.TaskSucceeded {
		t.Fatalf("after refused retries: %s retries %d y %s, want unchanged", r.State, r.Retries, taskState(r, "y"))
	}
	for round := 1; round <= 2; round++ {
		now = base.Add(time.Duration(round) * time.Hour)
		if rr := st.retry(id, batuta.RetryParams{From: "y", Now: now}); fmt.Sprint(rr.Reset) != "[y z]" {
			t.Fatalf("round %d: Reset %v, want [y z]", round, rr.Reset)
		}
		r := st.get(id)
		if r.Retries != round || !r.Deadline.IsZero() || !sameJSON(r.Task("x").Output, `"x1"`) || !sameJSON(r.Task("w").Output, `"w1"`) {
			t.Fatalf("round %d: retries %d deadline %v x %v w %v", round, r.Retries, r.Deadline, r.Task("x").Output, r.Task("w").Output)
		}
		c := st.claimOne(now, id)
		if c.Task != "y" || c.Attempt != 1 {
			t.Fatalf("round %d: claim %s attempt %d, want y attempt 1", round, c.Task, c.Attempt)
		}
		st.completeOK(c, batuta.OutcomeSucceeded, raw(`"y2"`), now)
		c = st.claimOne(now, id)
		if res := st.completeOK(c, batuta.OutcomeSucceeded, nil, now); c.Task != "z" || res.RunFinished != batuta.RunSucceeded {
			t.Fatalf("round %d: %s finished %q, want z finishing the run", round, c.Task, res.RunFinished)
		}
	}
	if got := attemptNumbers(st.get(id).Task("y")); fmt.Sprint(got) != "[1 1 1]" {
		t.Fatalf("y's attempts: %v, want [1 1 1]", got)
	}
}

// testOpsRetryRunCanceled: a canceled run is retried from its canceled
// tasks; a reset task runs once and its retry backoff holds (no leftover of
// its first, canceled life makes it claimable early). A canceled run
// whose tasks all succeeded has nothing to retry (ErrNotRetryable).
func testOpsRetryRunCanceled(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "p"}, {Name: "q"}, {Name: "r", Deps: []int{0, 1}}})
	cs1 := st.claim(base, 1) // p or q; the other is ready, never claimed
	if len(cs1) != 1 {
		t.Fatalf("claim 1: %s", claimRuns(cs1))
	}
	first := cs1[0]
	st.cancel(id, "operator", base)
	st.completeWith(first, batuta.Completion{Outcome: batuta.OutcomeCanceled, Error: "run canceled", StartedAt: base})
	r := st.get(id)
	if r.State != batuta.RunCanceled {
		t.Fatalf("canceled run: %s", r.State)
	}
	now := base.Add(time.Minute)
	if rr := st.retry(id, batuta.RetryParams{Now: now}); fmt.Sprint(rr.Reset) != "[p q r]" {
		t.Fatalf("Reset = %v, want [p q r]", rr.Reset)
	}
	if r := st.get(id); r.State != batuta.RunPending || r.Error != "" {
		t.Fatalf("reopened: %s error %q", r.State, r.Error)
	}
	// One claim at a time, so that a leftover entry of q would be
	// claimed after q's retry was scheduled.
	seen := map[string]bool{}
	for i := 0; i < 2; i++ {
		cs := st.claim(now, 1)
		if len(cs) != 1 || seen[cs[0].Task] || cs[0].Attempt != 1 {
			t.Fatalf("claim %d after the retry: %s, want p and q once each at attempt 1", i, claimNames(cs))
		}
		seen[cs[0].Task] = true
		switch cs[0].Task {
		case "p":
			st.completeOK(cs[0], batuta.OutcomeSucceeded, nil, now)
		case "q":
			st.completeWith(cs[0], batuta.Completion{Outcome: batuta.OutcomeRetry, Error: "again", StartedAt: now, RetryAt: now.Add(time.Minute)})
		default:
			t.Fatalf("claimed %s before p and q finished", cs[0].Task)
		}
	}
	st.claimNone(now.Add(59*time.Second), "q's retry is due in a minute")
	q := st.claimOne(now.Add(time.Minute), id)
	if q.Task != "q" || q.Attempt != 2 {
		t.Fatalf("q: %s attempt %d", q.Task, q.Attempt)
	}
	st.completeOK(q, batuta.OutcomeSucceeded, nil, now.Add(time.Minute))
	if res := st.completeOK(st.claimOne(now.Add(time.Minute), id), batuta.OutcomeSucceeded, nil, now.Add(time.Minute)); res.RunFinished != batuta.RunSucceeded {
		t.Fatalf("run after r: %q, want succeeded", res.RunFinished)
	}

	id2 := st.create("wf", "e2", one)
	c := st.claimOne(base, id2)
	st.cancel(id2, "late", base)
	st.completeOK(c, batuta.OutcomeSucceeded, nil, base)
	if r := st.get(id2); r.State != batuta.RunCanceled {
		t.Fatalf("run canceled while its only task succeeded: %s", r.State)
	}
	if _, err := st.s.RetryRun(ctxT(t), id2, batuta.RetryParams{Now: now}); !errors.Is(err, batuta.ErrNotRetryable) {
		t.Fatalf("RetryRun with nothing to reset: %v, want ErrNotRetryable", err)
	}
}

// testOpsRetryRunConcurrency: a retried run re-enters its workflow
// concurrency group as a new run would: with Queue it waits for room.
func testOpsRetryRunConcurrency(t *testing.T, st *storeT) {
	k := &batuta.ConcurrencySpec{Key: "wf/k", Max: 1}
	na := newRun("wf", "a", base, one)
	na.Concurrency = k
	a := st.createNew(na)
	st.complete(st.claimOne(base, a), batuta.OutcomeFailed, nil, "boom", base)
	nb := newRun("wf", "b", base.Add(time.Second), one)
	nb.Concurrency = k
	b := st.createNew(nb)
	cb := st.claimOne(base.Add(time.Second), b)
	st.retry(a, batuta.RetryParams{Now: base.Add(2 * time.Second)})
	st.claimNone(base.Add(time.Hour), "the retried run waits for its group's slot")
	st.completeOK(cb, batuta.OutcomeSucceeded, nil, base.Add(time.Hour))
	if res := st.completeOK(st.claimOne(base.Add(time.Hour), a), batuta.OutcomeSucceeded, nil, base.Add(time.Hour)); res.RunFinished != batuta.RunSucceeded {
		t.Fatalf("retried run: %q, want succeeded", res.RunFinished)
	}
	nc := newRun("wf", "c", base.Add(time.Hour), one)
	nc.Concurrency = k
	st.claimOne(base.Add(time.Hour), st.createNew(nc)) // the slot is free again
}

// finishAt claims the only task of run id and completes it with oc at at.
func (st *storeT) finishAt(id, wf string, oc batuta.Outcome, at time.Time) {
	st.t.Helper()
	c := st.claimOne(at, id, wf)
	st.completeWith(c, batuta.Completion{Outcome: oc, Error: string(oc), StartedAt: at, FinishedAt: at})
}

// testOpsWorkflowStats: WorkflowStats counts the runs finished in [since,
// now) by state with duration percentiles, and the unfinished runs by
// running, pending (due, with the oldest's creation) and waiting; it
// leaves out workflows with nothing to report and sorts by workflow.
func testOpsWorkflowStats(t *testing.T, st *storeT) {
	since, now := base, base.Add(2*time.Hour)
	if ws, err := st.s.WorkflowStats(ctxT(t), since, now); err != nil || len(ws) != 0 {
		t.Fatalf("WorkflowStats of an empty store = %+v, %v; want none", ws, err)
	}
	mk := func(wf, ev string, created time.Time) string {
		return st.createNew(newRun(wf, ev, created, one))
	}
	// alpha: 20 runs finished in the window, taking 1s..20s; 4 failed.
	for i := 1; i <= 20; i++ {
		created := base.Add(time.Duration(i) * time.Minute)
		id := mk("alpha", fmt.Sprint("a", i), created)
		oc := batuta.OutcomeSucceeded
		if i%5 == 0 {
			oc = batuta.OutcomeFailed
		}
		st.finishAt(id, "alpha", oc, created.Add(time.Duration(i)*time.Second))
	}
	// Finished before the window: left out, and "old" with it.
	st.finishAt(mk("alpha", "a-old", base.Add(-2*time.Hour)), "alpha", batuta.OutcomeFailed, base.Add(-time.Hour))
	st.finishAt(mk("old", "o", base.Add(-2*time.Hour)), "old", batuta.OutcomeSucceeded, base.Add(-time.Hour))
	// gamma: one run finished at since (in), one at now (out).
	st.finishAt(mk("gamma", "g0", base.Add(-10*time.Second)), "gamma", batuta.OutcomeSucceeded, since)
	st.finishAt(mk("gamma", "g1", base.Add(time.Hour)), "gamma", batuta.OutcomeSucceeded, now)
	// beta: one canceled in the window (5s), one running, one waiting
	// after an OutcomeWait, two pending and due, one pending until later.
	b0 := mk("beta", "b0", base.Add(time.Minute))
	st.cancel(b0, "no", base.Add(time.Minute+5*time.Second))
	b1 := mk("beta", "b1", base.Add(2*time.Minute))
	b2 := mk("beta", "b2", base.Add(3*time.Minute))
	mk("beta", "b3", base.Add(5*time.Minute))
	mk("beta", "b4", base.Add(10*time.Minute))
	nb := newRun("beta", "b5", base.Add(11*time.Minute), one)
	nb.StartAt = now.Add(time.Hour)
	st.createNew(nb)
	cs := st.claim(base.Add(time.Hour), 2, "beta")
	if len(cs) != 2 || cs[0].RunID == cs[1].RunID || (cs[0].RunID != b1 && cs[0].RunID != b2) || (cs[1].RunID != b1 && cs[1].RunID != b2) {
		t.Fatalf("beta claims: %s, want b1 and b2 (the oldest due)", claimRuns(cs))
	}
	for _, c := range cs {
		if c.RunID == b2 {
			st.waitOn(c, base.Add(time.Hour), time.Time{}, "signal", "")
		}
	}

	ws, err := st.s.WorkflowStats(ctxT(t), since, now)
	st.must(err)
	if len(ws) != 3 || ws[0].Workflow != "alpha" || ws[1].Workflow != "beta" || ws[2].Workflow != "gamma" {
		t.Fatalf("WorkflowStats = %+v, want alpha, beta, gamma in order (old has nothing to report)", ws)
	}
	a, b, g := ws[0], ws[1], ws[2]
	if a.Succeeded != 16 || a.Failed != 4 || a.Canceled != 0 || a.Running != 0 || a.Pending != 0 || a.Waiting != 0 || !a.OldestPending.IsZero() {
		t.Fatalf("alpha: %+v, want 16 succeeded, 4 failed, nothing unfinished", a)
	}
	if a.DurationP50 < 10*time.Second || a.DurationP50 > 11*time.Second || a.DurationP95 < 19*time.Second || a.DurationP95 > 20*time.Second {
		t.Fatalf("alpha durations: p50 %v p95 %v, want about 10s and 19s (1s..20s)", a.DurationP50, a.DurationP95)
	}
	nearD := func(d, want time.Duration) bool { return d > want-time.Millisecond && d < want+time.Millisecond }
	if b.Canceled != 1 || b.Succeeded != 0 || b.Failed != 0 || !nearD(b.DurationP50, 5*time.Second) || !nearD(b.DurationP95, 5*time.Second) {
		t.Fatalf("beta finished: %+v, want 1 canceled taking 5s", b)
	}
	// b2 only waits: a store may count it running or waiting.
	if b.Pending != 2 || !near(b.OldestPending, base.Add(5*time.Minute)) || b.Running < 1 || b.Waiting < 1 || b.Running+b.Waiting != 3 {
		t.Fatalf("beta unfinished: %+v, want 2 pending (oldest created at +5m), 1 running, 1 waiting to start and b2 running or waiting", b)
	}
	if g.Succeeded != 1 || !nearD(g.DurationP50, 10*time.Second) || g.Running+g.Pending+g.Waiting != 0 {
		t.Fatalf("gamma: %+v, want the run finished at since (10s), not the one at now", g)
	}
	// A window that ends before anything finished: only unfinished runs.
	ws, err = st.s.WorkflowStats(ctxT(t), base.Add(-30*time.Minute), base.Add(-20*time.Minute))
	st.must(err)
	if len(ws) != 1 || ws[0].Workflow != "beta" || ws[0].Canceled != 0 || ws[0].DurationP50 != 0 || ws[0].Running+ws[0].Pending+ws[0].Waiting != 5 {
		t.Fatalf("WorkflowStats of an empty window = %+v, want beta's 5 unfinished runs only", ws)
	}
}

// testOpsReopen (durable stores): waits, buffered signals, child links and
// retries survive a restart, and work after it.
func testOpsReopen(t *testing.T, st *storeT) {
	p := st.create("parent", "p", []batuta.TaskSpec{{Name: "call"}, {Name: "w", Signal: "go"}})
	pc := st.byTask(st.claim(base, 10, "parent"))
	kid := st.child("child", "k", base, one, p, "call")
	st.waitOn(pc["call"], base, time.Time{}, "run "+kid, kid)
	st.waitOn(pc["w"], base, base.Add(time.Hour), "signal go", "")
	q := st.create("sig", "q", []batuta.TaskSpec{{Name: "s", Signal: "s"}})
	st.sendOK(q, "s", raw(`{"x":1}`), base)
	f := st.create("fail", "f", one)
	st.complete(st.claimOne(base, f, "fail"), batuta.OutcomeFailed, nil, "boom", base)
	st.retry(f, batuta.RetryParams{Now: base})

	st.s = st.suite.Reopen(t, st.s)

	r := st.get(p)
	if c := r.Task("call"); c.Child != kid || c.WaitingFor != "run "+kid || !near(c.WaitingSince, base) || c.State != batuta.TaskPending {
		t.Fatalf("waiting parent task after reopen: %+v", *c)
	}
	if w := r.Task("w"); !near(w.NotBefore, base.Add(time.Hour)) || w.WaitingFor != "signal go" {
		t.Fatalf("timed wait after reopen: %+v", *w)
	}
	if k := st.get(kid); k.Parent == nil || k.Parent.RunID != p || k.Parent.Task != "call" {
		t.Fatalf("child's Parent after reopen: %+v", k.Parent)
	}
	if nd := st.nextDue(base, "parent"); !near(nd, base.Add(time.Hour)) {
		t.Fatalf("NextDue after reopen = %v, want the timed wait's %v", nd, base.Add(time.Hour))
	}
	if fr := st.get(f); fr.Retries != 1 || fr.State != batuta.RunPending {
		t.Fatalf("retried run after reopen: %s retries %d", fr.State, fr.Retries)
	}
	c := st.claimOne(base, q, "sig")
	if c.Signal == nil || !sameJSON(c.Signal.Data, `{"x":1}`) {
		t.Fatalf("buffered signal after reopen: %+v", c.Signal)
	}
	st.claimNone(base.Add(time.Minute), "the parent's tasks wait", "parent")
	st.completeOK(st.claimOne(base.Add(time.Minute), kid, "child"), batuta.OutcomeSucceeded, nil, base.Add(time.Minute))
	if c := st.claimOne(base.Add(time.Minute), p, "parent"); c.Task != "call" {
		t.Fatalf("woken after reopen: %s, want call", c.Task)
	}
	if res := st.sendOK(p, "go", raw(`"now"`), base.Add(time.Minute)); !res.Delivered || res.Task != "w" {
		t.Fatalf("signal after reopen: %+v, want delivered to w", res)
	}
}

// testOpsRetryRunChild: a retried child run is unfinished again for its
// parent's task: the task's wait is not due at once while it runs, and is
// woken when it finishes again.
func testOpsRetryRunChild(t *testing.T, st *storeT) {
	p := st.create("parent", "e1", []batuta.TaskSpec{{Name: "call"}})
	c := st.claimOne(base, p, "parent")
	kid := st.child("child", "k1", base, one, p, "call")
	st.waitOn(c, base, time.Time{}, "run "+kid, kid)
	st.complete(st.claimOne(base, kid, "child"), batuta.OutcomeFailed, nil, "boom", base.Add(time.Second))
	st.retry(kid, batuta.RetryParams{Now: base.Add(2 * time.Second)})
	c = st.claimOne(base.Add(2*time.Second), p, "parent") // woken by the first finish
	st.waitOn(c, base.Add(2*time.Second), time.Time{}, "run "+kid, kid)
	st.claimNone(base.Add(time.Hour), "the retried child runs again", "parent")
	done := base.Add(2 * time.Hour)
	st.completeOK(st.claimOne(done, kid, "child"), batuta.OutcomeSucceeded, nil, done)
	if c := st.claimOne(done, p, "parent"); c.Task != "call" {
		t.Fatalf("woken after the retried child finished: %s", c.Task)
	}
}
