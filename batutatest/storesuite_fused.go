package batutatest

import (
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// fusedCases hold a store that implements batuta.ClaimingCompleter to its
// contract; they skip for stores that do not.
var fusedCases = []struct {
	name string
	fn   func(t *testing.T, st *storeT)
}{
	{"CompleteAndClaimSuccessor", testFusedSuccessor},
	{"CompleteAndClaimLimits", testFusedLimits},
	{"CompleteAndClaimLeaseLost", testFusedLeaseLost},
	{"CompleteAndClaimConcurrent", testFusedConcurrent},
	{"CreateAndClaimRoot", testCreateClaimRoot},
	{"CreateAndClaimDuplicate", testCreateClaimDuplicate},
	{"CreateAndClaimBatch", func(t *testing.T, st *storeT) { testCreateClaimBatch(t, st, 0) }},
	{"CreateAndClaimBatchUnderCap", func(t *testing.T, st *storeT) { testCreateClaimBatch(t, st, 10000) }},
	{"SignalAndClaim", testSignalClaim},
}

func (st *storeT) claimer() batuta.ClaimingCompleter {
	st.t.Helper()
	cc, ok := st.s.(batuta.ClaimingCompleter)
	if !ok {
		st.t.Skip("the store does not implement batuta.ClaimingCompleter")
	}
	return cc
}

func (st *storeT) completeClaim(c batuta.Claim, out any, at time.Time, limit int, wfs ...string) (batuta.CompleteResult, []batuta.Claim) {
	st.t.Helper()
	res, cs, err := st.claimer().CompleteTasksAndClaim(ctxT(st.t), []batuta.Completion{{
		ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: c.Attempt, Output: out,
		StartedAt: at, FinishedAt: at,
	}}, batuta.ClaimParams{Owner: "w1", Workflows: wfs, Limit: limit, Now: at, LeaseUntil: at.Add(time.Minute)})
	st.must(err)
	if len(res) != 1 {
		st.fatalf("CompleteTasksAndClaim returned %d results for 1 completion", len(res))
	}
	return res[0], cs
}

// testFusedSuccessor: the claim sees the task the completion made ready,
// with its upstream output, under a lease that fences as ClaimTasks' do.
func testFusedSuccessor(t *testing.T, st *storeT) {
	st.claimer()
	chain := []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{1}}}
	id := st.create("wf", "e1", chain)
	cs := st.claim(base, 1)
	if len(cs) != 1 || cs[0].Task != "a" {
		t.Fatalf("first claim = %v, want [a]", claimNames(cs))
	}
	res, next := st.completeClaim(cs[0], json.RawMessage(`"A"`), base, 1)
	if res.Err != nil || res.Ready != 1 {
		t.Fatalf("completing a: %+v, want ready 1", res)
	}
	if len(next) != 1 || next[0].Task != "b" || next[0].RunID != id || next[0].Attempt != 1 {
		t.Fatalf("claimed with a's completion: %+v, want b of run %s", next, id)
	}
	if len(next[0].Upstream) != 1 || next[0].Upstream[0].Name != "a" {
		t.Fatalf("upstream of b = %+v", next[0].Upstream)
	}
	if s, err := batuta.OutputAs[string](next[0].Upstream[0].Output); err != nil || s != "A" {
		t.Fatalf("output of a seen by b = %q, %v", s, err)
	}
	if r := st.get(id); taskState(r, "b") != batuta.TaskRunning {
		t.Fatalf("b is %s after being claimed, want running", taskState(r, "b"))
	}
	if cs := st.claim(base, 10); len(cs) != 0 {
		t.Fatalf("b claimed twice: %v", claimNames(cs))
	}
	// The claim's token fences: the next completion records under it.
	res, next = st.completeClaim(next[0], nil, base.Add(time.Millisecond), 1)
	if res.Err != nil || len(next) != 1 || next[0].Task != "c" {
		t.Fatalf("completing b: %+v, claimed %v, want c", res, claimNames(next))
	}
	res, next = st.completeClaim(next[0], nil, base.Add(2*time.Millisecond), 1)
	if res.Err != nil || res.RunFinished != batuta.RunSucceeded || len(next) != 0 {
		t.Fatalf("completing c: %+v, claimed %v, want the run finished and nothing claimed", res, claimNames(next))
	}
}

