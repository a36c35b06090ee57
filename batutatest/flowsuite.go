package batutatest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// TestFlow runs the flow controls end to end through an Orchestrator on the
// store newStore returns (a fresh, empty one per subtest): delayed runs,
// priorities, pause and resume, workflow and task concurrency limits, the
// cancel strategies, rate limits, debounce and SubmitMany. TestStore holds
// the store's side of the contract call by call; this suite checks that the
// orchestrator and the store together give what docs/flow.md promises.
//
// It asserts orderings and bounds only (no start before its time, no limit
// exceeded, no slot shared), never durations, so it holds on a loaded
// machine.
func TestFlow(t *testing.T, newStore func(t *testing.T) batuta.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, st batuta.Store)
	}{
		{"DelayedRun", flowDelayed},
		{"Priority", flowPriority},
		{"PauseResume", flowPause},
		{"WorkflowConcurrencyPerKey", flowWorkflowLimit},
		{"TaskConcurrency", flowTaskLimit},
		{"CancelNewest", flowCancelNewest},
		{"RateLimit", flowRate},
		{"Debounce", flowDebounce},
		{"SubmitMany", flowSubmitMany},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t))
		})
	}
}

// flowOrch starts an orchestrator on st with wfs registered and stops it
// when the test ends.
func flowOrch(t *testing.T, st batuta.Store, workers int, wfs ...*batuta.Workflow) *batuta.Orchestrator {
	t.Helper()
	o, err := batuta.New(batuta.Config{Store: st, Workers: workers, NoLogHooks: true,
		PollInterval: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	for _, wf := range wfs {
		if err := o.Register(wf); err != nil {
			t.Fatalf("Register %s: %v", wf.Name, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("batutatest: orchestrator did not stop within 30s")
		}
	})
	return o
}

func flowCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func flowWait(t *testing.T, o *batuta.Orchestrator, ids ...string) []*batuta.Run {
	t.Helper()
	ctx := flowCtx(t)
	out := make([]*batuta.Run, len(ids))
	for i, id := range ids {
		r, err := o.Wait(ctx, id)
		if err != nil {
			t.Fatalf("Wait %s: %v", id, err)
		}
		out[i] = r
	}
	return out
}

func flowSubmit(t *testing.T, o *batuta.Orchestrator, wf string, ev batuta.Event, opts ...batuta.SubmitOption) string {
	t.Helper()
	id, err := o.Submit(flowCtx(t), wf, ev, opts...)
	if err != nil {
		t.Fatalf("Submit %s %q: %v", wf, ev.ID, err)
	}
	return id
}

// flowMeter counts bodies in progress per key and keeps the high-water mark.
type flowMeter struct {
	mu   sync.Mutex
	cur  map[string]int
	high map[string]int
}

func newFlowMeter() *flowMeter { return &flowMeter{cur: map[string]int{}, high: map[string]int{}} }

func (m *flowMeter) enter(k string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cur[k]++
	m.high[k] = max(m.high[k], m.cur[k])
}

func (m *flowMeter) leave(k string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cur[k]--
}

func (m *flowMeter) highs() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]int, len(m.high))
	for k, v := range m.high {
		out[k] = v
	}
	return out
}

