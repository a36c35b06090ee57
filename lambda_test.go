package batuta_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

var lambdaQuiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fastRetry retries quickly, so failure tests do not wait on backoff.
var fastRetry = batuta.RetryPolicy{MaxAttempts: 3, InitialDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond}

// lambdaOrch returns an orchestrator (not running yet) with quiet logs.
func lambdaOrch(t testing.TB, cfg batuta.Config) *batuta.Orchestrator {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = lambdaQuiet
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 10 * time.Millisecond
	}
	o, err := batuta.New(cfg)
	require.NoError(t, err)
	return o
}

// runOrch runs o until the test ends.
func runOrch(t testing.TB, o *batuta.Orchestrator) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Error("Run did not return within 30s of cancel")
		}
	})
	// Invoke needs Run executing; wait until it is.
	require.Eventually(t, func() bool {
		_, err := o.Invoke(context.Background(), "batuta-test-no-such-function", nil)
		return errors.Is(err, batuta.ErrUnknownWorkflow)
	}, 10*time.Second, time.Millisecond)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type resizeReq struct {
	URL   string `json:"url"`
	Width int    `json:"width"`
}

type resizeResp struct {
	Thumb string `json:"thumb"`
}

func TestFunctionConfigValidation(t *testing.T) {
	t.Parallel()
	h := func(context.Context, batuta.Event) (int, error) { return 0, nil }
	tests := []struct {
		field string
		cfg   batuta.FunctionConfig
	}{
		{"Name", batuta.FunctionConfig{}},
		{"Name", batuta.FunctionConfig{Name: "has space"}},
		{"Concurrency", batuta.FunctionConfig{Name: "f", Concurrency: -1}},
		{"Timeout", batuta.FunctionConfig{Name: "f", Timeout: -1}},
		{"Retry.MaxAttempts", batuta.FunctionConfig{Name: "f", Retry: batuta.RetryPolicy{MaxAttempts: -1}}},
		{"DeadLetterRetry.InitialDelay", batuta.FunctionConfig{Name: "f", DeadLetterRetry: batuta.RetryPolicy{InitialDelay: -1}}},
	}
	for _, tc := range tests {
		t.Run(tc.field, func(t *testing.T) {
			o := lambdaOrch(t, batuta.Config{})
			err := batuta.RegisterFunc(o, tc.cfg, h)
			var ce *batuta.ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.field, ce.Field)
			require.False(t, o.IsFunction(tc.cfg.Name))
		})
	}
	o := lambdaOrch(t, batuta.Config{})
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "f"}, h))
	require.ErrorIs(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "f"}, h), batuta.ErrInvalidWorkflow, "twice")
	var nilHandler func(context.Context, batuta.Event) (int, error)
	require.ErrorIs(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "g"}, nilHandler), batuta.ErrInvalidConfig)
}

// TestFunctionErrorCountsSnoozes: FunctionError.Attempts counts every
// attempt that ran, snoozes included, though snoozes in a row are one
// attempt record.
func TestFunctionErrorCountsSnoozes(t *testing.T) {
	t.Parallel()
	o := lambdaOrch(t, batuta.Config{})
	var calls atomic.Int32
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "poll"},
		func(context.Context, batuta.Event) (int, error) {
			if calls.Add(1) <= 2 {
				return 0, batuta.Snooze(time.Millisecond)
			}
			return 0, batuta.Permanent(errors.New("gone"))
		}))
	runOrch(t, o)
	_, err := o.Invoke(testCtx(t), "poll", nil)
	var fe *batuta.FunctionError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, 3, fe.Attempts, "two snoozes and the failure")
	r, err := o.GetRun(testCtx(t), fe.RunID)
	require.NoError(t, err)
	require.Len(t, r.Tasks[0].Attempts, 2, "the snoozes are one record")
}

