package batuta_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// waitUntilWaiting polls the run until its task waits for what (a
// condition with a deadline, not a sleep) and returns the snapshot.
func waitUntilWaiting(t *testing.T, o *batuta.Orchestrator, runID, task, what string) *batuta.Run {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := o.GetRun(context.Background(), runID)
		require.NoError(t, err)
		if tr := r.Task(task); tr != nil && tr.State == batuta.TaskPending && tr.WaitingFor == what && !tr.WaitingSince.IsZero() {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s of run %s never waited for %q: %+v", task, runID, what, r.Task(task))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// dueData is an event whose data carries a due time, for StartAt.
type dueData struct {
	Due time.Time `json:"due"`
}

func startAtFromEvent(in *batuta.Input) (time.Time, error) {
	d, err := batuta.EventData[dueData](in)
	return d.Due, err
}

func TestTimerStartAtFiresNotBeforeDueAndSpendsNoAttempt(t *testing.T) {
	t.Parallel()
	var ranAt atomic.Pointer[time.Time]
	var runs atomic.Int32
	wf := &batuta.Workflow{Name: "remind", Tasks: []batuta.Task{
		{Name: "remind", StartAt: startAtFromEvent, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			now := time.Now()
			ranAt.Store(&now)
			runs.Add(1)
			return "sent", nil
		}},
	}}
	o := setup(t, batuta.Config{}, wf)
	due := time.Now().Add(time.Second)
	data, _ := json.Marshal(dueData{Due: due})
	id, err := o.Submit(context.Background(), "remind", batuta.Event{Data: data})
	require.NoError(t, err)
	r := waitUntilWaiting(t, o, id, "remind", batuta.WaitForTimer)
	tr := r.Task("remind")
	require.Empty(t, tr.Attempts, "a waiting timer records no attempt")
	require.True(t, tr.NotBefore.Equal(due), "the wait is stored until the due time: %v, want %v", tr.NotBefore, due)

	r, err = o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.False(t, ranAt.Load().Before(due), "ran at %v, before its due time %v", *ranAt.Load(), due)
	tr = r.Task("remind")
	require.Len(t, tr.Attempts, 1, "the wait spent no attempt: only the body's")
	require.Equal(t, 1, tr.Attempts[0].Number)
	require.EqualValues(t, 1, runs.Load())
	require.Equal(t, batuta.WaitForTimer, tr.WaitingFor, "kept as a record")
	require.False(t, tr.WaitingSince.IsZero())
}

func TestTimerInThePastStartsAtOnce(t *testing.T) {
	t.Parallel()
	wf := &batuta.Workflow{Name: "past", Tasks: []batuta.Task{
		{Name: "remind", StartAt: startAtFromEvent, Run: func(ctx context.Context, in *batuta.Input) (any, error) { return 1, nil }},
	}}
	o := setup(t, batuta.Config{}, wf)
	data, _ := json.Marshal(dueData{Due: time.Now().Add(-time.Hour)})
	id, err := o.Submit(context.Background(), "past", batuta.Event{Data: data})
	require.NoError(t, err)
	r, err := o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.True(t, r.Task("remind").WaitingSince.IsZero(), "a time in the past never waits")
}

func TestTimerStartAtErrorFailsTheTask(t *testing.T) {
	t.Parallel()
	wf := &batuta.Workflow{Name: "bad-due", Tasks: []batuta.Task{
		{Name: "remind", StartAt: startAtFromEvent, Run: noop},
	}}
	o := setup(t, batuta.Config{}, wf)
	id, err := o.Submit(context.Background(), "bad-due", batuta.Event{Data: []byte(`{"due": "not a time"}`)})
	require.NoError(t, err)
	r, err := o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	require.Contains(t, r.Task("remind").Error, "Task.StartAt")
	require.Contains(t, r.Task("remind").Error, "invalid payload")
}

func TestDelayIsASleepStep(t *testing.T) {
	t.Parallel()
	var before, after atomic.Pointer[time.Time]
	stamp := func(p *atomic.Pointer[time.Time]) batuta.TaskFunc {
		return func(context.Context, *batuta.Input) (any, error) {
			now := time.Now()
			p.Store(&now)
			return nil, nil
		}
	}
	const d = 100 * time.Millisecond
	wf := &batuta.Workflow{Name: "sleep", Tasks: []batuta.Task{
		{Name: "before", Run: stamp(&before)},
		{Name: "sleep", Deps: []string{"before"}, Delay: d},
		{Name: "after", Deps: []string{"sleep"}, Run: stamp(&after)},
	}}
	o := setup(t, batuta.Config{}, wf)
	id, err := o.Submit(context.Background(), "sleep", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.GreaterOrEqual(t, after.Load().Sub(*before.Load()), d)
	s := r.Task("sleep")
	require.Nil(t, s.Output)
	require.Equal(t, batuta.WaitForTimer, s.WaitingFor)
	require.False(t, r.FinishedAt.Before(s.WaitingSince.Add(d)), "the run ended %v after the sleep began", r.FinishedAt.Sub(s.WaitingSince))
}

// A run waiting on a timer holds no worker: with one worker, other runs go
// on while it waits.
func TestWaitingRunHoldsNoWorker(t *testing.T) {
	t.Parallel()
	wf := &batuta.Workflow{Name: "later", Tasks: []batuta.Task{
		{Name: "wait", Delay: time.Hour},
	}}
	now := &batuta.Workflow{Name: "now", Tasks: []batuta.Task{{Name: "go", Run: noop}}}
	o := setup(t, batuta.Config{Workers: 1}, wf, now)
	var waiting []string
	for range 5 {
		id, err := o.Submit(context.Background(), "later", batuta.Event{})
		require.NoError(t, err)
		waiting = append(waiting, id)
	}
	for _, id := range waiting {
		waitUntilWaiting(t, o, id, "wait", batuta.WaitForTimer)
	}
	for range 3 {
		id, err := o.Submit(context.Background(), "now", batuta.Event{})
		require.NoError(t, err)
		r, err := o.Wait(waitCtx(t), id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
	for _, id := range waiting {
		r, err := o.GetRun(context.Background(), id)
		require.NoError(t, err)
		require.Equal(t, batuta.TaskPending, r.Task("wait").State)
	}
}

func TestCancelCancelsTheWait(t *testing.T) {
	t.Parallel()
	var ran atomic.Bool
	wf := &batuta.Workflow{Name: "cancel-wait", Tasks: []batuta.Task{
		{Name: "wait", Delay: time.Hour, Run: func(context.Context, *batuta.Input) (any, error) { ran.Store(true); return nil, nil }},
		{Name: "ship", Signal: &batuta.SignalWait{Name: "shipped"}},
	}}
	o := setup(t, batuta.Config{}, wf)
	id, err := o.Submit(context.Background(), "cancel-wait", batuta.Event{})
	require.NoError(t, err)
	waitUntilWaiting(t, o, id, "wait", batuta.WaitForTimer)
	waitUntilWaiting(t, o, id, "ship", batuta.WaitForSignal("shipped"))
	require.NoError(t, o.Cancel(context.Background(), id))
	r, err := o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, r.State)
	require.Equal(t, batuta.TaskCanceled, r.Task("wait").State)
	require.Equal(t, batuta.TaskCanceled, r.Task("ship").State)
	require.False(t, ran.Load())
	require.ErrorIs(t, o.Signal(context.Background(), id, "shipped", nil), batuta.ErrNoWaiter)
}

// The timer is in the store: a new orchestrator on the same store fires
// it, once, not before its time.
func TestTimerSurvivesRestart(t *testing.T) {
	t.Parallel()
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	var ranAt atomic.Pointer[time.Time]
	var runs atomic.Int32
	wf := func() *batuta.Workflow {
		return &batuta.Workflow{Name: "restart", Tasks: []batuta.Task{
			{Name: "remind", StartAt: startAtFromEvent, Run: func(context.Context, *batuta.Input) (any, error) {
				now := time.Now()
				ranAt.Store(&now)
				runs.Add(1)
				return nil, nil
			}},
		}}
	}
	o1, err := batuta.New(batuta.Config{Store: store, Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o1.Register(wf()))
	ctx1, stop1 := context.WithCancel(context.Background())
	done1 := make(chan error, 1)
	go func() { done1 <- o1.Run(ctx1) }()
	due := time.Now().Add(time.Second) // o1 must claim it, wait, and stop before
	data, _ := json.Marshal(dueData{Due: due})
	id, err := o1.Submit(context.Background(), "restart", batuta.Event{Data: data})
	require.NoError(t, err)
	waitUntilWaiting(t, o1, id, "remind", batuta.WaitForTimer)
	stop1()
	require.NoError(t, <-done1)
	require.Zero(t, runs.Load())

	o2 := setup(t, batuta.Config{Store: store}, wf())
	r, err := o2.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.EqualValues(t, 1, runs.Load())
	require.False(t, ranAt.Load().Before(due))
	require.Len(t, r.Task("remind").Attempts, 1)
}

type shipment struct {
	Carrier string `json:"carrier"`
	Track   string `json:"track"`
}

// shipWorkflow waits for "shipped" after a first task (gated by gate, if
// not nil) and hands the shipment to a last task.
func shipWorkflow(name string, gate chan struct{}, sw batuta.SignalWait) *batuta.Workflow {
	return &batuta.Workflow{Name: name, Tasks: []batuta.Task{
		{Name: "order", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			if gate != nil {
				select {
				case <-gate:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			return nil, nil
		}},
		{Name: "ship", Deps: []string{"order"}, Signal: &sw},
		{Name: "notify", Deps: []string{"ship"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			s, err := batuta.Output[shipment](in, "ship")
			return "shipped by " + s.Carrier + " as " + s.Track, err
		}},
	}}
}

func TestSignalCompletesAWaitingTask(t *testing.T) {
	t.Parallel()
	o := setup(t, batuta.Config{}, shipWorkflow("ship", nil, batuta.SignalWait{Name: "shipped"}))
	id, err := o.Submit(context.Background(), "ship", batuta.Event{})
	require.NoError(t, err)
	r := waitUntilWaiting(t, o, id, "ship", batuta.WaitForSignal("shipped"))
	require.True(t, r.Task("ship").NotBefore.IsZero(), "no timeout: the wait has no time limit")
	require.NoError(t, o.Signal(context.Background(), id, "shipped", shipment{Carrier: "ups", Track: "1Z"}))
	r, err = o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	out, err := batuta.OutputAs[string](r.Task("notify").Output)
	require.NoError(t, err)
	require.Equal(t, "shipped by ups as 1Z", out)
	require.Empty(t, r.Task("ship").Attempts, "a delivered signal spends no attempt")
	require.ErrorIs(t, o.Signal(context.Background(), id, "shipped", nil), batuta.ErrNoWaiter, "the run finished")
}

func TestSignalBeforeTheWaitIsKept(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	o := setup(t, batuta.Config{}, shipWorkflow("early", gate, batuta.SignalWait{Name: "shipped", Timeout: time.Hour}))
	id, err := o.Submit(context.Background(), "early", batuta.Event{})
	require.NoError(t, err)
	require.NoError(t, o.Signal(context.Background(), id, "shipped", shipment{Carrier: "dhl", Track: "JD"}))
	close(gate)
	r, err := o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	out, err := batuta.OutputAs[string](r.Task("notify").Output)
	require.NoError(t, err)
	require.Equal(t, "shipped by dhl as JD", out)
}

func TestSignalTimeoutFails(t *testing.T) {
	t.Parallel()
	o := setup(t, batuta.Config{}, shipWorkflow("late", nil, batuta.SignalWait{Name: "shipped", Timeout: 50 * time.Millisecond}))
	id, err := o.Submit(context.Background(), "late", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	ship := r.Task("ship")
	require.Equal(t, batuta.TaskFailed, ship.State)
	require.Contains(t, ship.Error, batuta.ErrTimeout.Error())
	require.Contains(t, ship.Error, `signal "shipped"`)
	require.False(t, r.FinishedAt.Before(ship.WaitingSince.Add(50*time.Millisecond)), "timed out before its timeout")
	require.Equal(t, batuta.TaskUpstreamFailed, r.Task("notify").State)
}

func TestSignalTimeoutSucceedsWithDefault(t *testing.T) {
	t.Parallel()
	o := setup(t, batuta.Config{}, shipWorkflow("default", nil, batuta.SignalWait{
		Name: "shipped", Timeout: 50 * time.Millisecond, OnTimeout: batuta.TimeoutSucceed,
		Default: shipment{Carrier: "none", Track: "-"},
	}))
	id, err := o.Submit(context.Background(), "default", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	out, err := batuta.OutputAs[string](r.Task("notify").Output)
	require.NoError(t, err)
	require.Equal(t, "shipped by none as -", out)
}

func TestSignalErrors(t *testing.T) {
	t.Parallel()
	o := setup(t, batuta.Config{MaxPayloadBytes: 1024}, shipWorkflow("errs", nil, batuta.SignalWait{Name: "shipped"}))
	ctx := context.Background()
	require.ErrorIs(t, o.Signal(ctx, "no-such-run", "shipped", nil), batuta.ErrRunNotFound)
	id, err := o.Submit(ctx, "errs", batuta.Event{})
	require.NoError(t, err)
	waitUntilWaiting(t, o, id, "ship", batuta.WaitForSignal("shipped"))
	require.ErrorIs(t, o.Signal(ctx, id, "delivered", nil), batuta.ErrNoWaiter, "no task waits for that name")
	require.ErrorIs(t, o.Signal(ctx, id, "bad name!", nil), batuta.ErrInvalidPayload)
	require.ErrorIs(t, o.Signal(ctx, id, "shipped", func() {}), batuta.ErrInvalidPayload)
	err = o.Signal(ctx, id, "shipped", strings.Repeat("x", 2000))
	var tooLarge *batuta.PayloadTooLargeError
	require.ErrorAs(t, err, &tooLarge)
	require.ErrorIs(t, err, batuta.ErrPayloadTooLarge)
	r, err := o.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.TaskPending, r.Task("ship").State, "refused signals leave the wait alone")
	require.NoError(t, o.Signal(ctx, id, "shipped", shipment{Carrier: "c"}))
	r, err = o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
}

func TestSignalWhereBySubject(t *testing.T) {
	t.Parallel()
	o := setup(t, batuta.Config{}, shipWorkflow("corr", nil, batuta.SignalWait{Name: "shipped"}))
	ctx := context.Background()
	var a []string
	for range 3 {
		id, err := o.Submit(ctx, "corr", batuta.Event{Subject: "order-A"})
		require.NoError(t, err)
		a = append(a, id)
	}
	b, err := o.Submit(ctx, "corr", batuta.Event{Subject: "order-B"})
	require.NoError(t, err)
	for _, id := range append(a, b) {
		waitUntilWaiting(t, o, id, "ship", batuta.WaitForSignal("shipped"))
	}
	n, err := o.SignalWhere(ctx, "corr", "order-A", "shipped", shipment{Carrier: "fedex"})
	require.NoError(t, err)
	require.Equal(t, 3, n)
	for _, id := range a {
		r, err := o.Wait(waitCtx(t), id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
	r, err := o.GetRun(ctx, b)
	require.NoError(t, err)
	require.Equal(t, batuta.TaskPending, r.Task("ship").State, "another subject is not signaled")

	_, err = o.SignalWhere(ctx, "corr", "order-A", "shipped", nil)
	require.ErrorIs(t, err, batuta.ErrNoWaiter, "those runs finished")
	_, err = o.SignalWhere(ctx, "corr", "order-C", "shipped", nil)
	require.ErrorIs(t, err, batuta.ErrNoWaiter)
	_, err = o.SignalWhere(ctx, "nope", "order-B", "shipped", nil)
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
	_, err = o.SignalWhere(ctx, "corr", "", "shipped", nil)
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)
}

func TestRegisterRejectsBadWaits(t *testing.T) {
	t.Parallel()
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	for _, c := range []struct {
		task batuta.Task
		want string
	}{
		{batuta.Task{Name: "a", Delay: -time.Second}, "Task.Delay must not be negative"},
		{batuta.Task{Name: "a", Signal: &batuta.SignalWait{Name: "s"}, Run: noop}, "Task.Run must be nil"},
		{batuta.Task{Name: "a", Signal: &batuta.SignalWait{Name: "s"}, Delay: time.Second}, "cannot be combined with Task.StartAt or Task.Delay"},
		{batuta.Task{Name: "a", Signal: &batuta.SignalWait{}}, "Task.Signal.Name is empty"},
		{batuta.Task{Name: "a", Signal: &batuta.SignalWait{Name: "no spaces"}}, "Task.Signal.Name: name must be"},
		{batuta.Task{Name: "a", Signal: &batuta.SignalWait{Name: "s", Timeout: -1}}, "Task.Signal.Timeout must not be negative"},
		{batuta.Task{Name: "a", Signal: &batuta.SignalWait{Name: "s", OnTimeout: 7}}, "unknown action 7"},
		{batuta.Task{Name: "a", Signal: &batuta.SignalWait{Name: "s", OnTimeout: batuta.TimeoutSucceed}}, "never applies"},
		{batuta.Task{Name: "a", Signal: &batuta.SignalWait{Name: "s", Timeout: time.Second, Default: 1}}, "Default is set but OnTimeout"},
		{batuta.Task{Name: "a", Signal: &batuta.SignalWait{Name: "s", Timeout: time.Second, OnTimeout: batuta.TimeoutSucceed, Default: func() {}}}, "not JSON-encodable"},
		{batuta.Task{Name: "a", Delay: time.Second, ForEach: &batuta.ForEach{}, Run: noop}, "cannot be combined with Task.Child or Task.ForEach"},
		{batuta.Task{Name: "a", StartAt: startAtFromEvent, Child: &batuta.ChildWorkflow{Workflow: "w"}}, "cannot be combined with Task.Child or Task.ForEach"},
		{batuta.Task{Name: "a", Signal: &batuta.SignalWait{Name: "s"}, Child: &batuta.ChildWorkflow{Workflow: "w"}}, "cannot be combined with Task.Child or Task.ForEach"},
		{batuta.Task{Name: "a"}, "nil Run func"},
	} {
		err := o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{c.task}})
		require.ErrorIs(t, err, batuta.ErrInvalidWorkflow, c.want)
		require.ErrorContains(t, err, c.want)
		var we *batuta.WorkflowError
		require.ErrorAs(t, err, &we)
		require.Equal(t, "a", we.Task)
	}
	// A pure timer and a pure signal wait need no Run.
	require.NoError(t, o.Register(&batuta.Workflow{Name: "ok", Tasks: []batuta.Task{
		{Name: "sleep", Delay: time.Second},
		{Name: "at", StartAt: startAtFromEvent},
		{Name: "sig", Signal: &batuta.SignalWait{Name: "go", Timeout: time.Second, OnTimeout: batuta.TimeoutSucceed, Default: "x"}},
	}}))
}

// A queue message signals the runs its Subject selects, or the run its
// metadata names; one that no run waits for is dead-lettered at once.
func TestSignalTrigger(t *testing.T) {
	t.Parallel()
	q, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = q.Close() })
	var mu sync.Mutex
	var dead []batuta.DeadLetter
	deadCh := make(chan struct{}, 10)
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: q,
		DeadLetter: batuta.DeadLetterFunc(func(ctx context.Context, dl batuta.DeadLetter) error {
			mu.Lock()
			dead = append(dead, dl)
			mu.Unlock()
			deadCh <- struct{}{}
			return nil
		}),
		Event: func(d batuta.Delivery) (batuta.Event, error) {
			ev := batuta.DefaultQueueEvent(d, batuta.SourceQueue)
			ev.Subject = d.Headers["order"]
			return ev, nil
		},
	})
	require.NoError(t, err)
	o := setup(t, batuta.Config{}, shipWorkflow("qsig", nil, batuta.SignalWait{Name: "shipped"}))
	require.NoError(t, o.BindSignal("qsig", "shipped", trig))
	ctx := context.Background()
	bySubject, err := o.Submit(ctx, "qsig", batuta.Event{Subject: "o-1"})
	require.NoError(t, err)
	byID, err := o.Submit(ctx, "qsig", batuta.Event{Subject: "o-2"})
	require.NoError(t, err)
	waitUntilWaiting(t, o, bySubject, "ship", batuta.WaitForSignal("shipped"))
	waitUntilWaiting(t, o, byID, "ship", batuta.WaitForSignal("shipped"))

	require.NoError(t, q.Publish(ctx, batuta.Message{Body: []byte(`{"carrier":"ups","track":"1"}`), Headers: map[string]string{"order": "o-1"}}))
	require.NoError(t, q.Publish(ctx, batuta.Message{Body: []byte(`{"carrier":"dhl","track":"2"}`), Headers: map[string]string{batuta.MetadataSignalRunID: byID}}))
	for id, want := range map[string]string{bySubject: "shipped by ups as 1", byID: "shipped by dhl as 2"} {
		r, err := o.Wait(waitCtx(t), id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
		out, err := batuta.OutputAs[string](r.Task("notify").Output)
		require.NoError(t, err)
		require.Equal(t, want, out)
	}

	// Nobody waits for o-1 any more: dead-lettered at once, as permanent.
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "late", Body: []byte(`{}`), Headers: map[string]string{"order": "o-1"}}))
	select {
	case <-deadCh:
	case <-waitCtx(t).Done():
		t.Fatal("the signal nobody waits for was not dead-lettered")
	}
	mu.Lock()
	require.Len(t, dead, 1)
	require.Equal(t, "late", dead[0].Event.ID)
	require.Equal(t, batuta.DeadLetterPermanent, dead[0].Reason)
	require.Contains(t, dead[0].Error, batuta.ErrNoWaiter.Error())
	require.Equal(t, 1, dead[0].Attempts)
	mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for q.Len()+q.InFlight() > 0 {
		require.True(t, time.Now().Before(deadline), "messages left unsettled")
		time.Sleep(2 * time.Millisecond)
	}

	require.Error(t, o.BindSignal("qsig", "bad name", trig))
	require.ErrorIs(t, o.BindSignal("nope", "shipped", trig), batuta.ErrUnknownWorkflow)
	onFinish, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, DeadLetter: batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error { return nil }), Ack: batuta.AckOnFinish})
	require.NoError(t, err)
	require.ErrorIs(t, o.BindSignal("qsig", "shipped", onFinish), batuta.ErrInvalidConfig)
}