// holdFor keeps a task body busy for d or until ctx ends.
func holdFor(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func flowDelayed(t *testing.T, st batuta.Store) {
	var startedAt sync.Map
	o := flowOrch(t, st, 4, &batuta.Workflow{Name: "delayed", Tasks: []batuta.Task{{Name: "a",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			startedAt.Store(in.Event().ID, time.Now())
			return nil, nil
		}}}})
	const delay = 400 * time.Millisecond
	submitted := time.Now()
	id := flowSubmit(t, o, "delayed", batuta.Event{ID: "later"}, batuta.StartAfter(delay))
	now := flowSubmit(t, o, "delayed", batuta.Event{ID: "now"})
	r, err := o.GetRun(flowCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if r.StartAt.IsZero() || r.StartAt.Before(submitted.Add(delay)) {
		t.Fatalf("Run.StartAt = %v, want at least %v", r.StartAt, submitted.Add(delay))
	}
	if again := flowSubmit(t, o, "delayed", batuta.Event{ID: "later"}); again != id {
		t.Fatalf("a delayed run is deduplicated by Event.ID: got run %s, want %s", again, id)
	}
	for _, r := range flowWait(t, o, id, now) {
		if r.State != batuta.RunSucceeded {
			t.Fatalf("run %s: %s (%s)", r.Event.ID, r.State, r.Error)
		}
	}
	at, _ := startedAt.Load("later")
	if at.(time.Time).Before(submitted.Add(delay)) {
		t.Fatalf("the delayed run started %v before its time", submitted.Add(delay).Sub(at.(time.Time)))
	}
}

func flowPriority(t *testing.T, st batuta.Store) {
	gate := make(chan struct{})
	var mu sync.Mutex
	var order []string
	o := flowOrch(t, st, 1, &batuta.Workflow{Name: "prio", Tasks: []batuta.Task{{Name: "a",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			if in.Event().ID == "blocker" {
				select {
				case <-gate:
				case <-ctx.Done():
				}
				return nil, nil
			}
			mu.Lock()
			order = append(order, in.Event().ID)
			mu.Unlock()
			return nil, nil
		}}}})
	blocker := flowSubmit(t, o, "prio", batuta.Event{ID: "blocker"})
	waitStarted(t, o, blocker)
	ids := []string{
		flowSubmit(t, o, "prio", batuta.Event{ID: "low"}, batuta.WithPriority(-1)),
		flowSubmit(t, o, "prio", batuta.Event{ID: "mid1"}),
		flowSubmit(t, o, "prio", batuta.Event{ID: "high"}, batuta.WithPriority(5)),
		flowSubmit(t, o, "prio", batuta.Event{ID: "mid2"}),
	}
	close(gate)
	flowWait(t, o, append(ids, blocker)...)
	mu.Lock()
	defer mu.Unlock()
	want := []string{"high", "mid1", "mid2", "low"}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("start order %v, want %v (higher priority first, then first come first served)", order, want)
	}
}

