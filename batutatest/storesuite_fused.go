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
