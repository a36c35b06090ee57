// Trigger conformance suite.
//
// TestTrigger checks that a batuta.Trigger keeps the delivery contract the
// orchestrator relies on. Every event source (the queue trigger over any
// Queue, the database outbox triggers) runs it unchanged from its own tests:
//
//	func TestTriggerConformance(t *testing.T) {
//		batutatest.TestTrigger(t, batutatest.TriggerSuite{
//			New: func(t *testing.T) (batuta.Trigger, batutatest.TriggerSource) {
//				src := newMySource(t) // a fresh outbox / queue, dropped in t.Cleanup
//				return src.newTrigger(t), src
//			},
//			Restart: func(t *testing.T, src batutatest.TriggerSource) batuta.Trigger {
//				return src.(*mySource).newTrigger(t) // another consumer of the same source
//			},
//		})
//	}
//
// The suite drives the trigger through RunTracking, with a fake batuta.Runs
// of its own, when it is a batuta.TrackingTrigger, and through Run
// otherwise. It checks that:
//   - every emitted event is fired, with a non-empty Event.ID;
//   - events emitted before Run started (a backlog) are fired;
//   - an event whose fire failed (batuta.ErrBusy or any other error) is
//     not lost: it is fired again, with the same Event.ID;
//   - every fire of one event carries the same Event.ID;
//   - with a non-durable store (Runs.Durable() false; TrackingTrigger and
//     Restart only) the source is not released before the run finished: a
//     trigger stopped while its runs are unfinished leaves the events for
//     the next consumer, which fires them again with the same IDs;
//   - Run returns soon after ctx is canceled, even while fire is blocked
//     (the caller's goleak check finds leftover goroutines);
//   - two consumers of one source (Restart only) never fire the same event
//     twice when every fire succeeds against a durable store.
//
// Waits are bounded by TriggerSuite.Timeout; there are no sleeps. Subtests
// run in parallel, each on the source New returns, unless Sequential.
package batutatest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// TriggerSource makes events appear at a trigger's source: it inserts an
// outbox row, publishes a message. Its methods are called from the test
// goroutine (Emit) and from the trigger's goroutines (Key), concurrently.
type TriggerSource interface {
	// Emit makes one event appear at the source. key is unique per call
	// and must be recoverable from the fired Event through Key (put it in
	// the event data, a header, or the event ID).
	Emit(ctx context.Context, key string) error
	// Key extracts the key back from a fired event. It returns "" for an
	// event it does not recognise (the suite reports it).
	Key(ev batuta.Event) string
}

// TriggerSuite drives TestTrigger.
type TriggerSuite struct {
	// New returns a fresh trigger on a fresh, empty source nobody else
	// uses, and the Source that makes events appear at it. It is called
	// once per subtest, registers the source's removal with t.Cleanup, and
	// may call t.Skip (service unreachable) or t.Fatal. Required.
	New func(t *testing.T) (batuta.Trigger, TriggerSource)
	// Restart, if set, returns another trigger (another consumer, as a
	// second process or a restarted one would be) on the same source src
	// that New returned. The non-durable-release and two-consumers cases
	// run only with it.
	Restart func(t *testing.T, src TriggerSource) batuta.Trigger
	// Timeout bounds each wait for something that should happen (events
	// fired, a retry). Default 20 s.
	Timeout time.Duration
	// StopTimeout bounds how long Run may take to return after its ctx
	// was canceled. Default 10 s: generous, to stay clear of a loaded
	// machine; a trigger that does not watch ctx hangs far longer.
	StopTimeout time.Duration
	// Sequential runs the subtests one after another instead of in
	// parallel.
	Sequential bool
}

func (s TriggerSuite) withDefaults() TriggerSuite {
	if s.Timeout == 0 {
		s.Timeout = 20 * time.Second
	}
	if s.StopTimeout == 0 {
		s.StopTimeout = 10 * time.Second
	}
	return s
}

