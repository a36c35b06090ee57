package batutatest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// StoreSuite configures TestStore.
type StoreSuite struct {
	// New returns a fresh, empty Store for one subtest. Register cleanup
	// with t.Cleanup. Required.
	New func(t *testing.T) batuta.Store
	// Reopen, for durable stores, closes s and opens the same database
	// again, as a restarted process would. Nil skips the restart tests.
	Reopen func(t *testing.T, s batuta.Store) batuta.Store
}

// TestStore runs the Store conformance suite: the contract every Store
// implementation keeps. Durable stores are given outputs as
// json.RawMessage, as the orchestrator does, and must give them back as
// JSON; the in-memory store keeps whatever value it is given.
//
//	func TestConformance(t *testing.T) {
//		batutatest.TestStore(t, batutatest.StoreSuite{New: func(t *testing.T) batuta.Store { ... }})
//	}
func TestStore(t *testing.T, suite StoreSuite) {
	if suite.New == nil {
		t.Fatal("batutatest: StoreSuite.New is nil")
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, st *storeT)
	}{
		{"CreateGetRoundTrip", testCreateGet},
		{"UnknownRun", testUnknownRun},
		{"DedupeByEventID", testDedupe},
		{"DedupeConcurrent", testDedupeConcurrent},
		{"ClaimFollowsDependencies", testClaimDeps},
		{"ClaimLimitAndNoDoubleClaim", testClaimLimit},
		{"ConcurrentClaimers", testConcurrentClaimers},
		{"ClaimFiltersWorkflows", testClaimWorkflows},
		{"FencedCompletion", testFencing},
		{"RetryAndSnooze", testRetrySnooze},
		{"SnoozesCoalesce", testSnoozesCoalesce},
		{"Release", testRelease},
		{"RunStates", testRunStates},
		{"FailedUpstreamStillReady", testFailedUpstream},
		{"UpstreamFailedState", testUpstreamFailed},
		{"UpstreamFailedFailsRun", testUpstreamFailedFailsRun},
		{"FireEarly", testFireEarly},
		{"FireEarlyOnceInBatch", testFireEarlyBatch},
		{"FireEarlyCancel", testFireEarlyCancel},
		{"OutputsRoundTrip", testOutputs},
		{"LeasesAndRescue", testRescue},
		{"RescueLimit", testRescueLimit},
		{"Cancel", testCancel},
		{"MaxActive", testMaxActive},
		{"ListRuns", testListRuns},
		{"Prune", testPrune},
		{"Ticks", testTicks},
		{"LargeAndUnicodePayloads", testPayloads},
		{"BatchCompletion", testBatchCompletion},
	}
	tests = append(tests, flowCases...)
	tests = append(tests, opsCases...)
	tests = append(tests, fusedCases...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, &storeT{t: t, s: suite.New(t), suite: suite})
		})
	}
	if suite.Reopen != nil {
		t.Run("SurvivesReopen", func(t *testing.T) {
			testReopen(t, &storeT{t: t, s: suite.New(t), suite: suite})
		})
		t.Run("FlowSurvivesReopen", func(t *testing.T) {
			testFlowReopen(t, &storeT{t: t, s: suite.New(t), suite: suite})
		})
		t.Run("OpsSurvivesReopen", func(t *testing.T) {
			testOpsReopen(t, &storeT{t: t, s: suite.New(t), suite: suite})
		})
	}
}

type storeT struct {
	t     *testing.T
	s     batuta.Store
	suite StoreSuite
	seq   int
}

var base = time.Date(2026, 3, 29, 0, 30, 0, 0, time.UTC)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (st *storeT) fatalf(format string, args ...any) {
	st.t.Helper()
	st.t.Fatalf(format, args...)
}

func (st *storeT) must(err error) {
	st.t.Helper()
	if err != nil {
		st.t.Fatalf("unexpected error: %v", err)
	}
}

var runSeq struct {
	sync.Mutex
	n int
}

// newID returns a time-ordered, unique run ID shaped like a UUIDv7.
func newID(at time.Time) string {
	runSeq.Lock()
	runSeq.n++
	n := runSeq.n
	runSeq.Unlock()
	ms := uint64(at.UnixMilli())
	return fmt.Sprintf("%08x-%04x-7%03x-8%03x-%012x", ms>>16, ms&0xffff, n>>12&0xfff, n&0xfff, uint64(n)*7919+uint64(time.Now().UnixNano()&0xffffff))
}

// diamond: a -> (b, c) -> d
var diamond = []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{0}}, {Name: "d", Deps: []int{1, 2}}}

func (st *storeT) create(wf, eventID string, tasks []batuta.TaskSpec) string {
	st.t.Helper()
	st.seq++
	nr := batuta.NewRun{
		ID: newID(base.Add(time.Duration(st.seq) * time.Millisecond)), Workflow: wf,
		Event:     batuta.Event{ID: eventID, Source: "test", Type: "t", Time: base, Data: []byte(`{"n":1}`)},
		Tasks:     tasks,
		CreatedAt: base.Add(time.Duration(st.seq) * time.Millisecond),
	}
	id, created, err := st.s.CreateRun(ctxT(st.t), nr)
	st.must(err)
	if !created || id != nr.ID {
		st.fatalf("CreateRun(%s) = %q, created=%v; want %q, true", eventID, id, created, nr.ID)
	}
	return id
}

func (st *storeT) claim(now time.Time, limit int, wfs ...string) []batuta.Claim {
	st.t.Helper()
	cs, err := st.s.ClaimTasks(ctxT(st.t), batuta.ClaimParams{
		Owner: "w1", Workflows: wfs, Limit: limit, Now: now, LeaseUntil: now.Add(time.Minute),
	})
	st.must(err)
	return cs
}

func claimNames(cs []batuta.Claim) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Task)
	}
	sort.Strings(out)
	return out
}

func (st *storeT) complete(c batuta.Claim, oc batuta.Outcome, output any, errMsg string, at time.Time) batuta.CompleteResult {
	st.t.Helper()
	res, err := st.s.CompleteTasks(ctxT(st.t), []batuta.Completion{{
		ClaimRef: c.Ref(), Outcome: oc, Attempt: c.Attempt, Output: output, Error: errMsg,
		StartedAt: at, FinishedAt: at,
	}})
	st.must(err)
	if len(res) != 1 {
		st.fatalf("CompleteTasks returned %d results for 1 completion", len(res))
	}
	return res[0]
}

func (st *storeT) completeOK(c batuta.Claim, oc batuta.Outcome, output any, at time.Time) batuta.CompleteResult {
	st.t.Helper()
	r := st.complete(c, oc, output, "", at)
	if r.Err != nil {
		st.fatalf("complete %s/%s: %v", c.RunID, c.Task, r.Err)
	}
	return r
}

func (st *storeT) get(id string) *batuta.Run {
	st.t.Helper()
	r, err := st.s.GetRun(ctxT(st.t), id)
	st.must(err)
	return r
}

func taskState(r *batuta.Run, name string) batuta.TaskState {
	if t := r.Task(name); t != nil {
		return t.State
	}
	return "missing"
}