// On the durable path (a store that says it is durable) signal data, a
// timeout's Default and a sleep step's output are JSON, and Output
// decodes them.
func TestWaitsOnTheDurablePath(t *testing.T) {
	t.Parallel()
	store := &durableStore{Store: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}
	wf := shipWorkflow("dship", nil, batuta.SignalWait{
		Name: "shipped", Timeout: time.Second, OnTimeout: batuta.TimeoutSucceed,
		Default: shipment{Carrier: "none", Track: "-"},
	})
	wf.Tasks[0] = batuta.Task{Name: "order", Delay: 10 * time.Millisecond}
	o := setup(t, batuta.Config{Store: store}, wf)
	ctx := context.Background()
	signaled, err := o.Submit(ctx, "dship", batuta.Event{})
	require.NoError(t, err)
	early, err := o.Submit(ctx, "dship", batuta.Event{})
	require.NoError(t, err)
	timedOut, err := o.Submit(ctx, "dship", batuta.Event{})
	require.NoError(t, err)
	// Kept until the run gets to its wait (it is still sleeping, or just
	// past it).
	require.NoError(t, o.Signal(ctx, early, "shipped", shipment{Carrier: "dhl", Track: "E"}))
	waitUntilWaiting(t, o, signaled, "ship", batuta.WaitForSignal("shipped"))
	require.NoError(t, o.Signal(ctx, signaled, "shipped", shipment{Carrier: "ups", Track: "S"}))
	for id, want := range map[string]string{signaled: "shipped by ups as S", early: "shipped by dhl as E", timedOut: "shipped by none as -"} {
		r, err := o.Wait(waitCtx(t), id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
		out, err := batuta.OutputAs[string](r.Task("notify").Output)
		require.NoError(t, err)
		require.Equal(t, want, out)
		require.IsType(t, json.RawMessage(nil), r.Task("ship").Output, "JSON on the durable path")
		require.JSONEq(t, "null", string(r.Task("order").Output.(json.RawMessage)))
	}
}

// Workflow.Timeout ends a run that waits: the wait's due time is bounded
// by the run's deadline, so a signal wait with no time limit still fails
// then.
func TestWorkflowTimeoutEndsAWait(t *testing.T) {
	t.Parallel()
	wf := shipWorkflow("deadline", nil, batuta.SignalWait{Name: "shipped"})
	wf.Timeout = 100 * time.Millisecond
	o := setup(t, batuta.Config{}, wf)
	id, err := o.Submit(context.Background(), "deadline", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	ship := r.Task("ship")
	require.Equal(t, batuta.TaskFailed, ship.State)
	require.Contains(t, ship.Error, "workflow timeout")
	require.Equal(t, batuta.WaitForSignal("shipped"), ship.WaitingFor, "it was waiting")
}

// SignalMatching selects the runs with a key function over their events.
func TestSignalMatchingByKeyFunction(t *testing.T) {
	t.Parallel()
	o := setup(t, batuta.Config{}, shipWorkflow("keyed", nil, batuta.SignalWait{Name: "shipped"}))
	ctx := context.Background()
	type order struct {
		ID string `json:"id"`
	}
	ids := map[string]string{}
	for _, oid := range []string{"A-1", "A-2", "B-1"} {
		data, _ := json.Marshal(order{ID: oid})
		id, err := o.Submit(ctx, "keyed", batuta.Event{Data: data})
		require.NoError(t, err)
		ids[oid] = id
	}
	byOrder := func(want string) func(batuta.Event) bool {
		return func(ev batuta.Event) bool {
			var o order
			return json.Unmarshal(ev.Data, &o) == nil && o.ID == want
		}
	}
	n, err := o.SignalMatching(ctx, "keyed", byOrder("A-2"), "shipped", shipment{Carrier: "ups", Track: "A2"})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	r, err := o.Wait(waitCtx(t), ids["A-2"])
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	for _, oid := range []string{"A-1", "B-1"} {
		r, err := o.GetRun(ctx, ids[oid])
		require.NoError(t, err)
		require.False(t, r.Finished(), "run of %s is not signaled", oid)
	}
	_, err = o.SignalMatching(ctx, "keyed", byOrder("C-1"), "shipped", nil)
	require.ErrorIs(t, err, batuta.ErrNoWaiter)
	_, err = o.SignalMatching(ctx, "keyed", func(batuta.Event) bool { panic("boom") }, "shipped", nil)
	var pe *batuta.PanicError
	require.ErrorAs(t, err, &pe)
	_, err = o.SignalMatching(ctx, "keyed", nil, "shipped", nil)
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)
	_, err = o.SignalMatching(ctx, "nope", byOrder("A-1"), "shipped", nil)
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
}

// A signal that completes a run's last task finishes the run: Wait
// returns and the RunFinished hook runs.
func TestSignalFinishesTheRun(t *testing.T) {
	t.Parallel()
	h := &countingHooks{}
	o := setup(t, batuta.Config{Hooks: []batuta.Hooks{h}}, &batuta.Workflow{Name: "last", Tasks: []batuta.Task{
		{Name: "approved", Signal: &batuta.SignalWait{Name: "approve"}},
	}})
	id, err := o.Submit(context.Background(), "last", batuta.Event{})
	require.NoError(t, err)
	waitUntilWaiting(t, o, id, "approved", batuta.WaitForSignal("approve"))
	require.NoError(t, o.Signal(context.Background(), id, "approve", "yes"))
	r, err := o.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.Equal(t, "yes", r.Task("approved").Output)
	// The hooks run right after Wait's wake-up.
	require.Eventually(t, func() bool { return h.finished.Load() == 1 }, 20*time.Second, time.Millisecond)
}