func TestInvokeTyped(t *testing.T) {
	t.Parallel()
	o := lambdaOrch(t, batuta.Config{})
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "resize"},
		func(ctx context.Context, r resizeReq) (resizeResp, error) {
			in, ok := batuta.InputFromContext(ctx)
			if !ok || in.Attempt() != 1 || in.Workflow() != "resize" {
				return resizeResp{}, errors.New("no input in ctx")
			}
			return resizeResp{Thumb: r.URL + "?w=" + strconv.Itoa(r.Width)}, nil
		}))
	runOrch(t, o)
	ctx := testCtx(t)

	out, err := batuta.InvokeAs[resizeResp](ctx, o, "resize", resizeReq{URL: "a.png", Width: 64})
	require.NoError(t, err)
	require.Equal(t, "a.png?w=64", out.Thumb)

	// Raw JSON bytes are the event data; Invoke returns the stored value.
	v, err := o.Invoke(ctx, "resize", []byte(`{"url":"b.png","width":8}`))
	require.NoError(t, err)
	require.Equal(t, resizeResp{Thumb: "b.png?w=8"}, v)

	// Malformed JSON fails at once, without retries.
	_, err = o.Invoke(ctx, "resize", []byte(`{"url":`))
	var fe *batuta.FunctionError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, 1, fe.Attempts)
	require.Equal(t, batuta.RunFailed, fe.State)
	require.Contains(t, fe.Err, "invalid payload")

	// Wrong output type.
	_, err = batuta.InvokeAs[int](ctx, o, "resize", resizeReq{})
	require.ErrorIs(t, err, batuta.ErrTypeMismatch)
}

func TestInvokeEventHandlerAndIdempotency(t *testing.T) {
	t.Parallel()
	o := lambdaOrch(t, batuta.Config{})
	var calls atomic.Int32
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "echo"},
		func(_ context.Context, ev batuta.Event) (map[string]string, error) {
			calls.Add(1)
			return map[string]string{"id": ev.ID, "type": ev.Type, "k": ev.Metadata["k"], "data": string(ev.Data)}, nil
		}))
	runOrch(t, o)
	ctx := testCtx(t)
	ev := batuta.Event{ID: "evt-1", Type: "thing.happened", Data: []byte(`{"x":1}`), Metadata: map[string]string{"k": "v"}}
	want := map[string]string{"id": "evt-1", "type": "thing.happened", "k": "v", "data": `{"x":1}`}
	for range 3 {
		out, err := batuta.InvokeAs[map[string]string](ctx, o, "echo", ev)
		require.NoError(t, err)
		require.Equal(t, want, out)
	}
	require.EqualValues(t, 1, calls.Load(), "same event ID: one run")

	// A durable store hands back JSON; InvokeAs decodes it the same way.
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "raw"},
		func(context.Context, json.RawMessage) (json.RawMessage, error) {
			return json.RawMessage(`{"thumb":"x"}`), nil
		}))
	out, err := batuta.InvokeAs[resizeResp](ctx, o, "raw", nil)
	require.NoError(t, err)
	require.Equal(t, "x", out.Thumb)
}