// waitStarted waits until the run's first task is running.
func waitStarted(t *testing.T, o *batuta.Orchestrator, id string) {
	t.Helper()
	ctx := flowCtx(t)
	for {
		r, err := o.GetRun(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if r.State != batuta.RunPending {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("run %s never started", id)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func flowPause(t *testing.T, st batuta.Store) {
	var ran atomic.Int32
	body := func(ctx context.Context, in *batuta.Input) (any, error) {
		if in.Workflow() == "paused" {
			ran.Add(1)
		}
		return nil, nil
	}
	o := flowOrch(t, st, 4,
		&batuta.Workflow{Name: "paused", Tasks: []batuta.Task{{Name: "a", Run: body}}},
		&batuta.Workflow{Name: "other", Tasks: []batuta.Task{{Name: "a", Run: body}}})
	ctx := flowCtx(t)
	if err := o.Pause(ctx, "paused"); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	var held []string
	for i := range 3 {
		held = append(held, flowSubmit(t, o, "paused", batuta.Event{ID: fmt.Sprint(i)}))
	}
	// Runs of another workflow, submitted after, finish: the claims went
	// past the paused ones.
	for i := range 3 {
		r := flowWait(t, o, flowSubmit(t, o, "other", batuta.Event{ID: fmt.Sprint(i)}))[0]
		if r.State != batuta.RunSucceeded {
			t.Fatalf("other run: %s", r.State)
		}
	}
	if n := ran.Load(); n != 0 {
		t.Fatalf("%d tasks of a paused workflow started", n)
	}
	if err := o.Resume(ctx, "paused"); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	for _, r := range flowWait(t, o, held...) {
		if r.State != batuta.RunSucceeded {
			t.Fatalf("resumed run: %s (%s)", r.State, r.Error)
		}
	}
}

func flowWorkflowLimit(t *testing.T, st batuta.Store) {
	m := newFlowMeter()
	o := flowOrch(t, st, 8, &batuta.Workflow{Name: "perkey",
		Concurrency: &batuta.Concurrency{Key: func(ev batuta.Event) string { return ev.Subject }, Max: 1},
		Tasks: []batuta.Task{
			{Name: "a", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				m.enter(in.Event().Subject)
				holdFor(ctx, 5*time.Millisecond)
				m.leave(in.Event().Subject)
				return nil, nil
			}},
			{Name: "b", Deps: []string{"a"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				m.enter(in.Event().Subject)
				holdFor(ctx, 5*time.Millisecond)
				m.leave(in.Event().Subject)
				return nil, nil
			}},
		}})
	var ids []string
	for i := range 24 {
		ids = append(ids, flowSubmit(t, o, "perkey", batuta.Event{ID: fmt.Sprint(i), Subject: fmt.Sprint("k", i%3)}))
	}
	for _, r := range flowWait(t, o, ids...) {
		if r.State != batuta.RunSucceeded {
			t.Fatalf("run %s: %s (%s)", r.Event.ID, r.State, r.Error)
		}
	}
	for k, h := range m.highs() {
		if h != 1 {
			t.Errorf("key %s: %d tasks of its runs ran at once; Max 1 counts whole runs, so 1 at a time", k, h)
		}
	}
}

func flowTaskLimit(t *testing.T, st batuta.Store) {
	m := newFlowMeter()
	o := flowOrch(t, st, 8, &batuta.Workflow{Name: "tasklimit", Tasks: []batuta.Task{{Name: "a",
		Concurrency: &batuta.Concurrency{Max: 2},
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			m.enter("a")
			holdFor(ctx, 5*time.Millisecond)
			m.leave("a")
			return nil, nil
		}}}})
	var ids []string
	for i := range 20 {
		ids = append(ids, flowSubmit(t, o, "tasklimit", batuta.Event{ID: fmt.Sprint(i)}))
	}
	flowWait(t, o, ids...)
	if h := m.highs()["a"]; h > 2 || h < 1 {
		t.Fatalf("high-water mark of task a: %d, want 1..2 (Max 2)", h)
	}
}

func flowCancelNewest(t *testing.T, st batuta.Store) {
	gate := make(chan struct{})
	o := flowOrch(t, st, 4, &batuta.Workflow{Name: "newest",
		Concurrency: &batuta.Concurrency{Max: 1, Strategy: batuta.ConcurrencyCancelNewest},
		Tasks: []batuta.Task{{Name: "a", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			select {
			case <-gate:
			case <-ctx.Done():
			}
			return nil, nil
		}}}})
	first := flowSubmit(t, o, "newest", batuta.Event{ID: "first"})
	waitStarted(t, o, first)
	second := flowSubmit(t, o, "newest", batuta.Event{ID: "second"})
	r := flowWait(t, o, second)[0]
	if r.State != batuta.RunCanceled || r.Error == "" {
		t.Fatalf("a run over a CancelNewest limit: state %s error %q, want canceled with a reason", r.State, r.Error)
	}
	close(gate)
	if r := flowWait(t, o, first)[0]; r.State != batuta.RunSucceeded {
		t.Fatalf("the run in progress: %s", r.State)
	}
}

func flowRate(t *testing.T, st batuta.Store) {
	const per = 50 * time.Millisecond // Limit 1 per 50ms, Burst 1: slots 50ms apart
	var mu sync.Mutex
	var starts []time.Time
	o := flowOrch(t, st, 4, &batuta.Workflow{Name: "rated", Tasks: []batuta.Task{{Name: "a",
		RateLimit: &batuta.RateLimit{Name: "flow-suite", Limit: 1, Per: per},
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			mu.Lock()
			starts = append(starts, time.Now())
			mu.Unlock()
			return nil, nil
		}}}})
	t0 := time.Now() // no slot of the key is earlier: it is fresh
	var ids []string
	for i := range 6 {
		ids = append(ids, flowSubmit(t, o, "rated", batuta.Event{ID: fmt.Sprint(i)}))
	}
	for _, r := range flowWait(t, o, ids...) {
		if r.State != batuta.RunSucceeded {
			t.Fatalf("run %s: %s (%s)", r.Event.ID, r.State, r.Error)
		}
		if n := len(r.Task("a").Attempts); n != 1 {
			t.Fatalf("run %s: %d attempts; waiting for a rate slot spends none", r.Event.ID, n)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// No start before its slot, and slots Per apart from the first, which
	// is not before t0: the k-th start (0-based, in time order) comes at
	// least k*per after t0. (A start may be late, so the distance between
	// two observed starts has no lower bound; their slots do.)
	sorted := append([]time.Time(nil), starts...)
	sortTimes(sorted)
	for k, s := range sorted {
		if s.Before(t0.Add(time.Duration(k) * per)) {
			t.Fatalf("start %d came %v after the first submit; a 1 per %v limit allows it no earlier than %v", k, s.Sub(t0), per, time.Duration(k)*per)
		}
	}
}

func sortTimes(ts []time.Time) {
	for i := 1; i < len(ts); i++ {
		for j := i; j > 0 && ts[j].Before(ts[j-1]); j-- {
			ts[j], ts[j-1] = ts[j-1], ts[j]
		}
	}
}

func flowDebounce(t *testing.T, st batuta.Store) {
	var runs atomic.Int32
	var last atomic.Value
	o := flowOrch(t, st, 4, &batuta.Workflow{Name: "debounced",
		Debounce: &batuta.Debounce{Key: func(ev batuta.Event) string { return ev.Subject }, Window: time.Second, MaxWait: 30 * time.Second},
		Tasks: []batuta.Task{{Name: "a", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			runs.Add(1)
			last.Store(string(in.Event().Data))
			return nil, nil
		}}}})
	var ids []string
	began := time.Now()
	for i := range 3 {
		data, _ := json.Marshal(i)
		ids = append(ids, flowSubmit(t, o, "debounced", batuta.Event{ID: fmt.Sprint("e", i), Subject: "cust", Data: data}))
	}
	// The run's start is at least a Window after the last merged event, so
	// if the three submits took less than a Window they must have merged.
	// (A machine stalled for a whole window between two submits may
	// legitimately start a second run: then the merge is not checked.)
	within := time.Since(began) < time.Second
	merged := ids[0] == ids[1] && ids[1] == ids[2]
	if within && !merged {
		t.Fatalf("three events within the window started runs %v; debounce makes one", ids)
	}
	r := flowWait(t, o, ids[2])[0]
	if r.State != batuta.RunSucceeded {
		t.Fatalf("debounced run: %s (%s)", r.State, r.Error)
	}
	if !merged {
		t.Logf("submits took longer than the window (machine stalled); merge not checked: %v", ids)
		return
	}
	if got := last.Load(); got != "2" {
		t.Fatalf("the debounced run saw data %v, want the last event's (2)", got)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("%d runs for one burst, want 1", n)
	}
}

func flowSubmitMany(t *testing.T, st batuta.Store) {
	o := flowOrch(t, st, 4, &batuta.Workflow{Name: "many", Tasks: []batuta.Task{{Name: "a",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) { return nil, nil }}}})
	evs := make([]batuta.Event, 0, 101)
	for i := range 100 {
		evs = append(evs, batuta.Event{ID: fmt.Sprint(i)})
	}
	evs = append(evs, batuta.Event{ID: "7"}) // a duplicate inside the batch
	ids, err := o.SubmitMany(flowCtx(t), "many", evs, batuta.WithPriority(1))
	if err != nil {
		t.Fatalf("SubmitMany: %v", err)
	}
	if len(ids) != len(evs) || ids[100] != ids[7] {
		t.Fatalf("SubmitMany returned %d ids (want %d), duplicate -> %s vs %s", len(ids), len(evs), ids[len(ids)-1], ids[7])
	}
	for _, r := range flowWait(t, o, ids[:100]...) {
		if r.State != batuta.RunSucceeded || r.Priority != 1 {
			t.Fatalf("run %s: %s priority %d", r.Event.ID, r.State, r.Priority)
		}
	}
}