func testCreateGet(t *testing.T, st *storeT) {
	ev := batuta.Event{
		ID: "ev-1", Source: "postgres/public.orders", Type: "orders.insert", Subject: "42",
		Time: base.Add(1500 * time.Microsecond), Data: []byte(`{"id":42,"customer":"ana"}`),
		Metadata: map[string]string{"traceparent": "00-abc-def-01", "k": "v"},
	}
	nr := batuta.NewRun{ID: newID(base), Workflow: "wf", Event: ev, Tasks: diamond, CreatedAt: base, Deadline: base.Add(time.Hour)}
	id, created, err := st.s.CreateRun(ctxT(t), nr)
	st.must(err)
	if !created || id != nr.ID {
		t.Fatalf("CreateRun = %q, %v; want %q, true", id, created, nr.ID)
	}
	r := st.get(id)
	if r.ID != id || r.Workflow != "wf" || r.State != batuta.RunPending {
		t.Fatalf("GetRun = id %q workflow %q state %q", r.ID, r.Workflow, r.State)
	}
	if !r.CreatedAt.Equal(base) || !r.Deadline.Equal(base.Add(time.Hour)) {
		t.Fatalf("times: created %v deadline %v", r.CreatedAt, r.Deadline)
	}
	if r.Finished() {
		t.Fatal("new run reports Finished")
	}
	e := r.Event
	if e.ID != ev.ID || e.Source != ev.Source || e.Type != ev.Type || e.Subject != ev.Subject ||
		!e.Time.Equal(ev.Time) || !bytes.Equal(e.Data, ev.Data) || !reflect.DeepEqual(e.Metadata, ev.Metadata) {
		t.Fatalf("event did not round-trip:\n got %+v\nwant %+v", e, ev)
	}
	if len(r.Tasks) != 4 {
		t.Fatalf("run has %d tasks, want 4", len(r.Tasks))
	}
	for i, name := range []string{"a", "b", "c", "d"} {
		if r.Tasks[i].Name != name || r.Tasks[i].State != batuta.TaskPending {
			t.Fatalf("task %d = %q %q, want %q pending (declaration order)", i, r.Tasks[i].Name, r.Tasks[i].State, name)
		}
	}
	if got := r.Task("d").Deps; !reflect.DeepEqual(got, []string{"b", "c"}) {
		t.Fatalf("deps of d = %v, want [b c]", got)
	}
	found, err := st.s.FindRun(ctxT(t), "wf", "ev-1")
	st.must(err)
	if found.ID != id {
		t.Fatalf("FindRun = %q, want %q", found.ID, id)
	}
	cs := st.claim(base, 10)
	if len(cs) != 1 || !cs[0].RunDeadline.Equal(base.Add(time.Hour)) || cs[0].Event.ID != "ev-1" || !bytes.Equal(cs[0].Event.Data, ev.Data) {
		t.Fatalf("claim did not carry the run's event and deadline: %+v", cs)
	}
}

func testUnknownRun(t *testing.T, st *storeT) {
	if _, err := st.s.GetRun(ctxT(t), newID(base)); !errors.Is(err, batuta.ErrRunNotFound) {
		t.Fatalf("GetRun(unknown) = %v, want ErrRunNotFound", err)
	}
	if _, err := st.s.FindRun(ctxT(t), "wf", "nope"); !errors.Is(err, batuta.ErrRunNotFound) {
		t.Fatalf("FindRun(unknown) = %v, want ErrRunNotFound", err)
	}
	if _, err := st.s.CancelRun(ctxT(t), newID(base), "x", base); !errors.Is(err, batuta.ErrRunNotFound) {
		t.Fatalf("CancelRun(unknown) = %v, want ErrRunNotFound", err)
	}
}

func testDedupe(t *testing.T, st *storeT) {
	id := st.create("wf", "ev-dup", diamond)
	nr := batuta.NewRun{ID: newID(base), Workflow: "wf", Event: batuta.Event{ID: "ev-dup", Time: base}, Tasks: diamond, CreatedAt: base}
	got, created, err := st.s.CreateRun(ctxT(t), nr)
	st.must(err)
	if created || got != id {
		t.Fatalf("duplicate CreateRun = %q, created=%v; want existing %q, false", got, created, id)
	}
	// The duplicate wrote nothing: its ID is unknown and only one run's tasks are claimable.
	if _, err := st.s.GetRun(ctxT(t), nr.ID); !errors.Is(err, batuta.ErrRunNotFound) {
		t.Fatalf("duplicate run's ID is visible: %v", err)
	}
	if cs := st.claim(base, 10); len(cs) != 1 {
		t.Fatalf("claimable after duplicate: %d tasks, want 1", len(cs))
	}
	// Same event ID for another workflow is another run.
	st.create("wf2", "ev-dup", diamond)
}

func testDedupeConcurrent(t *testing.T, st *storeT) {
	const n = 50
	var wg sync.WaitGroup
	ids := make([]string, n)
	created := make([]bool, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nr := batuta.NewRun{ID: newID(base), Workflow: "wf", Event: batuta.Event{ID: "same", Time: base}, Tasks: diamond, CreatedAt: base}
			ids[i], created[i], errs[i] = st.s.CreateRun(ctxT(t), nr)
		}()
	}
	wg.Wait()
	nc := 0
	for i := range ids {
		st.must(errs[i])
		if created[i] {
			nc++
		}
		if ids[i] != ids[0] {
			t.Fatalf("concurrent duplicates returned different runs: %q vs %q", ids[i], ids[0])
		}
	}
	if nc != 1 {
		t.Fatalf("%d of %d concurrent CreateRun calls for one event created a run, want exactly 1", nc, n)
	}
}

func testClaimDeps(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", diamond)
	cs := st.claim(base, 10)
	if got := claimNames(cs); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("first claim = %v, want [a]", got)
	}
	a := cs[0]
	if a.Attempt != 1 || a.RunID != id || a.Workflow != "wf" || len(a.Upstream) != 0 {
		t.Fatalf("claim of a = %+v", a)
	}
	if r := st.get(id); r.State != batuta.RunRunning || taskState(r, "a") != batuta.TaskRunning || r.StartedAt.IsZero() {
		t.Fatalf("after claim: run %s, a %s, started %v", r.State, taskState(r, "a"), r.StartedAt)
	}
	if cs := st.claim(base, 10); len(cs) != 0 {
		t.Fatalf("claimed %v while a runs", claimNames(cs))
	}
	res := st.completeOK(a, batuta.OutcomeSucceeded, json.RawMessage(`"A"`), base)
	if res.Ready != 2 || res.RunFinished != "" {
		t.Fatalf("completing a: ready %d finished %q, want 2, \"\"", res.Ready, res.RunFinished)
	}
	cs = st.claim(base, 10)
	if got := claimNames(cs); !reflect.DeepEqual(got, []string{"b", "c"}) {
		t.Fatalf("second claim = %v, want [b c]", got)
	}
	for _, c := range cs {
		if len(c.Upstream) != 1 || c.Upstream[0].Name != "a" || c.Upstream[0].State != batuta.TaskSucceeded {
			t.Fatalf("upstream of %s = %+v", c.Task, c.Upstream)
		}
		if s, err := batuta.OutputAs[string](c.Upstream[0].Output); err != nil || s != "A" {
			t.Fatalf("output of a seen by %s = %v, %v", c.Task, s, err)
		}
	}
	st.completeOK(cs[0], batuta.OutcomeSucceeded, json.RawMessage(`1`), base)
	if cs := st.claim(base, 10); len(cs) != 0 {
		t.Fatalf("d claimable with one dependency running: %v", claimNames(cs))
	}
	st.completeOK(cs[1], batuta.OutcomeSucceeded, json.RawMessage(`2`), base)
	cs = st.claim(base, 10)
	if got := claimNames(cs); !reflect.DeepEqual(got, []string{"d"}) {
		t.Fatalf("third claim = %v, want [d]", got)
	}
	names := []string{cs[0].Upstream[0].Name, cs[0].Upstream[1].Name}
	if !reflect.DeepEqual(names, []string{"b", "c"}) {
		t.Fatalf("upstream of d in order %v, want [b c]", names)
	}
	res = st.completeOK(cs[0], batuta.OutcomeSucceeded, nil, base.Add(time.Second))
	if res.RunFinished != batuta.RunSucceeded {
		t.Fatalf("last completion: RunFinished %q, want succeeded", res.RunFinished)
	}
	r := st.get(id)
	if r.State != batuta.RunSucceeded || !r.FinishedAt.Equal(base.Add(time.Second)) || r.Error != "" {
		t.Fatalf("finished run: state %s finished %v error %q", r.State, r.FinishedAt, r.Error)
	}
	for _, tr := range r.Tasks {
		if tr.State != batuta.TaskSucceeded || len(tr.Attempts) != 1 || tr.Attempts[0].Number != 1 || tr.Attempts[0].Outcome != batuta.OutcomeSucceeded {
			t.Fatalf("task %s: state %s attempts %+v", tr.Name, tr.State, tr.Attempts)
		}
	}
}