func TestInvokeFailures(t *testing.T) {
	t.Parallel()
	o := lambdaOrch(t, batuta.Config{})
	var flaky, always atomic.Int32
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "flaky", Retry: fastRetry},
		func(context.Context, batuta.Event) (string, error) {
			if flaky.Add(1) < 3 {
				return "", errors.New("transient")
			}
			return "ok", nil
		}))
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "always", Retry: fastRetry},
		func(context.Context, batuta.Event) (string, error) {
			always.Add(1)
			return "", errors.New("broken")
		}))
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "permanent", Retry: fastRetry},
		func(context.Context, batuta.Event) (string, error) {
			return "", batuta.Permanent(errors.New("bad request"))
		}))
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "panics", Retry: fastRetry},
		func(context.Context, batuta.Event) (string, error) { panic("kaboom") }))
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "slow", Timeout: 20 * time.Millisecond, Retry: batuta.RetryPolicy{MaxAttempts: 2, InitialDelay: time.Millisecond}},
		func(ctx context.Context, _ batuta.Event) (string, error) {
			<-ctx.Done()
			return "", ctx.Err()
		}))
	runOrch(t, o)
	ctx := testCtx(t)

	out, err := batuta.InvokeAs[string](ctx, o, "flaky", nil)
	require.NoError(t, err)
	require.Equal(t, "ok", out)
	require.EqualValues(t, 3, flaky.Load())

	tests := []struct {
		name     string
		attempts int
		contains string
		timeout  bool
	}{
		{"always", 3, "broken", false},
		{"permanent", 1, "bad request", false},
		{"panics", 3, "kaboom", false},
		{"slow", 2, "deadline", true},
	}
	for _, tc := range tests {
		_, err := o.Invoke(ctx, tc.name, nil)
		var fe *batuta.FunctionError
		require.ErrorAs(t, err, &fe, tc.name)
		require.Equal(t, tc.name, fe.Function)
		require.Equal(t, batuta.RunFailed, fe.State)
		require.Equal(t, tc.attempts, fe.Attempts, tc.name)
		require.Contains(t, fe.Err, tc.contains, tc.name)
		require.NotEmpty(t, fe.RunID)
		require.Equal(t, tc.timeout, errors.Is(err, batuta.ErrTimeout), tc.name)
	}
	require.EqualValues(t, 3, always.Load())
}

func TestInvokeBeforeRunUnknownBusy(t *testing.T) {
	t.Parallel()
	o := lambdaOrch(t, batuta.Config{MaxInFlightRuns: 1})
	release := make(chan struct{})
	var started atomic.Int32
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "block"},
		func(ctx context.Context, _ batuta.Event) (int, error) {
			started.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
			}
			return 1, nil
		}))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "plain", Tasks: []batuta.Task{{Name: "t", Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil }}}}))
	ctx := testCtx(t)

	// Before Run: Invoke records the run and waits for Run to execute it.
	early := make(chan error, 1)
	go func() {
		_, err := o.Invoke(ctx, "block", batuta.Event{ID: "early"})
		early <- err
	}()
	require.Eventually(t, func() bool {
		_, err := o.Store().FindRun(ctx, "block", "early")
		return err == nil
	}, 10*time.Second, time.Millisecond)
	require.Zero(t, started.Load())

	// Unknown names, and workflows that are not functions.
	_, err := o.Invoke(ctx, "nope", nil)
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
	_, err = o.Invoke(ctx, "plain", nil)
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
	_, err = o.InvokeAsync(ctx, "plain", nil)
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
	require.True(t, o.IsFunction("block"))
	require.False(t, o.IsFunction("plain"))

	runOrch(t, o)
	require.Eventually(t, func() bool { return started.Load() == 1 }, 10*time.Second, time.Millisecond)

	// One run in flight is the cap: the next invocation is throttled, and
	// so is InvokeAsync.
	_, err = o.Invoke(ctx, "block", batuta.Event{ID: "second"})
	require.ErrorIs(t, err, batuta.ErrBusy)
	_, err = o.InvokeAsync(ctx, "block", batuta.Event{ID: "third"})
	require.ErrorIs(t, err, batuta.ErrBusy)

	close(release)
	require.NoError(t, <-early)

	// InvokeAsync returns the run ID without waiting.
	runID, err := o.InvokeAsync(ctx, "block", batuta.Event{ID: "async"})
	require.NoError(t, err)
	run, err := o.Wait(ctx, runID)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, run.State)
	require.Equal(t, 1, run.Tasks[0].Output)

	// ctx ending while waiting returns ctx's error; the run goes on.
	short, cancel := context.WithCancel(ctx)
	cancel()
	_, err = o.Invoke(short, "block", batuta.Event{ID: "fourth"})
	require.ErrorIs(t, err, context.Canceled)
}