// testFusedLimits: Limit 0 claims nothing (the task stays ready), the
// claim honours Workflows and Limit, and a claim may take a task the
// completion did not make ready.
func testFusedLimits(t *testing.T, st *storeT) {
	st.claimer()
	two := []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}}
	st.create("wf", "e1", two)
	cs := st.claim(base, 1, "wf")
	res, next := st.completeClaim(cs[0], nil, base, 0)
	if res.Err != nil || res.Ready != 1 || len(next) != 0 {
		t.Fatalf("Limit 0: %+v, claimed %v; want ready 1 and nothing claimed", res, claimNames(next))
	}
	b := st.claim(base, 10)
	if got := claimNames(b); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("after a Limit-0 completion the ready task is %v, want [b]", got)
	}
	// Another workflow's ready task is not claimed for "wf" only, and
	// is for every workflow.
	st.create("other", "e2", []batuta.TaskSpec{{Name: "x"}})
	res, next = st.completeClaim(b[0], nil, base, 5, "wf")
	if res.Err != nil || res.RunFinished != batuta.RunSucceeded || len(next) != 0 {
		t.Fatalf("claim filtered to wf: %+v, claimed %v; want nothing claimed", res, claimNames(next))
	}
	st.create("wf", "e3", two)
	cs = st.claim(base, 1, "wf")
	_, next = st.completeClaim(cs[0], nil, base, 5)
	if got := claimNames(next); !reflect.DeepEqual(got, []string{"b", "x"}) {
		t.Fatalf("claim for every workflow, Limit 5 = %v, want [b x]", got)
	}
}

// testFusedLeaseLost: a completion under a void token is refused with
// ErrLeaseLost as CompleteTasks refuses it, and the claim still happens.
func testFusedLeaseLost(t *testing.T, st *storeT) {
	st.claimer()
	st.create("wf", "e1", []batuta.TaskSpec{{Name: "a"}})
	st.create("wf", "e2", []batuta.TaskSpec{{Name: "a"}})
	cs := st.claim(base, 1)
	stale := cs[0]
	stale.Token++
	res, next := st.completeClaim(stale, nil, base, 1)
	if !errors.Is(res.Err, batuta.ErrLeaseLost) {
		t.Fatalf("completion under a void token: %v, want ErrLeaseLost", res.Err)
	}
	if len(next) != 1 || next[0].RunID == cs[0].RunID {
		t.Fatalf("claim beside a refused completion = %+v, want the other run's a", next)
	}
	if r := st.get(cs[0].RunID); taskState(r, "a") != batuta.TaskRunning {
		t.Fatalf("the refused completion changed the task: %s", taskState(r, "a"))
	}
}

// testFusedConcurrent: many workers completing and claiming at once never
// get the same task twice, and every task runs once.
func testFusedConcurrent(t *testing.T, st *storeT) {
	st.claimer()
	const runs, workers = 40, 8
	chain := []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{1}}}
	ids := map[string]bool{}
	for i := range runs {
		ids[st.create("wf", "e"+string(rune('A'+i)), chain)] = true
	}
	var mu sync.Mutex
	seen := map[string]int{}
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc := st.s.(batuta.ClaimingCompleter)
			owner := "w" + string(rune('0'+w))
			now := base
			cs, err := st.s.ClaimTasks(ctxT(t), batuta.ClaimParams{Owner: owner, Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute)})
			for err == nil && len(cs) > 0 {
				c := cs[0]
				mu.Lock()
				seen[c.RunID+"/"+c.Task]++
				mu.Unlock()
				var res []batuta.CompleteResult
				res, cs, err = cc.CompleteTasksAndClaim(ctxT(t), []batuta.Completion{{
					ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: c.Attempt, StartedAt: now, FinishedAt: now,
				}}, batuta.ClaimParams{Owner: owner, Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute)})
				if err == nil && res[0].Err != nil {
					err = res[0].Err
				}
				if err == nil && len(cs) == 0 {
					// Another worker may have just made tasks ready.
					cs, err = st.s.ClaimTasks(ctxT(t), batuta.ClaimParams{Owner: owner, Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute)})
				}
			}
			errc <- err
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		st.must(err)
	}
	// Workers that stopped early leave ready tasks: drain them.
	for cs := st.claim(base, 1); len(cs) > 0; cs = st.claim(base, 1) {
		seen[cs[0].RunID+"/"+cs[0].Task]++
		st.completeOK(cs[0], batuta.OutcomeSucceeded, nil, base)
	}
	if len(seen) != runs*len(chain) {
		t.Fatalf("%d distinct tasks ran, want %d", len(seen), runs*len(chain))
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("task %s claimed %d times", k, n)
		}
	}
	for id := range ids {
		if r := st.get(id); r.State != batuta.RunSucceeded {
			t.Fatalf("run %s is %s, want succeeded", id, r.State)
		}
	}
}