func testClaimLimit(t *testing.T, st *storeT) {
	var specs []batuta.TaskSpec
	for i := 0; i < 10; i++ {
		specs = append(specs, batuta.TaskSpec{Name: fmt.Sprintf("t%d", i)})
	}
	st.create("wf", "e1", specs)
	seen := map[string]bool{}
	for _, want := range []int{3, 3, 3, 1, 0} {
		cs := st.claim(base, 3)
		if len(cs) != want {
			t.Fatalf("claim(limit 3) got %d, want %d", len(cs), want)
		}
		for _, c := range cs {
			if seen[c.Task] {
				t.Fatalf("task %s claimed twice", c.Task)
			}
			seen[c.Task] = true
		}
	}
	tokens := map[int64]bool{}
	_ = tokens
}

func testConcurrentClaimers(t *testing.T, st *storeT) {
	const runs, width = 20, 10
	var specs []batuta.TaskSpec
	for i := 0; i < width; i++ {
		specs = append(specs, batuta.TaskSpec{Name: fmt.Sprintf("t%d", i)})
	}
	for i := 0; i < runs; i++ {
		st.create("wf", fmt.Sprintf("e%d", i), specs)
	}
	var mu sync.Mutex
	claimed := map[string]int{}
	tokens := map[int64]bool{}
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				cs, err := st.s.ClaimTasks(ctxT(t), batuta.ClaimParams{Owner: fmt.Sprintf("w%d", w), Limit: 5, Now: base, LeaseUntil: base.Add(time.Minute)})
				if err != nil {
					errc <- err
					return
				}
				if len(cs) > 5 {
					errc <- fmt.Errorf("claim of limit 5 returned %d", len(cs))
					return
				}
				if len(cs) == 0 {
					return
				}
				mu.Lock()
				for _, c := range cs {
					claimed[c.RunID+"/"+c.Task]++
					if tokens[c.Token] {
						mu.Unlock()
						errc <- fmt.Errorf("token %d handed out twice", c.Token)
						return
					}
					tokens[c.Token] = true
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if len(claimed) != runs*width {
		t.Fatalf("claimed %d distinct tasks, want %d", len(claimed), runs*width)
	}
	for k, n := range claimed {
		if n != 1 {
			t.Fatalf("task %s claimed %d times", k, n)
		}
	}
}

func testClaimWorkflows(t *testing.T, st *storeT) {
	st.create("wf-a", "e1", []batuta.TaskSpec{{Name: "x"}})
	st.create("wf-b", "e1", []batuta.TaskSpec{{Name: "y"}})
	cs := st.claim(base, 10, "wf-b", "wf-c")
	if len(cs) != 1 || cs[0].Workflow != "wf-b" || cs[0].Task != "y" {
		t.Fatalf("claim for [wf-b wf-c] = %+v", cs)
	}
	if cs := st.claim(base, 10, "wf-c"); len(cs) != 0 {
		t.Fatalf("claim for [wf-c] = %v", claimNames(cs))
	}
	if cs := st.claim(base, 10); len(cs) != 1 || cs[0].Workflow != "wf-a" {
		t.Fatalf("claim for any workflow = %+v", cs)
	}
}

func testFencing(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "x"}, {Name: "y", Deps: []int{0}}})
	c := st.claim(base, 1)[0]
	forged := c
	forged.Token = c.Token + 1000
	if r := st.complete(forged, batuta.OutcomeSucceeded, json.RawMessage(`"evil"`), "", base); !errors.Is(r.Err, batuta.ErrLeaseLost) {
		t.Fatalf("completion with a wrong token: %v, want ErrLeaseLost", r.Err)
	}
	if r := st.get(id); taskState(r, "x") != batuta.TaskRunning {
		t.Fatalf("fenced write changed the task: %s", taskState(r, "x"))
	}
	st.completeOK(c, batuta.OutcomeSucceeded, json.RawMessage(`"good"`), base)
	if r := st.complete(c, batuta.OutcomeFailed, nil, "late", base); !errors.Is(r.Err, batuta.ErrLeaseLost) {
		t.Fatalf("second completion of one claim: %v, want ErrLeaseLost", r.Err)
	}
	r := st.get(id)
	if x := r.Task("x"); x.State != batuta.TaskSucceeded || len(x.Attempts) != 1 {
		t.Fatalf("x after stale write: %s with %d attempts", x.State, len(x.Attempts))
	}
	if s, _ := batuta.OutputAs[string](r.Task("x").Output); s != "good" {
		t.Fatalf("output overwritten: %q", s)
	}
	st2, err := st.s.ExtendLeases(ctxT(t), []batuta.ClaimRef{c.Ref(), forged.Ref()}, base.Add(time.Hour))
	st.must(err)
	if !reflect.DeepEqual(st2, []batuta.LeaseStatus{batuta.LeaseLost, batuta.LeaseLost}) {
		t.Fatalf("ExtendLeases on finished/forged claims = %v", st2)
	}
}

func testRetrySnooze(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "x"}})
	c := st.claim(base, 1)[0]
	retryAt := base.Add(10 * time.Second)
	res, err := st.s.CompleteTasks(ctxT(t), []batuta.Completion{{ClaimRef: c.Ref(), Outcome: batuta.OutcomeRetry, Attempt: 1, Error: "boom", StartedAt: base, FinishedAt: base.Add(time.Second), RetryAt: retryAt}})
	st.must(err)
	st.must(res[0].Err)
	if r := st.get(id); taskState(r, "x") != batuta.TaskPending || r.Finished() {
		t.Fatalf("after retry: task %s run %s", taskState(r, "x"), r.State)
	}
	if cs := st.claim(retryAt.Add(-time.Millisecond), 1); len(cs) != 0 {
		t.Fatal("retry claimable before RetryAt")
	}
	cs := st.claim(retryAt, 1)
	if len(cs) != 1 || cs[0].Attempt != 2 {
		t.Fatalf("claim at RetryAt = %+v, want attempt 2", cs)
	}
	res, err = st.s.CompleteTasks(ctxT(t), []batuta.Completion{{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeSnooze, Attempt: 2, Error: "snoozed", StartedAt: retryAt, FinishedAt: retryAt, RetryAt: retryAt.Add(time.Minute)}})
	st.must(err)
	st.must(res[0].Err)
	if cs := st.claim(retryAt.Add(59*time.Second), 1); len(cs) != 0 {
		t.Fatal("snoozed task claimable early")
	}
	cs = st.claim(retryAt.Add(time.Minute), 1)
	if len(cs) != 1 || cs[0].Attempt != 2 {
		t.Fatalf("after snooze: %+v, want attempt 2 again (snooze spends no attempt)", cs)
	}
	st.completeOK(cs[0], batuta.OutcomeSucceeded, nil, retryAt.Add(time.Minute))
	x := st.get(id).Task("x")
	if len(x.Attempts) != 3 {
		t.Fatalf("attempts recorded: %+v, want 3 (retry, snooze, success)", x.Attempts)
	}
	want := []struct {
		n  int
		oc batuta.Outcome
		e  string
	}{{1, batuta.OutcomeRetry, "boom"}, {2, batuta.OutcomeSnooze, "snoozed"}, {2, batuta.OutcomeSucceeded, ""}}
	for i, w := range want {
		a := x.Attempts[i]
		if a.Number != w.n || a.Outcome != w.oc || a.Error != w.e {
			t.Fatalf("attempt %d = %+v, want number %d outcome %s error %q", i, a, w.n, w.oc, w.e)
		}
	}
	if !x.Attempts[0].StartedAt.Equal(base) || !x.Attempts[0].FinishedAt.Equal(base.Add(time.Second)) {
		t.Fatalf("attempt times: %+v", x.Attempts[0])
	}
}