// TestFunctionConcurrencyLimitUnderLoad fires 1,000 concurrent invocations
// at a function with a concurrency limit of 5: the high-water mark of
// handlers running at once reaches 5 and never exceeds it.
func TestFunctionConcurrencyLimitUnderLoad(t *testing.T) {
	t.Parallel()
	const limit, n = 5, 1000
	o := lambdaOrch(t, batuta.Config{Workers: 32})
	var running, high, total atomic.Int64
	gate := make(chan struct{})
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "limited", Concurrency: limit},
		func(ctx context.Context, i int) (int, error) {
			cur := running.Add(1)
			defer running.Add(-1)
			for {
				h := high.Load()
				if cur <= h || high.CompareAndSwap(h, cur) {
					break
				}
			}
			total.Add(1)
			select { // hold the first ones until the limit is reached
			case <-gate:
			case <-ctx.Done():
			}
			return i * 2, nil
		}))
	runOrch(t, o)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := batuta.InvokeAs[int](ctx, o, "limited", i)
			if err == nil && out != i*2 {
				err = errors.New("wrong output for " + strconv.Itoa(i))
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	require.Eventually(t, func() bool { return high.Load() == limit }, 20*time.Second, time.Millisecond)
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, n, total.Load())
	require.EqualValues(t, limit, high.Load(), "high-water mark of concurrent handlers")
}

// recorder is a dead-letter destination that can be told to fail.
type recorder struct {
	mu    sync.Mutex
	got   []batuta.DeadLetter
	fails atomic.Int32
	calls atomic.Int32
}

func (r *recorder) HandleDeadLetter(_ context.Context, dl batuta.DeadLetter) error {
	r.calls.Add(1)
	if r.fails.Load() > 0 && r.fails.Add(-1) >= 0 {
		return errors.New("destination down")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, dl)
	return nil
}

func (r *recorder) list() []batuta.DeadLetter {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]batuta.DeadLetter(nil), r.got...)
}

func TestFunctionDeadLetter(t *testing.T) {
	t.Parallel()
	o := lambdaOrch(t, batuta.Config{})
	dl := &recorder{}
	dl.fails.Store(2) // the destination is down for two hand-offs
	var attempts atomic.Int32
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{
		Name: "charge", Retry: fastRetry, DeadLetter: dl,
		DeadLetterRetry: batuta.RetryPolicy{MaxAttempts: 5, InitialDelay: time.Millisecond, MaxDelay: time.Millisecond},
	}, func(_ context.Context, ev batuta.Event) (string, error) {
		attempts.Add(1)
		if string(ev.Data) == `"ok"` {
			return "charged", nil
		}
		return "", errors.New("card declined")
	}))
	runOrch(t, o)
	ctx := testCtx(t)

	// Success: nothing dead-lettered; the dead-letter task is skipped.
	out, err := batuta.InvokeAs[string](ctx, o, "charge", "ok")
	require.NoError(t, err)
	require.Equal(t, "charged", out)
	require.Zero(t, dl.calls.Load())

	// Failure after the last attempt: the caller gets the error, and the
	// event reaches the destination once (after it came back up).
	attempts.Store(0)
	ev := batuta.Event{ID: "pay-7", Type: "payment.requested", Data: []byte(`"declined"`)}
	_, err = o.Invoke(ctx, "charge", ev)
	var fe *batuta.FunctionError
	require.ErrorAs(t, err, &fe)
	require.EqualValues(t, 3, attempts.Load())
	got := dl.list()
	require.Len(t, got, 1)
	d := got[0]
	require.Equal(t, "pay-7", d.Event.ID)
	require.Equal(t, "payment.requested", d.Event.Type)
	require.Equal(t, `"declined"`, string(d.Event.Data))
	require.Equal(t, batuta.DeadLetterFailed, d.Reason)
	require.Equal(t, "card declined", d.Error)
	require.Equal(t, 3, d.Attempts)
	require.Equal(t, "charge", d.Workflow)
	require.Equal(t, fe.RunID, d.RunID)
	require.EqualValues(t, 3, dl.calls.Load(), "two refused hand-offs, one accepted")

	run, err := o.GetRun(ctx, fe.RunID)
	require.NoError(t, err)
	require.Equal(t, batuta.TaskFailed, run.Task(batuta.FunctionTask).State)
	require.Equal(t, batuta.TaskSucceeded, run.Task(batuta.FunctionDeadLetterTask).State)

	// Invoking the same event again finds the finished run: no second
	// dead letter.
	_, err = o.Invoke(ctx, "charge", ev)
	require.ErrorAs(t, err, &fe)
	require.Len(t, dl.list(), 1)
}