// createClaim calls CreateRunsAndClaim with one run.
func (st *storeT) createClaim(nr batuta.NewRun, p batuta.ClaimParams) (string, bool, []batuta.Claim, error) {
	res, cs, err := st.creator().CreateRunsAndClaim(ctxT(st.t), []batuta.NewRun{nr}, p)
	if err != nil {
		return "", false, nil, err
	}
	if len(res) != 1 {
		st.fatalf("CreateRunsAndClaim answered %d results for 1 run", len(res))
	}
	return res[0].ID, res[0].Created, cs, nil
}

func (st *storeT) creator() batuta.CreatingClaimer {
	st.t.Helper()
	cc, ok := st.s.(batuta.CreatingClaimer)
	if !ok {
		st.t.Skip("the store does not implement batuta.CreatingClaimer")
	}
	return cc
}

func (st *storeT) newRun(wf, eventID string, tasks []batuta.TaskSpec) batuta.NewRun {
	st.seq++
	at := base.Add(time.Duration(st.seq) * time.Millisecond)
	return batuta.NewRun{
		ID: newID(at), Workflow: wf, Tasks: tasks, CreatedAt: at,
		Event: batuta.Event{ID: eventID, Source: "test", Type: "t", Time: base, Data: []byte(`{"n":1}`)},
	}
}

// testCreateClaimRoot: the claim made with a run's creation takes its root
// task (with the event), Limit 0 claims nothing, and the claimed task is
// not claimed again.
func testCreateClaimRoot(t *testing.T, st *storeT) {
	st.creator()
	chain := []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}}
	nr := st.newRun("wf", "e1", chain)
	nr.MaxActive = 10000 // the orchestrator's default: under it, the claim is made
	p := batuta.ClaimParams{Owner: "w1", Limit: 1, Now: base, LeaseUntil: base.Add(time.Minute)}
	id, created, cs, err := st.createClaim(nr, p)
	st.must(err)
	if !created || id != nr.ID {
		t.Fatalf("CreateRunAndClaim = %q, created=%v; want %q, true", id, created, nr.ID)
	}
	if len(cs) != 1 || cs[0].RunID != id || cs[0].Task != "a" || cs[0].Attempt != 1 {
		t.Fatalf("claimed with the creation: %+v, want a of %s", cs, id)
	}
	if string(cs[0].Event.Data) != `{"n":1}` || cs[0].Event.ID != "e1" {
		t.Fatalf("the claim's event = %+v", cs[0].Event)
	}
	if r := st.get(id); taskState(r, "a") != batuta.TaskRunning {
		t.Fatalf("a is %s after being claimed, want running", taskState(r, "a"))
	}
	if more := st.claim(base, 10); len(more) != 0 {
		t.Fatalf("claimed again: %v", claimNames(more))
	}
	st.completeOK(cs[0], batuta.OutcomeSucceeded, nil, base)
	// Limit 0: created, nothing claimed; its root stays ready.
	nr2 := st.newRun("wf", "e2", chain)
	p.Limit = 0
	id2, created, cs, err := st.createClaim(nr2, p)
	st.must(err)
	if !created || id2 != nr2.ID || len(cs) != 0 {
		t.Fatalf("Limit 0: %q created=%v claims %v", id2, created, claimNames(cs))
	}
	got := st.claim(base, 10)
	names := map[string]string{}
	for _, c := range got {
		names[c.RunID] = c.Task
	}
	if names[id] != "b" || names[id2] != "a" || len(got) != 2 {
		t.Fatalf("ready after both creations: %+v, want b of the first run and a of the second", names)
	}
}