// testSnoozesCoalesce: snoozes in a row of one attempt number are one
// record, which keeps the last snooze's times and error and counts them
// (Attempt.Snoozes); a task that polls by snoozing keeps a bounded history.
// A retry between snoozes starts a new record, and so does the next
// number's first snooze.
func testSnoozesCoalesce(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "x"}})
	at := base
	snooze := func(attempt, k int) {
		t.Helper()
		cs := st.claim(at, 1)
		if len(cs) != 1 || cs[0].Attempt != attempt {
			t.Fatalf("snooze %d: claim = %+v, want attempt %d", k, cs, attempt)
		}
		next := at.Add(time.Second)
		res, err := st.s.CompleteTasks(ctxT(t), []batuta.Completion{{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeSnooze,
			Attempt: attempt, Error: fmt.Sprintf("not yet %d", k), StartedAt: at, FinishedAt: at.Add(time.Millisecond), RetryAt: next}})
		st.must(err)
		st.must(res[0].Err)
		at = next
	}
	for k := 1; k <= 5; k++ {
		snooze(1, k)
	}
	x := st.get(id).Task("x")
	if len(x.Attempts) != 1 {
		t.Fatalf("after 5 snoozes: %d records %+v, want 1", len(x.Attempts), x.Attempts)
	}
	last := base.Add(4 * time.Second)
	if a := x.Attempts[0]; a.Number != 1 || a.Outcome != batuta.OutcomeSnooze || a.Snoozes != 5 || a.Error != "not yet 5" ||
		!a.StartedAt.Equal(last) || !a.FinishedAt.Equal(last.Add(time.Millisecond)) {
		t.Fatalf("snooze record = %+v, want number 1, 5 snoozes, the last one's times and error", a)
	}
	cs := st.claim(at, 1)
	if len(cs) != 1 || cs[0].Attempt != 1 {
		t.Fatalf("after snoozes: %+v, want attempt 1 again (snoozes spend no attempt)", cs)
	}
	res, err := st.s.CompleteTasks(ctxT(t), []batuta.Completion{{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeRetry,
		Attempt: 1, Error: "boom", StartedAt: at, FinishedAt: at, RetryAt: at.Add(time.Second)}})
	st.must(err)
	st.must(res[0].Err)
	at = at.Add(time.Second)
	for k := 1; k <= 3; k++ {
		snooze(2, k)
	}
	cs = st.claim(at, 1)
	if len(cs) != 1 {
		t.Fatalf("after the second snoozes: %+v", cs)
	}
	st.completeOK(cs[0], batuta.OutcomeSucceeded, nil, at)
	x = st.get(id).Task("x")
	want := []struct {
		n, snoozes int
		oc         batuta.Outcome
		e          string
	}{{1, 5, batuta.OutcomeSnooze, "not yet 5"}, {1, 0, batuta.OutcomeRetry, "boom"}, {2, 3, batuta.OutcomeSnooze, "not yet 3"}, {2, 0, batuta.OutcomeSucceeded, ""}}
	if len(x.Attempts) != len(want) {
		t.Fatalf("records %+v, want %d", x.Attempts, len(want))
	}
	for i, w := range want {
		if a := x.Attempts[i]; a.Number != w.n || a.Snoozes != w.snoozes || a.Outcome != w.oc || a.Error != w.e {
			t.Fatalf("record %d = %+v, want number %d, %d snoozes, outcome %s, error %q", i, a, w.n, w.snoozes, w.oc, w.e)
		}
	}
}

func testRelease(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "x"}})
	c := st.claim(base, 1)[0]
	res := st.complete(c, batuta.OutcomeRelease, nil, "shutdown", base)
	st.must(res.Err)
	cs := st.claim(base, 1)
	if len(cs) != 1 || cs[0].Attempt != 1 {
		t.Fatalf("after release: %+v, want the task again at attempt 1", cs)
	}
	if x := st.get(id).Task("x"); len(x.Attempts) != 0 {
		t.Fatalf("release recorded attempts: %+v", x.Attempts)
	}
}

func testRunStates(t *testing.T, st *storeT) {
	// A failed task fails the run; a skipped one does not.
	specs := []batuta.TaskSpec{{Name: "x"}, {Name: "y"}}
	fail := st.create("wf", "fail", specs)
	skip := st.create("wf", "skip", specs)
	for _, c := range st.claim(base, 10) {
		switch {
		case c.RunID == fail && c.Task == "x":
			st.completeOK(c, batuta.OutcomeFailed, nil, base)
		case c.RunID == skip && c.Task == "x":
			st.completeOK(c, batuta.OutcomeSkipped, nil, base)
		default:
			st.completeOK(c, batuta.OutcomeSucceeded, nil, base)
		}
	}
	if r := st.get(fail); r.State != batuta.RunFailed || r.Error == "" {
		t.Fatalf("run with a failed task: %s error %q", r.State, r.Error)
	} else if x := r.Task("x"); x.State != batuta.TaskFailed || len(x.Attempts) != 1 || x.Attempts[0].Outcome != batuta.OutcomeFailed {
		t.Fatalf("failed task: %+v", x)
	}
	// A run finished by a skip (no attempt) takes the completion's time.
	only := st.create("wf", "skip-only", []batuta.TaskSpec{{Name: "x"}})
	c := st.claim(base, 1)[0]
	if c.RunID != only {
		t.Fatalf("claimed %s, want the skip-only run", c.RunID)
	}
	res := st.completeOK(c, batuta.OutcomeSkipped, nil, base.Add(time.Minute))
	if r := st.get(only); res.RunFinished != batuta.RunSucceeded || !r.FinishedAt.Equal(base.Add(time.Minute)) {
		t.Fatalf("run finished by a skip: %q at %v, want succeeded at %v", res.RunFinished, r.FinishedAt, base.Add(time.Minute))
	}
	if r := st.get(skip); r.State != batuta.RunSucceeded {
		t.Fatalf("run with a skipped task: %s", r.State)
	} else if x := r.Task("x"); x.State != batuta.TaskSkipped || len(x.Attempts) != 0 {
		t.Fatalf("skipped task: %+v", x)
	}
}

func testFailedUpstream(t *testing.T, st *storeT) {
	st.create("wf", "e1", diamond)
	a := st.claim(base, 10)[0]
	st.completeOK(a, batuta.OutcomeFailed, nil, base)
	cs := st.claim(base, 10)
	if got := claimNames(cs); !reflect.DeepEqual(got, []string{"b", "c"}) {
		t.Fatalf("after a failed: %v, want [b c] ready (join rules are the orchestrator's)", got)
	}
	if cs[0].Upstream[0].State != batuta.TaskFailed {
		t.Fatalf("upstream state = %s, want failed", cs[0].Upstream[0].State)
	}
}