func TestFunctionCanceledRunIsNotDeadLettered(t *testing.T) {
	t.Parallel()
	o := lambdaOrch(t, batuta.Config{})
	dl := &recorder{}
	started := make(chan struct{})
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "wait", DeadLetter: dl},
		func(ctx context.Context, _ batuta.Event) (int, error) {
			close(started)
			<-ctx.Done()
			return 0, ctx.Err()
		}))
	runOrch(t, o)
	ctx := testCtx(t)
	runID, err := o.InvokeAsync(ctx, "wait", nil)
	require.NoError(t, err)
	<-started
	require.NoError(t, o.Cancel(ctx, runID))
	run, err := o.Wait(ctx, runID)
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, run.State)
	require.Zero(t, dl.calls.Load())
}

// TestFunctionFromQueueTrigger starts a function asynchronously from a
// queue: every message is handled, and a poison message ends in the
// function's dead-letter destination after exactly its attempts.
func TestFunctionFromQueueTrigger(t *testing.T) {
	t.Parallel()
	o := lambdaOrch(t, batuta.Config{})
	q := newQueue(t, batuta.MemoryQueueConfig{})
	dl := &recorder{}
	var handled, poison atomic.Int32
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "consume", Retry: fastRetry, DeadLetter: dl},
		func(_ context.Context, n int) (int, error) {
			if n < 0 {
				poison.Add(1)
				return 0, errors.New("negative")
			}
			handled.Add(1)
			return n, nil
		}))
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, DeadLetter: batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error {
		return errors.New("the queue trigger should not dead-letter here")
	}), Receivers: 4})
	require.NoError(t, err)
	require.NoError(t, o.Bind("consume", trig))
	runOrch(t, o)
	ctx := testCtx(t)
	for i := range 50 {
		require.NoError(t, q.Publish(ctx, batuta.Message{ID: "m" + strconv.Itoa(i), Body: []byte(strconv.Itoa(i))}))
	}
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "poison", Body: []byte(`-1`)}))
	require.Eventually(t, func() bool { return q.Len() == 0 && len(dl.list()) == 1 }, 20*time.Second, time.Millisecond)
	require.EqualValues(t, 50, handled.Load())
	require.EqualValues(t, 3, poison.Load())
	require.Equal(t, "poison", dl.list()[0].Event.ID)
	require.Equal(t, 3, dl.list()[0].Attempts)
}

func inc(_ context.Context, n int) (int, error) { return n + 1, nil }

// BenchmarkDirectCall is the baseline for BenchmarkInvoke: the handler
// called as a plain function.
func BenchmarkDirectCall(b *testing.B) {
	ctx := context.Background()
	f := inc
	var sum int
	for i := 0; b.Loop(); i++ {
		n, err := f(ctx, i)
		if err != nil {
			b.Fatal(err)
		}
		sum += n
	}
	_ = sum
}

// BenchmarkInvoke measures a synchronous Invoke of the same handler on the
// in-memory store: submit, claim, run, complete, wait, read the output.
func BenchmarkInvoke(b *testing.B) {
	o := lambdaOrch(b, batuta.Config{NoLogHooks: true})
	require.NoError(b, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "inc"}, inc))
	runOrch(b, o)
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		n, err := batuta.InvokeAs[int](ctx, o, "inc", i)
		if err != nil || n != i+1 {
			b.Fatal(n, err)
		}
	}
}

// BenchmarkInvokeParallel is BenchmarkInvoke from GOMAXPROCS goroutines.
func BenchmarkInvokeParallel(b *testing.B) {
	o := lambdaOrch(b, batuta.Config{NoLogHooks: true})
	require.NoError(b, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "inc"}, inc))
	runOrch(b, o)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := batuta.InvokeAs[int](ctx, o, "inc", 1); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