// testCreateClaimDuplicate: a second event with the same ID returns the
// existing run, creates nothing, and never claims that run's task twice.
func testCreateClaimDuplicate(t *testing.T, st *storeT) {
	st.creator()
	one := []batuta.TaskSpec{{Name: "a"}}
	nr := st.newRun("wf", "dup", one)
	p := batuta.ClaimParams{Owner: "w1", Limit: 1, Now: base, LeaseUntil: base.Add(time.Minute)}
	id, _, cs, err := st.createClaim(nr, p)
	st.must(err)
	if len(cs) != 1 {
		t.Fatalf("first creation claimed %d tasks, want 1", len(cs))
	}
	again := st.newRun("wf", "dup", one)
	id2, created, cs2, err := st.createClaim(again, p)
	st.must(err)
	if created || id2 != id {
		t.Fatalf("duplicate: %q created=%v, want %q, false", id2, created, id)
	}
	for _, c := range cs2 {
		if c.RunID == id {
			t.Fatalf("the duplicate's claim took the running task again: %+v", c)
		}
	}
	// The claim of a duplicate's call takes other runs' ready tasks, and
	// hands back what it took: alone, then first in a batch with a new run.
	// (A task taken and not handed back is stranded until its lease ends.)
	other := st.create("wf", "other", one)
	id3, created, cs3, err := st.createClaim(st.newRun("wf", "dup", one), p)
	st.must(err)
	if created || id3 != id {
		t.Fatalf("duplicate: %q created=%v, want %q, false", id3, created, id)
	}
	st.accountFor("a duplicate alone", cs3, 1, other)
	other2 := st.create("wf", "other2", one)
	fresh := st.newRun("wf", "fresh", one)
	p.Limit = 2
	res, cs4, err := st.creator().CreateRunsAndClaim(ctxT(t), []batuta.NewRun{st.newRun("wf", "dup", one), fresh}, p)
	st.must(err)
	if len(res) != 2 || res[0].Created || res[0].ID != id || !res[1].Created || res[1].ID != fresh.ID {
		t.Fatalf("batch led by a duplicate: %+v, want %s existing, then %s created", res, id, fresh.ID)
	}
	st.accountFor("a batch led by a duplicate", cs4, 2, other2, fresh.ID)
}

// accountFor checks that the root tasks of runs, all ready before a call
// that claimed cs (at most limit), are each either in cs or still
// claimable, and that nothing else was claimable or claimed.
func (st *storeT) accountFor(what string, cs []batuta.Claim, limit int, runs ...string) {
	st.t.Helper()
	if len(cs) > limit {
		st.fatalf("%s: claimed %d tasks with Limit %d", what, len(cs), limit)
	}
	want := map[string]bool{}
	for _, id := range runs {
		want[id] = true
	}
	seen := map[string]bool{}
	for _, c := range append(cs, st.claim(base, 10)...) {
		if !want[c.RunID] || seen[c.RunID] {
			st.fatalf("%s: claim %+v is not the root of one of %v, or twice", what, c, runs)
		}
		seen[c.RunID] = true
	}
	for _, id := range runs {
		if !seen[id] {
			st.fatalf("%s: the ready task of run %s was neither in the call's claims %v nor claimable after it (claimed and not handed back)", what, id, claimNames(cs))
		}
	}
}