func testOutputs(t *testing.T, st *storeT) {
	st.create("wf", "e1", []batuta.TaskSpec{{Name: "x"}, {Name: "y", Deps: []int{0}}})
	out := json.RawMessage(`{"total_cents":1250,"items":["a","b"],"note":"ñandú ✓","nested":{"ok":true}}`)
	st.completeOK(st.claim(base, 1)[0], batuta.OutcomeSucceeded, out, base)
	y := st.claim(base, 1)[0]
	got, err := batuta.OutputAs[json.RawMessage](y.Upstream[0].Output)
	st.must(err)
	if !jsonEqual(got, out) {
		t.Fatalf("output round trip: %s, want %s", got, out)
	}
	r := st.get(y.RunID)
	got, err = batuta.OutputAs[json.RawMessage](r.Task("x").Output)
	st.must(err)
	if !jsonEqual(got, out) {
		t.Fatalf("output in snapshot: %s, want %s", got, out)
	}
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func testRescue(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "x"}})
	cs, err := st.s.ClaimTasks(ctxT(t), batuta.ClaimParams{Owner: "w1", Limit: 1, Now: base, LeaseUntil: base.Add(10 * time.Second)})
	st.must(err)
	old := cs[0]
	ls, err := st.s.ExtendLeases(ctxT(t), []batuta.ClaimRef{old.Ref()}, base.Add(20*time.Second))
	st.must(err)
	if !reflect.DeepEqual(ls, []batuta.LeaseStatus{batuta.LeaseHeld}) {
		t.Fatalf("ExtendLeases = %v, want [held]", ls)
	}
	if n, f, err := st.s.RescueExpired(ctxT(t), base.Add(15*time.Second), 3); err != nil || n != 0 || f != 0 {
		t.Fatalf("rescue before the extended lease expired: %d %d %v", n, f, err)
	}
	if n, f, err := st.s.RescueExpired(ctxT(t), base.Add(21*time.Second), 3); err != nil || n != 1 || f != 0 {
		t.Fatalf("rescue after expiry: rescued %d failed %d err %v, want 1 0", n, f, err)
	}
	cs = st.claim(base.Add(22*time.Second), 1)
	if len(cs) != 1 || cs[0].Attempt != 1 || cs[0].Rescues != 1 || cs[0].Token == old.Token {
		t.Fatalf("claim after rescue = %+v (old token %d), want attempt 1, rescues 1, new token", cs, old.Token)
	}
	// The paused worker comes back: its writes are fenced off.
	if r := st.complete(old, batuta.OutcomeSucceeded, json.RawMessage(`"stale"`), "", base.Add(23*time.Second)); !errors.Is(r.Err, batuta.ErrLeaseLost) {
		t.Fatalf("stale worker's completion: %v, want ErrLeaseLost", r.Err)
	}
	if ls, _ := st.s.ExtendLeases(ctxT(t), []batuta.ClaimRef{old.Ref()}, base.Add(time.Hour)); !reflect.DeepEqual(ls, []batuta.LeaseStatus{batuta.LeaseLost}) {
		t.Fatalf("stale worker's heartbeat: %v, want [lost]", ls)
	}
	st.completeOK(cs[0], batuta.OutcomeSucceeded, json.RawMessage(`"fresh"`), base.Add(24*time.Second))
	r := st.get(id)
	if s, _ := batuta.OutputAs[string](r.Task("x").Output); s != "fresh" || r.State != batuta.RunSucceeded || r.Task("x").Rescues != 1 {
		t.Fatalf("after rescue: output %q state %s rescues %d", s, r.State, r.Task("x").Rescues)
	}
}

func testRescueLimit(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "x"}, {Name: "y", Deps: []int{0}}})
	now := base
	for i := 0; i < 3; i++ {
		if cs := st.claim(now, 1); len(cs) != 1 || cs[0].Task != "x" {
			t.Fatalf("round %d: claim %+v", i, cs)
		}
		now = now.Add(2 * time.Minute)
		n, f, err := st.s.RescueExpired(ctxT(t), now, 2)
		st.must(err)
		if i < 2 && (n != 1 || f != 0) {
			t.Fatalf("round %d: rescued %d failed %d, want 1 0", i, n, f)
		}
		if i == 2 && (n != 0 || f != 1) {
			t.Fatalf("third expiry with maxRescues 2: rescued %d failed %d, want 0 1", n, f)
		}
	}
	r := st.get(id)
	x := r.Task("x")
	if x.State != batuta.TaskFailed || x.Error == "" || x.Rescues != 3 {
		t.Fatalf("crash-looping task: state %s error %q rescues %d", x.State, x.Error, x.Rescues)
	}
	// y is now ready (join rules are the orchestrator's); skip it to finish.
	y := st.claim(now, 1)
	if len(y) != 1 || y[0].Task != "y" {
		t.Fatalf("after x failed by rescue: %+v", y)
	}
	st.completeOK(y[0], batuta.OutcomeSkipped, nil, now)
	if r := st.get(id); r.State != batuta.RunFailed {
		t.Fatalf("run state %s, want failed", r.State)
	}
}

func testCancel(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", diamond)
	a := st.claim(base, 1)[0]
	ok, err := st.s.CancelRun(ctxT(t), id, "user asked", base)
	st.must(err)
	if !ok {
		t.Fatal("CancelRun of a running run returned false")
	}
	r := st.get(id)
	if r.Finished() {
		t.Fatalf("run finished while a task is still running: %s", r.State)
	}
	for _, n := range []string{"b", "c", "d"} {
		if taskState(r, n) != batuta.TaskCanceled {
			t.Fatalf("pending task %s after cancel: %s", n, taskState(r, n))
		}
	}
	ls, err := st.s.ExtendLeases(ctxT(t), []batuta.ClaimRef{a.Ref()}, base.Add(time.Hour))
	st.must(err)
	if !reflect.DeepEqual(ls, []batuta.LeaseStatus{batuta.LeaseCanceled}) {
		t.Fatalf("heartbeat of a canceled run's task = %v, want [canceled]", ls)
	}
	if cs := st.claim(base, 10); len(cs) != 0 {
		t.Fatalf("claimed %v from a canceled run", claimNames(cs))
	}
	res := st.completeOK(a, batuta.OutcomeCanceled, nil, base)
	if res.RunFinished != batuta.RunCanceled {
		t.Fatalf("RunFinished = %q, want canceled", res.RunFinished)
	}
	r = st.get(id)
	if r.State != batuta.RunCanceled || taskState(r, "a") != batuta.TaskCanceled || r.FinishedAt.IsZero() {
		t.Fatalf("after the last task reported: run %s a %s finished %v", r.State, taskState(r, "a"), r.FinishedAt)
	}
	if ok, err := st.s.CancelRun(ctxT(t), id, "again", base); err != nil || ok {
		t.Fatalf("CancelRun of a finished run = %v, %v; want false, nil", ok, err)
	}
	// A run with nothing running finishes at once, and a retrying task is canceled too.
	id2 := st.create("wf", "e2", []batuta.TaskSpec{{Name: "x"}})
	c := st.claim(base, 1)[0]
	_, err = st.s.CompleteTasks(ctxT(t), []batuta.Completion{{ClaimRef: c.Ref(), Outcome: batuta.OutcomeRetry, Attempt: 1, Error: "e", StartedAt: base, FinishedAt: base, RetryAt: base.Add(time.Hour)}})
	st.must(err)
	ok, err = st.s.CancelRun(ctxT(t), id2, "stop", base)
	st.must(err)
	if r := st.get(id2); !ok || r.State != batuta.RunCanceled || taskState(r, "x") != batuta.TaskCanceled {
		t.Fatalf("cancel of a waiting run: ok %v state %s x %s", ok, r.State, taskState(r, "x"))
	}
	if cs := st.claim(base.Add(2*time.Hour), 10); len(cs) != 0 {
		t.Fatalf("canceled retry still claimable: %v", claimNames(cs))
	}
}

func testMaxActive(t *testing.T, st *storeT) {
	mk := func(ev string) (string, error) {
		nr := batuta.NewRun{ID: newID(base), Workflow: "wf", Event: batuta.Event{ID: ev, Time: base}, Tasks: []batuta.TaskSpec{{Name: "x"}}, CreatedAt: base, MaxActive: 2}
		id, _, err := st.s.CreateRun(ctxT(t), nr)
		return id, err
	}
	_, err := mk("1")
	st.must(err)
	_, err = mk("2")
	st.must(err)
	if _, err := mk("3"); !errors.Is(err, batuta.ErrBusy) {
		t.Fatalf("third run over MaxActive 2: %v, want ErrBusy", err)
	}
	// A duplicate of an existing run is not refused as busy.
	if _, err := mk("1"); err != nil {
		t.Fatalf("duplicate at the cap: %v, want the existing run", err)
	}
	st.completeOK(st.claim(base, 1)[0], batuta.OutcomeSucceeded, nil, base)
	if _, err := mk("3"); err != nil {
		t.Fatalf("after a run finished: %v", err)
	}
}