// TestTrigger runs the Trigger conformance suite. See the comment at the
// top of this file for what it checks and how a source wires it.
func TestTrigger(t *testing.T, s TriggerSuite) {
	t.Helper()
	if s.New == nil {
		t.Fatal("batutatest: TriggerSuite.New is required")
	}
	s = s.withDefaults()
	tests := []struct {
		name string
		fn   func(t *testing.T, s TriggerSuite)
	}{
		{"FiresEveryEvent", testTriggerFiresEvery},
		{"FiresEveryEventNonDurable", testTriggerFiresEveryNonDurable},
		{"Backlog", testTriggerBacklog},
		{"FailedFireIsRetried", testTriggerFailedFireRetried},
		{"RedeliveryKeepsID", testTriggerRedeliveryKeepsID},
		{"NonDurableKeepsUnfinished", testTriggerNonDurableKeepsUnfinished},
		{"StopsWhenIdle", testTriggerStopsWhenIdle},
		{"StopsDuringFire", testTriggerStopsDuringFire},
		{"TwoConsumersNoDoubleFire", testTriggerTwoConsumers},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !s.Sequential {
				t.Parallel()
			}
			tc.fn(t, s)
		})
	}
}

// fireRecord is one call of fire.
type fireRecord struct {
	instance int
	key      string
	id       string
	err      error // what the suite's fire returned
}

// fireRecorder is the suite's side of the orchestrator: it records every
// fire of every trigger instance of one subtest, and keeps the fake runs.
type fireRecorder struct {
	src     TriggerSource
	durable bool
	// fail, if set, decides the result of the nth (1-based) fire of key.
	fail func(key string, n int) error
	// block makes every fire wait for its ctx to end and return its error.
	block bool

	mu         sync.Mutex
	changed    chan struct{} // closed and replaced on every change
	fires      []fireRecord
	n          map[string]int    // fires per key
	firstID    map[string]string // ID of the first fire per key
	accepted   map[string]int    // accepted fires per key
	runs       map[string]*fakeRun
	autoFinish bool
	problems   []string
	ticks      map[string]time.Time
}

type fakeRun struct {
	id    string
	ev    batuta.Event
	state batuta.RunState
	done  chan struct{}
}

func newFireRecorder(src TriggerSource, durable bool) *fireRecorder {
	return &fireRecorder{
		src: src, durable: durable,
		changed:  make(chan struct{}),
		n:        map[string]int{},
		firstID:  map[string]string{},
		accepted: map[string]int{},
		runs:     map[string]*fakeRun{},
		ticks:    map[string]time.Time{},
	}
}

// notify wakes the waiters; r.mu must be held.
func (r *fireRecorder) notify() {
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *fireRecorder) problem(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

// fire is the FireFunc of trigger instance inst.
func (r *fireRecorder) fire(ctx context.Context, inst int, ev batuta.Event) (string, error) {
	key := r.src.Key(ev)
	r.mu.Lock()
	if ev.ID == "" {
		r.problem("instance %d fired an event with an empty ID (key %q)", inst, key)
	}
	if key == "" {
		r.problem("instance %d fired an event the source does not recognise: ID %q, data %q", inst, ev.ID, ev.Data)
	}
	r.n[key]++
	n := r.n[key]
	if first, ok := r.firstID[key]; !ok {
		r.firstID[key] = ev.ID
	} else if first != ev.ID {
		r.problem("key %q fired with ID %q, first fired with ID %q: the ID must be stable across redelivery", key, ev.ID, first)
	}
	var err error
	if r.fail != nil {
		err = r.fail(key, n)
	}
	block := r.block
	r.notify() // a fire started (StopsDuringFire waits for that)
	r.mu.Unlock()

	if err == nil && block {
		<-ctx.Done()
		err = ctx.Err()
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.notify()
	r.fires = append(r.fires, fireRecord{instance: inst, key: key, id: ev.ID, err: err})
	if err != nil {
		return "", err
	}
	r.accepted[key]++
	runID := "run-" + ev.ID
	if _, ok := r.runs[runID]; !ok {
		// A duplicate event ID finds the existing run, as the orchestrator's does.
		run := &fakeRun{id: runID, ev: ev, state: batuta.RunPending, done: make(chan struct{})}
		r.runs[runID] = run
		if r.autoFinish {
			r.finishLocked(run)
		}
	}
	return runID, nil
}

func (r *fireRecorder) finishLocked(run *fakeRun) {
	if run.state.Finished() {
		return
	}
	run.state = batuta.RunSucceeded
	close(run.done)
}

// finishAll finishes every run, and from now on every new run at once.
func (r *fireRecorder) finishAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.autoFinish = true
	for _, run := range r.runs {
		r.finishLocked(run)
	}
	r.notify()
}

// check reports the problems recorded by the trigger goroutines.
func (r *fireRecorder) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.problems {
		t.Error(p)
	}
}