// testCreateClaimBatch: a batch of runs created together, claiming up to
// Limit of their root tasks in the same call; the rest stay ready.
func testCreateClaimBatch(t *testing.T, st *storeT, maxActive int) {
	cc := st.creator()
	one := []batuta.TaskSpec{{Name: "a"}}
	runs := []batuta.NewRun{st.newRun("wf", "b1", one), st.newRun("wf", "b2", one), st.newRun("wf", "b3", one)}
	for i := range runs {
		runs[i].MaxActive = maxActive // the orchestrator's default is 10,000
	}
	p := batuta.ClaimParams{Owner: "w1", Limit: 2, Now: base, LeaseUntil: base.Add(time.Minute)}
	res, cs, err := cc.CreateRunsAndClaim(ctxT(t), runs, p)
	st.must(err)
	if len(res) != 3 {
		t.Fatalf("%d results for 3 runs", len(res))
	}
	ids := map[string]bool{}
	for i, r := range res {
		if !r.Created || r.ID != runs[i].ID {
			t.Fatalf("result %d = %+v, want run %s created", i, r, runs[i].ID)
		}
		ids[r.ID] = true
	}
	if len(cs) != 2 {
		t.Fatalf("claimed %d tasks with Limit 2", len(cs))
	}
	rest := st.claim(base, 10)
	seen := map[string]bool{}
	for _, c := range append(cs, rest...) {
		if !ids[c.RunID] || seen[c.RunID] {
			t.Fatalf("claim %+v: not one of the new runs, or its task twice", c)
		}
		seen[c.RunID] = true
	}
	if len(seen) != 3 {
		t.Fatalf("%d of the 3 runs' tasks were claimable in all", len(seen))
	}
}

// testSignalClaim: SignalSend.Claim claims, in the delivery's transaction,
// the task the delivery made ready (a store that claims with its writes,
// a CreatingClaimer, must; others may return none). A buffered signal
// claims nothing.
func testSignalClaim(t *testing.T, st *storeT) {
	_, must := st.s.(batuta.CreatingClaimer)
	id := st.create("wf", "e1", []batuta.TaskSpec{{Name: "w", Signal: "go"}, {Name: "next", Deps: []int{0}}})
	st.waitOn(st.claimOne(base, id), base, base.Add(time.Hour), "signal go", "")
	sent := base.Add(time.Second)
	p := &batuta.ClaimParams{Owner: "w1", Limit: 1, Now: sent, LeaseUntil: sent.Add(time.Minute)}
	res, err := st.s.SendSignal(ctxT(t), batuta.SignalSend{RunID: id, Name: "go", Data: json.RawMessage(`{"v":7}`), SentAt: sent, Claim: p})
	st.must(err)
	if !res.Delivered || res.Ready != 1 {
		t.Fatalf("SendSignal: %+v, want delivered, 1 ready", res)
	}
	switch {
	case len(res.Claims) == 0 && must:
		t.Fatalf("a CreatingClaimer store claimed nothing with the delivery")
	case len(res.Claims) > 1:
		t.Fatalf("claimed %d tasks with Limit 1", len(res.Claims))
	case len(res.Claims) == 1:
		c := res.Claims[0]
		if c.RunID != id || c.Task != "next" || len(c.Upstream) != 1 || !sameJSON(c.Upstream[0].Output, `{"v":7}`) {
			t.Fatalf("claimed with the delivery: %+v, want next with the signal's data upstream", c)
		}
		if more := st.claim(sent, 10); len(more) != 0 {
			t.Fatalf("next claimed twice: %v", claimNames(more))
		}
		st.completeOK(c, batuta.OutcomeSucceeded, nil, sent)
	default:
		c := st.claimOne(sent, id)
		st.completeOK(c, batuta.OutcomeSucceeded, nil, sent)
	}
	if r := st.get(id); r.State != batuta.RunSucceeded {
		t.Fatalf("run %s after next completed, want succeeded", r.State)
	}
	// Buffered (nothing waits yet): no claim.
	id2 := st.create("wf", "e2", []batuta.TaskSpec{{Name: "w", Signal: "go"}})
	res, err = st.s.SendSignal(ctxT(t), batuta.SignalSend{RunID: id2, Name: "go", SentAt: sent, Claim: p})
	st.must(err)
	if res.Delivered || len(res.Claims) != 0 {
		t.Fatalf("buffered signal: %+v, want buffered and nothing claimed", res)
	}
}