func testListRuns(t *testing.T, st *storeT) {
	var ids []string
	for i := 0; i < 5; i++ {
		wf := "wf-a"
		if i%2 == 1 {
			wf = "wf-b"
		}
		ids = append(ids, st.create(wf, fmt.Sprintf("e%d", i), []batuta.TaskSpec{{Name: "x"}}))
	}
	all, err := st.s.ListRuns(ctxT(t), batuta.RunFilter{})
	st.must(err)
	if len(all) != 5 || all[0].ID != ids[4] || all[4].ID != ids[0] {
		t.Fatalf("ListRuns: %d runs, first %q; want 5 newest first", len(all), firstID(all))
	}
	a, err := st.s.ListRuns(ctxT(t), batuta.RunFilter{Workflow: "wf-a"})
	st.must(err)
	if len(a) != 3 {
		t.Fatalf("ListRuns(wf-a) = %d, want 3", len(a))
	}
	lim, err := st.s.ListRuns(ctxT(t), batuta.RunFilter{Limit: 2})
	st.must(err)
	if len(lim) != 2 || lim[0].ID != ids[4] {
		t.Fatalf("ListRuns(limit 2) = %d, first %q", len(lim), firstID(lim))
	}
	c := st.claim(base, 1, "wf-b")[0]
	st.completeOK(c, batuta.OutcomeSucceeded, nil, base)
	done, err := st.s.ListRuns(ctxT(t), batuta.RunFilter{State: batuta.RunSucceeded})
	st.must(err)
	if len(done) != 1 || done[0].ID != c.RunID {
		t.Fatalf("ListRuns(succeeded) = %d runs", len(done))
	}
}

func firstID(rs []*batuta.Run) string {
	if len(rs) == 0 {
		return ""
	}
	return rs[0].ID
}

func testPrune(t *testing.T, st *storeT) {
	var ids []string
	for i := 0; i < 6; i++ {
		ids = append(ids, st.create("wf", fmt.Sprintf("e%d", i), []batuta.TaskSpec{{Name: "x"}}))
	}
	// Finish runs 0..4 at base+i minutes, in order; run 5 stays unfinished.
	for i := 0; i < 5; i++ {
		cs := st.claim(base, 10)
		var c *batuta.Claim
		for k := range cs {
			if cs[k].RunID == ids[i] {
				c = &cs[k]
			} else {
				st.must(st.complete(cs[k], batuta.OutcomeRelease, nil, "", base).Err)
			}
		}
		if c == nil {
			t.Fatalf("run %d not claimable", i)
		}
		st.completeOK(*c, batuta.OutcomeSucceeded, nil, base.Add(time.Duration(i)*time.Minute))
	}
	n, err := st.s.Prune(ctxT(t), batuta.PrunePolicy{Before: base.Add(90 * time.Second), BatchSize: 1})
	st.must(err)
	if n != 2 {
		t.Fatalf("Prune(before 1m30s) = %d, want 2 (runs finished at 0m and 1m)", n)
	}
	for i, id := range ids {
		_, err := st.s.GetRun(ctxT(t), id)
		gone := errors.Is(err, batuta.ErrRunNotFound)
		if gone != (i < 2) {
			t.Fatalf("after prune by age: run %d gone=%v (err %v)", i, gone, err)
		}
	}
	n, err = st.s.Prune(ctxT(t), batuta.PrunePolicy{KeepLast: 1})
	st.must(err)
	if n != 2 {
		t.Fatalf("Prune(keep last 1) = %d, want 2", n)
	}
	if _, err := st.s.GetRun(ctxT(t), ids[4]); err != nil {
		t.Fatalf("newest finished run pruned: %v", err)
	}
	if _, err := st.s.GetRun(ctxT(t), ids[5]); err != nil {
		t.Fatalf("unfinished run pruned: %v", err)
	}
	// A pruned run's dedupe key is gone with it.
	nr := batuta.NewRun{ID: newID(base), Workflow: "wf", Event: batuta.Event{ID: "e0", Time: base}, Tasks: []batuta.TaskSpec{{Name: "x"}}, CreatedAt: base.Add(time.Hour)}
	if _, created, err := st.s.CreateRun(ctxT(t), nr); err != nil || !created {
		t.Fatalf("re-create after prune: created %v err %v", created, err)
	}
}

func testTicks(t *testing.T, st *storeT) {
	ctx := ctxT(t)
	last, err := st.s.LastTick(ctx, "daily")
	st.must(err)
	if !last.IsZero() {
		t.Fatalf("LastTick of a new schedule = %v, want zero", last)
	}
	t1 := base.Add(time.Hour)
	for _, c := range []struct {
		at   time.Time
		want bool
	}{{t1, true}, {t1, false}, {t1.Add(-time.Minute), false}, {t1.Add(time.Second), true}} {
		ok, err := st.s.RecordTick(ctx, "daily", c.at)
		st.must(err)
		if ok != c.want {
			t.Fatalf("RecordTick(%v) = %v, want %v", c.at, ok, c.want)
		}
	}
	last, err = st.s.LastTick(ctx, "daily")
	st.must(err)
	if !last.Equal(t1.Add(time.Second)) {
		t.Fatalf("LastTick = %v, want %v", last, t1.Add(time.Second))
	}
	if other, _ := st.s.LastTick(ctx, "weekly"); !other.IsZero() {
		t.Fatalf("schedules share ticks: %v", other)
	}
}

func testPayloads(t *testing.T, st *storeT) {
	big := []byte(`{"blob":"` + strings.Repeat("x", 256<<10) + `"}`)
	nr := batuta.NewRun{ID: newID(base), Workflow: "wf", Tasks: []batuta.TaskSpec{{Name: "x"}}, CreatedAt: base,
		Event: batuta.Event{ID: "big-ü-✓ '\";--", Time: base, Data: big, Metadata: map[string]string{"ключ": "значение"}}}
	id, _, err := st.s.CreateRun(ctxT(t), nr)
	st.must(err)
	r := st.get(id)
	if !bytes.Equal(r.Event.Data, big) || r.Event.ID != nr.Event.ID || r.Event.Metadata["ключ"] != "значение" {
		t.Fatal("large or unicode payload did not round-trip")
	}
	// Empty payloads too.
	nr2 := batuta.NewRun{ID: newID(base), Workflow: "wf", Tasks: []batuta.TaskSpec{{Name: "x"}}, CreatedAt: base, Event: batuta.Event{ID: "empty", Time: base}}
	id2, _, err := st.s.CreateRun(ctxT(t), nr2)
	st.must(err)
	if r := st.get(id2); len(r.Event.Data) != 0 || len(r.Event.Metadata) != 0 {
		t.Fatalf("empty payload came back as %q %v", r.Event.Data, r.Event.Metadata)
	}
}

func testBatchCompletion(t *testing.T, st *storeT) {
	const n = 30
	for i := 0; i < n; i++ {
		st.create("wf", fmt.Sprintf("e%d", i), []batuta.TaskSpec{{Name: "x"}, {Name: "y", Deps: []int{0}}})
	}
	cs := st.claim(base, n)
	if len(cs) != n {
		t.Fatalf("claimed %d, want %d", len(cs), n)
	}
	comps := make([]batuta.Completion, 0, n+1)
	for i, c := range cs {
		oc := batuta.OutcomeSucceeded
		if i%3 == 0 {
			oc = batuta.OutcomeFailed
		}
		comps = append(comps, batuta.Completion{ClaimRef: c.Ref(), Outcome: oc, Attempt: 1, Output: json.RawMessage(fmt.Sprint(i)), StartedAt: base, FinishedAt: base})
	}
	stale := cs[0].Ref()
	stale.Token += 99999
	comps = append(comps, batuta.Completion{ClaimRef: stale, Outcome: batuta.OutcomeSucceeded, Attempt: 1, StartedAt: base, FinishedAt: base})
	res, err := st.s.CompleteTasks(ctxT(t), comps)
	st.must(err)
	if len(res) != n+1 {
		t.Fatalf("%d results for %d completions", len(res), n+1)
	}
	for i := 0; i < n; i++ {
		if res[i].Err != nil || res[i].Ready != 1 {
			t.Fatalf("completion %d: err %v ready %d", i, res[i].Err, res[i].Ready)
		}
	}
	if !errors.Is(res[n].Err, batuta.ErrLeaseLost) {
		t.Fatalf("stale item in a batch: %v, want ErrLeaseLost", res[n].Err)
	}
	ys := st.claim(base, 2*n)
	if len(ys) != n {
		t.Fatalf("after batch completion %d tasks ready, want %d", len(ys), n)
	}
}