// waitFor waits until cond (called with r.mu held) holds, failing the test
// after timeout or when a trigger instance returned early.
func (r *fireRecorder) waitFor(t *testing.T, timeout time.Duration, insts []*triggerRun, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok, ch := cond(), r.changed
		r.mu.Unlock()
		if ok {
			return
		}
		for _, in := range insts {
			select {
			case <-in.done:
				t.Fatalf("waiting for %s: trigger instance %d returned early: %v", what, in.inst, in.err)
			default:
			}
		}
		select {
		case <-ch:
		case <-deadline.C:
			r.check(t)
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

// allAccepted reports whether every key was accepted at least once; r.mu
// must be held.
func (r *fireRecorder) allAccepted(keys []string) bool {
	for _, k := range keys {
		if r.accepted[k] == 0 {
			return false
		}
	}
	return true
}

// suiteRuns is the batuta.Runs of one trigger instance.
type suiteRuns struct {
	r    *fireRecorder
	inst int
}

var _ batuta.Runs = (*suiteRuns)(nil)

func (s *suiteRuns) Workflow() string { return "batutatest-trigger-suite" }

func (s *suiteRuns) Fire(ctx context.Context, ev batuta.Event) (string, error) {
	return s.r.fire(ctx, s.inst, ev)
}

func (s *suiteRuns) Get(_ context.Context, runID string) (*batuta.Run, error) {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	run, ok := s.r.runs[runID]
	if !ok {
		return nil, batuta.ErrRunNotFound
	}
	return &batuta.Run{ID: run.id, Workflow: s.Workflow(), Event: run.ev, State: run.state}, nil
}

func (s *suiteRuns) Wait(ctx context.Context, runID string) (*batuta.Run, error) {
	s.r.mu.Lock()
	run, ok := s.r.runs[runID]
	s.r.mu.Unlock()
	if !ok {
		return nil, batuta.ErrRunNotFound
	}
	select {
	case <-run.done:
		return s.Get(ctx, runID)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *suiteRuns) Cancel(_ context.Context, runID string) error {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	run, ok := s.r.runs[runID]
	if !ok {
		return batuta.ErrRunNotFound
	}
	if !run.state.Finished() {
		run.state = batuta.RunCanceled
		close(run.done)
		s.r.notify()
	}
	return nil
}

func (s *suiteRuns) Durable() bool       { return s.r.durable }
func (s *suiteRuns) Clock() batuta.Clock { return batuta.SystemClock{} }

func (s *suiteRuns) LastTick(_ context.Context, schedule string) (time.Time, error) {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	return s.r.ticks[schedule], nil
}

func (s *suiteRuns) RecordTick(_ context.Context, schedule string, tick time.Time) (bool, error) {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	if !tick.After(s.r.ticks[schedule]) {
		return false, nil
	}
	s.r.ticks[schedule] = tick
	return true, nil
}

// triggerRun is one running trigger instance.
type triggerRun struct {
	inst    int
	cancel  context.CancelFunc
	done    chan struct{}
	err     error // valid once done is closed
	stopped bool
}

// start runs trig as instance inst, through RunTracking if it is a
// TrackingTrigger. The run is stopped at the end of the test at the latest.
func (s TriggerSuite) start(t *testing.T, trig batuta.Trigger, r *fireRecorder, inst int) *triggerRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tr := &triggerRun{inst: inst, cancel: cancel, done: make(chan struct{})}
	runs := &suiteRuns{r: r, inst: inst}
	go func() {
		defer func() {
			close(tr.done)
			r.mu.Lock()
			r.notify() // wake a waitFor, which reports the early return
			r.mu.Unlock()
		}()
		if tt, ok := trig.(batuta.TrackingTrigger); ok {
			tr.err = tt.RunTracking(ctx, runs)
		} else {
			tr.err = trig.Run(ctx, func(ctx context.Context, ev batuta.Event) error {
				_, err := runs.Fire(ctx, ev)
				return err
			})
		}
	}()
	t.Cleanup(func() { s.stop(t, tr) })
	return tr
}

// stop cancels the instance's ctx and checks that Run returns within
// StopTimeout, with nil or ctx's error.
func (s TriggerSuite) stop(t *testing.T, tr *triggerRun) {
	t.Helper()
	if tr.stopped {
		return
	}
	tr.stopped = true
	tr.cancel()
	tm := time.NewTimer(s.StopTimeout)
	defer tm.Stop()
	select {
	case <-tr.done:
	case <-tm.C:
		t.Errorf("trigger instance %d: Run did not return within %v of ctx being canceled", tr.inst, s.StopTimeout)
		<-tr.done // wait anyway, so no goroutine outlives the test
		return
	}
	if tr.err != nil && !errors.Is(tr.err, context.Canceled) {
		t.Errorf("trigger instance %d: Run returned %v after cancel, want nil or context.Canceled", tr.inst, tr.err)
	}
}

// emit emits n events with keys prefix-000... and returns the keys.
func (s TriggerSuite) emit(t *testing.T, src TriggerSource, prefix string, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s-%03d", prefix, i)
		if err := src.Emit(ctx, keys[i]); err != nil {
			t.Fatalf("Emit(%q): %v", keys[i], err)
		}
	}
	return keys
}

func (s TriggerSuite) isTracking(trig batuta.Trigger) bool {
	_, ok := trig.(batuta.TrackingTrigger)
	return ok
}

func testTriggerFiresEvery(t *testing.T, s TriggerSuite) {
	trig, src := s.New(t)
	r := newFireRecorder(src, true)
	tr := s.start(t, trig, r, 1)
	keys := s.emit(t, src, "every", 20)
	r.waitFor(t, s.Timeout, []*triggerRun{tr}, "every event fired", func() bool { return r.allAccepted(keys) })
	s.stop(t, tr)
	r.check(t)
}

// testTriggerFiresEveryNonDurable is FiresEveryEvent in front of a
// non-durable store whose runs finish at once: the trigger waits for each
// run before releasing its event, and must keep going.
func testTriggerFiresEveryNonDurable(t *testing.T, s TriggerSuite) {
	trig, src := s.New(t)
	if !s.isTracking(trig) {
		t.Skip("not a TrackingTrigger: Runs.Durable is never consulted")
	}
	r := newFireRecorder(src, false)
	r.finishAll()
	tr := s.start(t, trig, r, 1)
	keys := s.emit(t, src, "nondurable", 20)
	r.waitFor(t, s.Timeout, []*triggerRun{tr}, "every event fired", func() bool { return r.allAccepted(keys) })
	s.stop(t, tr)
	r.check(t)
}

func testTriggerBacklog(t *testing.T, s TriggerSuite) {
	trig, src := s.New(t)
	keys := s.emit(t, src, "backlog", 20)
	r := newFireRecorder(src, true)
	tr := s.start(t, trig, r, 1)
	r.waitFor(t, s.Timeout, []*triggerRun{tr}, "the backlog fired", func() bool { return r.allAccepted(keys) })
	more := s.emit(t, src, "after", 5)
	r.waitFor(t, s.Timeout, []*triggerRun{tr}, "events after the backlog fired", func() bool { return r.allAccepted(more) })
	s.stop(t, tr)
	r.check(t)
}

var errSuiteStoreDown = errors.New("batutatest: store unavailable (injected)")

// testTriggerFailedFireRetried fails the first fire of every event, with
// batuta.ErrBusy for half of them and a plain error for the others.
func testTriggerFailedFireRetried(t *testing.T, s TriggerSuite) {
	trig, src := s.New(t)
	r := newFireRecorder(src, true)
	busy := map[string]bool{}
	keys := make([]string, 10)
	for i := range keys {
		keys[i] = fmt.Sprintf("retry-%03d", i)
		busy[keys[i]] = i%2 == 0
	}
	r.fail = func(key string, n int) error {
		if n > 1 {
			return nil
		}
		if busy[key] {
			return fmt.Errorf("batutatest: injected: %w", batuta.ErrBusy)
		}
		return errSuiteStoreDown
	}
	tr := s.start(t, trig, r, 1)
	for _, k := range keys {
		if err := src.Emit(t.Context(), k); err != nil {
			t.Fatalf("Emit(%q): %v", k, err)
		}
	}
	r.waitFor(t, s.Timeout, []*triggerRun{tr}, "every refused event fired again and accepted", func() bool { return r.allAccepted(keys) })
	s.stop(t, tr)
	r.check(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range keys {
		if r.n[k] < 2 {
			t.Errorf("key %q: fired %d times, want at least 2 (one refused, one accepted)", k, r.n[k])
		}
	}
}

// testTriggerRedeliveryKeepsID refuses each event twice and checks that all
// three fires carry the first fire's ID (the recorder reports any change).
func testTriggerRedeliveryKeepsID(t *testing.T, s TriggerSuite) {
	trig, src := s.New(t)
	r := newFireRecorder(src, true)
	r.fail = func(_ string, n int) error {
		if n <= 2 {
			return fmt.Errorf("batutatest: injected: %w", batuta.ErrBusy)
		}
		return nil
	}
	tr := s.start(t, trig, r, 1)
	keys := s.emit(t, src, "stable", 5)
	r.waitFor(t, s.Timeout, []*triggerRun{tr}, "every event accepted on its third fire", func() bool { return r.allAccepted(keys) })
	s.stop(t, tr)
	r.check(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.fires {
		if f.id != r.firstID[f.key] {
			t.Errorf("key %q: fired with ID %q and %q", f.key, r.firstID[f.key], f.id)
		}
	}
}

// testTriggerNonDurableKeepsUnfinished stops a consumer while the runs of
// the events it fired are unfinished (non-durable store): a new consumer
// must fire them again, with the same IDs.
func testTriggerNonDurableKeepsUnfinished(t *testing.T, s TriggerSuite) {
	trig, src := s.New(t)
	if !s.isTracking(trig) {
		t.Skip("not a TrackingTrigger: it cannot follow runs, so Runs.Durable does not apply")
	}
	if s.Restart == nil {
		t.Skip("TriggerSuite.Restart is nil")
	}
	keys := s.emit(t, src, "unfinished", 5)
	r := newFireRecorder(src, false)
	a := s.start(t, trig, r, 1)
	var firstA []string
	r.waitFor(t, s.Timeout, []*triggerRun{a}, "a first event fired", func() bool {
		for _, k := range keys {
			if r.accepted[k] > 0 {
				return true
			}
		}
		return false
	})
	s.stop(t, a)
	r.mu.Lock()
	for _, f := range r.fires {
		if f.instance == 1 && f.err == nil && !slices.Contains(firstA, f.key) {
			firstA = append(firstA, f.key)
		}
	}
	idsA := maps.Clone(r.firstID)
	r.mu.Unlock()

	b := s.start(t, s.Restart(t, src), r, 2)
	r.waitFor(t, s.Timeout, []*triggerRun{b}, "the unfinished events fired again by a new consumer", func() bool {
		for _, k := range firstA {
			if !slices.ContainsFunc(r.fires, func(f fireRecord) bool { return f.instance == 2 && f.key == k && f.err == nil }) {
				return false
			}
		}
		return true
	})
	r.finishAll()
	r.waitFor(t, s.Timeout, []*triggerRun{b}, "every event fired once runs finish", func() bool { return r.allAccepted(keys) })
	s.stop(t, b)
	r.check(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.fires {
		if f.instance == 2 && idsA[f.key] != "" && f.id != idsA[f.key] {
			t.Errorf("key %q: refired with ID %q, first fired with %q", f.key, f.id, idsA[f.key])
		}
	}
}

func testTriggerStopsWhenIdle(t *testing.T, s TriggerSuite) {
	trig, src := s.New(t)
	r := newFireRecorder(src, true)
	tr := s.start(t, trig, r, 1)
	keys := s.emit(t, src, "idle", 3)
	r.waitFor(t, s.Timeout, []*triggerRun{tr}, "every event fired", func() bool { return r.allAccepted(keys) })
	s.stop(t, tr) // checks the prompt return
	r.check(t)
}

// testTriggerStopsDuringFire cancels Run while fire is blocked (until its
// ctx ends): Run must return promptly, and (with Restart) the events are
// still at the source.
func testTriggerStopsDuringFire(t *testing.T, s TriggerSuite) {
	trig, src := s.New(t)
	r := newFireRecorder(src, true)
	r.block = true
	tr := s.start(t, trig, r, 1)
	keys := s.emit(t, src, "blocked", 3)
	r.waitFor(t, s.Timeout, []*triggerRun{tr}, "a fire to start", func() bool { return len(r.n) > 0 })
	// The fire is blocked until ctx ends; a fire that started is counted
	// in r.n before it blocks.
	s.stop(t, tr)
	r.check(t)
	if s.Restart == nil {
		return
	}
	r.mu.Lock()
	r.block = false
	r.mu.Unlock()
	b := s.start(t, s.Restart(t, src), r, 2)
	r.waitFor(t, s.Timeout, []*triggerRun{b}, "the events whose fire was interrupted fired by a new consumer",
		func() bool { return r.allAccepted(keys) })
	s.stop(t, b)
	r.check(t)
}

// testTriggerTwoConsumers runs two consumers of one source in front of a
// durable store whose fires all succeed: each event is fired exactly once.
func testTriggerTwoConsumers(t *testing.T, s TriggerSuite) {
	trig, src := s.New(t)
	if s.Restart == nil {
		t.Skip("TriggerSuite.Restart is nil")
	}
	r := newFireRecorder(src, true)
	a := s.start(t, trig, r, 1)
	b := s.start(t, s.Restart(t, src), r, 2)
	keys := s.emit(t, src, "shared", 200)
	r.waitFor(t, s.Timeout, []*triggerRun{a, b}, "every event fired by one of two consumers",
		func() bool { return r.allAccepted(keys) })
	s.stop(t, a)
	s.stop(t, b)
	r.check(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	per := map[int]int{}
	for _, f := range r.fires {
		per[f.instance]++
	}
	for _, k := range keys {
		if r.n[k] != 1 {
			t.Errorf("key %q fired %d times by two consumers, want exactly once", k, r.n[k])
		}
	}
	t.Logf("fires per consumer: %v", per)
}