func testReopen(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", diamond)
	a := st.claim(base, 1)[0]
	st.completeOK(a, batuta.OutcomeSucceeded, json.RawMessage(`{"v":"A"}`), base)
	bc := st.claim(base, 1) // b or c left running by the "crashed" process
	_, err := st.s.RecordTick(ctxT(t), "s", base)
	st.must(err)
	st.s = st.suite.Reopen(t, st.s)
	r := st.get(id)
	if taskState(r, "a") != batuta.TaskSucceeded || r.Finished() {
		t.Fatalf("after reopen: a %s run %s", taskState(r, "a"), r.State)
	}
	if last, _ := st.s.LastTick(ctxT(t), "s"); !last.Equal(base) {
		t.Fatalf("LastTick after reopen = %v", last)
	}
	// The crashed claim comes back once its lease expires; a never runs again.
	later := base.Add(2 * time.Minute)
	n, _, err := st.s.RescueExpired(ctxT(t), later, 5)
	st.must(err)
	if n != 1 {
		t.Fatalf("rescued %d after reopen, want 1", n)
	}
	seen := map[string]bool{}
	for {
		cs := st.claim(later, 10)
		if len(cs) == 0 {
			break
		}
		for _, c := range cs {
			if c.Task == "a" || seen[c.Task] {
				t.Fatalf("task %s claimed again after reopen", c.Task)
			}
			seen[c.Task] = true
			st.completeOK(c, batuta.OutcomeSucceeded, nil, later)
		}
	}
	if !seen[bc[0].Task] || len(seen) != 3 {
		t.Fatalf("after reopen ran %v, want b, c and d", seen)
	}
	if r := st.get(id); r.State != batuta.RunSucceeded {
		t.Fatalf("run after resume: %s", r.State)
	}
}

// byTask returns the claims by task name, failing on a task claimed twice.
func (st *storeT) byTask(cs []batuta.Claim) map[string]batuta.Claim {
	st.t.Helper()
	m := make(map[string]batuta.Claim, len(cs))
	for _, c := range cs {
		if _, dup := m[c.Task]; dup {
			st.fatalf("task %s claimed twice in one batch", c.Task)
		}
		m[c.Task] = c
	}
	return m
}

func upstreamStates(c batuta.Claim) []batuta.TaskState {
	out := make([]batuta.TaskState, len(c.Upstream))
	for i, u := range c.Upstream {
		out[i] = u.State
	}
	return out
}

// testUpstreamFailed: a task the orchestrator marks upstream_failed is a
// terminal state of its own, with its reason and no attempt, shown as such
// in snapshots and to its dependents' claims; the run fails.
func testUpstreamFailed(t *testing.T, st *storeT) {
	// x -> y -> z
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "x"}, {Name: "y", Deps: []int{0}}, {Name: "z", Deps: []int{1}}})
	st.complete(st.claim(base, 1)[0], batuta.OutcomeFailed, nil, "boom", base)
	y := st.claim(base, 10)
	if len(y) != 1 || y[0].Task != "y" || y[0].Upstream[0].State != batuta.TaskFailed {
		t.Fatalf("after x failed: %+v, want y ready seeing x failed", y)
	}
	res := st.complete(y[0], batuta.OutcomeUpstreamFailed, nil, "dependency x is failed", base.Add(time.Second))
	if res.Err != nil || res.Ready != 1 || res.RunFinished != "" {
		t.Fatalf("completing y upstream_failed: %+v, want ready 1, run unfinished", res)
	}
	r := st.get(id)
	if yt := r.Task("y"); yt.State != batuta.TaskUpstreamFailed || yt.Error != "dependency x is failed" || len(yt.Attempts) != 0 {
		t.Fatalf("upstream_failed task in snapshot: %+v", yt)
	}
	if !r.Task("y").State.Finished() || r.Finished() {
		t.Fatalf("y %s finished=%v, run %s", r.Task("y").State, r.Task("y").State.Finished(), r.State)
	}
	z := st.claim(base, 10)
	if len(z) != 1 || z[0].Task != "z" || z[0].Upstream[0].State != batuta.TaskUpstreamFailed || z[0].Upstream[0].Error != "dependency x is failed" {
		t.Fatalf("z claim: %+v, want z seeing y upstream_failed", z)
	}
	// z is, say, a OneFailed compensation: it runs and succeeds.
	res = st.completeOK(z[0], batuta.OutcomeSucceeded, nil, base.Add(2*time.Second))
	if res.RunFinished != batuta.RunFailed {
		t.Fatalf("run finished %q, want failed", res.RunFinished)
	}
	r = st.get(id)
	if r.State != batuta.RunFailed || !strings.Contains(r.Error, "boom") {
		t.Fatalf("run: %s error %q, want failed naming x's error", r.State, r.Error)
	}
	if got := []batuta.TaskState{taskState(r, "x"), taskState(r, "y"), taskState(r, "z")}; !reflect.DeepEqual(got,
		[]batuta.TaskState{batuta.TaskFailed, batuta.TaskUpstreamFailed, batuta.TaskSucceeded}) {
		t.Fatalf("task states %v", got)
	}
	rs, err := st.s.ListRuns(ctxT(t), batuta.RunFilter{State: batuta.RunFailed})
	st.must(err)
	if len(rs) != 1 || rs[0].ID != id || rs[0].Task("y").State != batuta.TaskUpstreamFailed {
		t.Fatalf("ListRuns(failed) = %d runs", len(rs))
	}
}

// testUpstreamFailedFailsRun: a run never succeeds while one of its tasks is
// upstream_failed, even if (as a store cannot know) no task failed.
func testUpstreamFailedFailsRun(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "x"}, {Name: "y"}})
	cs := st.byTask(st.claim(base, 10))
	st.completeOK(cs["x"], batuta.OutcomeSucceeded, nil, base)
	res := st.complete(cs["y"], batuta.OutcomeUpstreamFailed, nil, "why", base)
	if res.Err != nil || res.RunFinished != batuta.RunFailed {
		t.Fatalf("last completion upstream_failed: %+v, want run failed", res)
	}
	if r := st.get(id); r.State != batuta.RunFailed {
		t.Fatalf("run %s, want failed", r.State)
	}
}

// testFireEarly: a task with TaskSpec.FireOn is ready as soon as the first
// dependency finishes in that class, sees its unfinished siblings as
// running, is not made ready again, and the run waits for every task.
func testFireEarly(t *testing.T, st *storeT) {
	roots := []int{0, 1, 2}
	id := st.create("wf", "e1", []batuta.TaskSpec{
		{Name: "a"}, {Name: "b"}, {Name: "c"},
		{Name: "hedge", Deps: roots, FireOn: batuta.TaskSucceeded},
		{Name: "alert", Deps: roots, FireOn: batuta.TaskFailed},
		{Name: "join", Deps: roots},
	})
	cs := st.byTask(st.claim(base, 10))
	if len(cs) != 3 {
		t.Fatalf("first claim %v, want a b c", claimNames(st.claim(base, 10)))
	}
	res := st.completeOK(cs["b"], batuta.OutcomeSucceeded, json.RawMessage(`"B"`), base)
	if res.Ready != 1 {
		t.Fatalf("b succeeded: ready %d, want 1 (hedge)", res.Ready)
	}
	h := st.claim(base, 10)
	if len(h) != 1 || h[0].Task != "hedge" {
		t.Fatalf("after b succeeded: %v, want [hedge]", claimNames(h))
	}
	if got := upstreamStates(h[0]); !reflect.DeepEqual(got, []batuta.TaskState{batuta.TaskRunning, batuta.TaskSucceeded, batuta.TaskRunning}) {
		t.Fatalf("hedge sees %v, want [running succeeded running]", got)
	}
	if s, err := batuta.OutputAs[string](h[0].Upstream[1].Output); err != nil || s != "B" || h[0].Upstream[0].Output != nil {
		t.Fatalf("hedge sees outputs %v, %v", h[0].Upstream[1].Output, h[0].Upstream[0].Output)
	}
	if r := st.completeOK(h[0], batuta.OutcomeSucceeded, nil, base); r.RunFinished != "" || r.Ready != 0 {
		t.Fatalf("hedge done: %+v, want run unfinished", r)
	}
	res = st.complete(cs["a"], batuta.OutcomeFailed, nil, "a broke", base)
	if res.Err != nil || res.Ready != 1 {
		t.Fatalf("a failed: %+v, want ready 1 (alert, not hedge again)", res)
	}
	al := st.claim(base, 10)
	if len(al) != 1 || al[0].Task != "alert" {
		t.Fatalf("after a failed: %v, want [alert]", claimNames(al))
	}
	if got := upstreamStates(al[0]); !reflect.DeepEqual(got, []batuta.TaskState{batuta.TaskFailed, batuta.TaskSucceeded, batuta.TaskRunning}) {
		t.Fatalf("alert sees %v", got)
	}
	// alert's attempt fails and is retried: it goes back to pending with
	// its count at zero, and c finishing must not ready it a second time.
	if r := st.complete(al[0], batuta.OutcomeRetry, nil, "flaky", base); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := st.get(id); r.Finished() || taskState(r, "c") != batuta.TaskRunning || taskState(r, "hedge") != batuta.TaskSucceeded {
		t.Fatalf("run %s c %s hedge %s", r.State, taskState(r, "c"), taskState(r, "hedge"))
	}
	res = st.completeOK(cs["c"], batuta.OutcomeSucceeded, nil, base)
	if res.Ready != 1 || res.RunFinished != "" {
		t.Fatalf("c succeeded: %+v, want ready 1 (join only)", res)
	}
	last := st.byTask(st.claim(base.Add(time.Hour), 10))
	if got := claimNames(st.claim(base.Add(time.Hour), 10)); len(got) != 0 {
		t.Fatalf("claimed again: %v", got)
	}
	if _, ok := last["join"]; !ok || len(last) != 2 || last["alert"].Attempt != 2 {
		t.Fatalf("last claim %v (alert attempt %d), want alert (attempt 2) and join", claimNames(st.claim(base, 0)), last["alert"].Attempt)
	}
	if got := upstreamStates(last["join"]); !reflect.DeepEqual(got, []batuta.TaskState{batuta.TaskFailed, batuta.TaskSucceeded, batuta.TaskSucceeded}) {
		t.Fatalf("join sees %v", got)
	}
	st.completeOK(last["alert"], batuta.OutcomeSucceeded, nil, base.Add(time.Hour))
	res = st.completeOK(last["join"], batuta.OutcomeUpstreamFailed, nil, base.Add(time.Hour))
	if res.RunFinished != batuta.RunFailed {
		t.Fatalf("last task: run finished %q, want failed", res.RunFinished)
	}
	if r := st.get(id); r.State != batuta.RunFailed || len(r.Task("hedge").Attempts) != 1 || len(r.Task("alert").Attempts) != 2 {
		t.Fatalf("run %s hedge attempts %d alert attempts %d", r.State, len(r.Task("hedge").Attempts), len(r.Task("alert").Attempts))
	}
}

// testFireEarlyBatch: two matching dependencies finishing in one batch make
// the task ready once; a FireOn failed task fires on upstream_failed too;
// a task that fires on nothing that happened waits for all.
func testFireEarlyBatch(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{
		{Name: "a"}, {Name: "b"}, {Name: "c"},
		{Name: "h", Deps: []int{0, 1, 2}, FireOn: batuta.TaskSucceeded},
		{Name: "f", Deps: []int{0, 1, 2}, FireOn: batuta.TaskFailed},
	})
	cs := st.byTask(st.claim(base, 10))
	comp := func(c batuta.Claim, oc batuta.Outcome) batuta.Completion {
		return batuta.Completion{ClaimRef: c.Ref(), Outcome: oc, Attempt: c.Attempt, StartedAt: base, FinishedAt: base}
	}
	res, err := st.s.CompleteTasks(ctxT(t), []batuta.Completion{comp(cs["a"], batuta.OutcomeSucceeded), comp(cs["b"], batuta.OutcomeSucceeded)})
	st.must(err)
	if res[0].Err != nil || res[1].Err != nil || res[0].Ready+res[1].Ready != 1 {
		t.Fatalf("a and b succeeded in one batch: %+v, want h ready once", res)
	}
	h := st.claim(base, 10)
	if got := claimNames(h); !reflect.DeepEqual(got, []string{"h"}) {
		t.Fatalf("claim %v, want [h]", got)
	}
	st.completeOK(h[0], batuta.OutcomeSucceeded, nil, base)
	r := st.complete(cs["c"], batuta.OutcomeUpstreamFailed, nil, "up", base)
	if r.Err != nil || r.Ready != 1 || r.RunFinished != "" {
		t.Fatalf("c upstream_failed: %+v, want f ready", r)
	}
	f := st.claim(base, 10)
	if got := claimNames(f); !reflect.DeepEqual(got, []string{"f"}) {
		t.Fatalf("claim %v, want [f]", got)
	}
	if r := st.completeOK(f[0], batuta.OutcomeSucceeded, nil, base); r.RunFinished != batuta.RunFailed {
		t.Fatalf("run finished %q, want failed", r.RunFinished)
	}
	// No match: all succeed, the FireOn failed task waits for all three.
	id2 := st.create("wf", "e2", []batuta.TaskSpec{
		{Name: "a"}, {Name: "b"}, {Name: "f", Deps: []int{0, 1}, FireOn: batuta.TaskFailed},
	})
	cs = st.byTask(st.claim(base, 10))
	if r := st.completeOK(cs["a"], batuta.OutcomeSucceeded, nil, base); r.Ready != 0 {
		t.Fatalf("a succeeded: ready %d, want 0", r.Ready)
	}
	if got := st.claim(base, 10); len(got) != 0 {
		t.Fatalf("claimed %v with b running", claimNames(got))
	}
	if r := st.completeOK(cs["b"], batuta.OutcomeSucceeded, nil, base); r.Ready != 1 {
		t.Fatalf("b succeeded: ready %d, want 1", r.Ready)
	}
	f = st.claim(base, 10)
	if len(f) != 1 || f[0].Task != "f" || f[0].RunID != id2 {
		t.Fatalf("claim %+v, want f of the second run", f)
	}
	if r := st.completeOK(f[0], batuta.OutcomeSkipped, nil, base); r.RunFinished != batuta.RunSucceeded {
		t.Fatalf("second run finished %q, want succeeded", r.RunFinished)
	}
	_ = id
}

// testFireEarlyCancel: canceling a run whose early task already finished
// or is ready cancels what is pending, and the run ends canceled once the
// running dependencies report.
func testFireEarlyCancel(t *testing.T, st *storeT) {
	id := st.create("wf", "e1", []batuta.TaskSpec{
		{Name: "a"}, {Name: "b"},
		{Name: "h", Deps: []int{0, 1}, FireOn: batuta.TaskSucceeded},
		{Name: "after", Deps: []int{2}},
	})
	cs := st.byTask(st.claim(base, 10))
	if r := st.completeOK(cs["a"], batuta.OutcomeSucceeded, nil, base); r.Ready != 1 {
		t.Fatalf("a succeeded: ready %d, want 1", r.Ready)
	}
	ok, err := st.s.CancelRun(ctxT(t), id, "stop", base)
	st.must(err)
	if !ok {
		t.Fatal("CancelRun returned false")
	}
	if got := st.claim(base, 10); len(got) != 0 {
		t.Fatalf("claimed %v after cancel", claimNames(got))
	}
	r := st.get(id)
	if taskState(r, "h") != batuta.TaskCanceled || taskState(r, "after") != batuta.TaskCanceled || r.Finished() {
		t.Fatalf("after cancel: h %s after %s run %s", taskState(r, "h"), taskState(r, "after"), r.State)
	}
	if res := st.completeOK(cs["b"], batuta.OutcomeCanceled, nil, base); res.RunFinished != batuta.RunCanceled {
		t.Fatalf("last running task reported: run finished %q, want canceled", res.RunFinished)
	}
}
