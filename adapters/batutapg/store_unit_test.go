package batutapg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		field   string // *batuta.ConfigError field, or "" for an identifier error
		wantErr error
	}{
		{"zero value is valid", Config{}, "", nil},
		{"hostile but quotable schema", Config{Schema: `we"ird; DROP TABLE x;--`}, "", nil},
		{"schema with NUL", Config{Schema: "a\x00b"}, "", batuta.ErrInvalidIdentifier},
		{"schema with newline", Config{Schema: "a\nb"}, "", batuta.ErrInvalidIdentifier},
		{"schema too long for its channel", Config{Schema: strings.Repeat("s", 59)}, "", batuta.ErrInvalidIdentifier},
		{"schema at the limit", Config{Schema: strings.Repeat("s", 58)}, "", nil},
		{"negative ListenCheckTimeout", Config{ListenCheckTimeout: -1}, "ListenCheckTimeout", batuta.ErrInvalidConfig},
		{"negative MaxBatch", Config{MaxBatch: -1}, "MaxBatch", batuta.ErrInvalidConfig},
		{"negative MaxFlushes", Config{MaxFlushes: -1}, "MaxFlushes", batuta.ErrInvalidConfig},
		{"negative MaxCompletionFlushes", Config{MaxCompletionFlushes: -1}, "MaxCompletionFlushes", batuta.ErrInvalidConfig},
		{"negative ActiveRecount", Config{ActiveRecount: -1}, "ActiveRecount", batuta.ErrInvalidConfig},
		{"negative ClockSkew", Config{ClockSkew: -time.Second}, "ClockSkew", batuta.ErrInvalidConfig},
		{"liveness off", Config{LivenessInterval: -1}, "", nil},
		{"LivenessTimeout not above LivenessInterval", Config{LivenessInterval: time.Second, LivenessTimeout: time.Second}, "LivenessTimeout", batuta.ErrInvalidConfig},
		{"negative CompletionLockWait", Config{CompletionLockWait: -1}, "CompletionLockWait", batuta.ErrInvalidConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.cfg.withDefaults().validate()
			if tc.wantErr == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.wantErr)
			require.True(t, strings.HasPrefix(err.Error(), "batuta"), err.Error())
			if tc.field != "" {
				var ce *batuta.ConfigError
				require.ErrorAs(t, err, &ce)
				require.Equal(t, tc.field, ce.Field)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := Config{}.withDefaults()
	require.Equal(t, "batuta", c.Schema)
	require.NotNil(t, c.Logger)
	require.Equal(t, 1000, c.MaxBatch)
	require.Equal(t, 2, c.MaxFlushes)
	require.Equal(t, 2, c.MaxCompletionFlushes)
	require.Equal(t, time.Minute, c.ClockSkew)
	require.Equal(t, time.Second, c.ActiveRecount)
	require.Equal(t, 3*time.Second, c.ListenCheckTimeout)
}

func TestNewRefusesNilPool(t *testing.T) {
	t.Parallel()
	_, err := New(context.Background(), nil, Config{})
	var ce *batuta.ConfigError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "pool", ce.Field)
}

func TestEventEncoding(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	tests := []struct {
		name     string
		data     []byte
		verbatim bool
	}{
		{"json kept byte for byte", []byte("{ \"b\": 1,  \"a\" : [1, 2] }"), true},
		{"json scalar", []byte(`"text"`), true},
		{"not json", []byte("plain text"), false},
		{"binary", []byte{0, 1, 2, 0xff, 0xfe}, false},
		{"invalid utf-8 inside a json string", []byte("\"\xff\""), false},
		{"empty", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ev := batuta.Event{ID: "id-1", Source: "src", Type: "typ", Subject: "sub", Time: at, Data: tc.data,
				Metadata: map[string]string{"k": "v", "ü": "✓"}}
			b, err := encodeEvent(&ev)
			require.NoError(t, err)
			require.Equal(t, tc.verbatim, bytes.Contains(b, []byte(`"data":`+string(tc.data))), string(b))
			got, err := decodeEvent("id-1", b)
			require.NoError(t, err)
			require.True(t, got.Time.Equal(at))
			got.Time = at
			if len(tc.data) == 0 {
				require.Empty(t, got.Data)
				got.Data = ev.Data
			}
			require.Equal(t, ev, got)
		})
	}
}

func TestCleanText(t *testing.T) {
	t.Parallel()
	require.Equal(t, "a\uFFFDb", cleanText("a\x00b"))
	require.Equal(t, "a\uFFFDb", cleanText("a\xffb"))
	require.Equal(t, "ok ✓", cleanText("ok ✓"))
}

func TestUUIDRoundTrip(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "00000000-0000-0000-0000-000000000000"} {
		u, ok := parseUUID(s)
		require.True(t, ok)
		require.Equal(t, s, formatUUID(u))
	}
	u, ok := parseUUID("0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B")
	require.True(t, ok)
	require.Equal(t, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", formatUUID(u))
	for _, bad := range []string{"", "run-1", "0190a1b2c3d47e5f8a9b0c1d2e3f4a5b", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5g", "0190a1b2-c3d4-7e5f-8a9b_0c1d2e3f4a5b"} {
		_, ok := parseUUID(bad)
		require.False(t, ok, bad)
	}
}

func TestIntArrayLiteral(t *testing.T) {
	t.Parallel()
	require.Equal(t, "{}", intArrayLiteral(nil))
	require.Equal(t, "{3}", intArrayLiteral([]int{3}))
	require.Equal(t, "{0,12,7}", intArrayLiteral([]int{0, 12, 7}))
}

// TestCombinerBatches drives the combiner with a fake flush: every call
// gets its own results, batches respect maxBatch, calls do get combined,
// and no more than maxFlush flushes run at once.
func TestCombinerBatches(t *testing.T) {
	t.Parallel()
	var running, peak, flushes, multi atomic.Int64
	gate := make(chan struct{})
	var gateOnce sync.Once
	b := newCombiner(8, 2, func(ctx context.Context, items []int) ([]int, error) {
		if n := running.Add(1); n > peak.Load() {
			peak.Store(n)
		}
		defer running.Add(-1)
		flushes.Add(1)
		if len(items) > 8 {
			return nil, fmt.Errorf("batch of %d over maxBatch 8", len(items))
		}
		if len(items) > 1 {
			multi.Add(1)
		}
		<-gate // hold the first flushes until many calls queued up
		out := make([]int, len(items))
		for i, x := range items {
			out[i] = x * 10
		}
		return out, nil
	})
	const callers = 200
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			items := []int{i, i + 1000}
			out, err := b.do(context.Background(), items)
			if err != nil {
				errs <- err
				return
			}
			if len(out) != 2 || out[0] != i*10 || out[1] != (i+1000)*10 {
				errs <- fmt.Errorf("call %d got %v", i, out)
			}
		}()
	}
	require.Eventually(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.queue) >= 50
	}, 10*time.Second, time.Millisecond)
	gateOnce.Do(func() { close(gate) })
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.LessOrEqual(t, peak.Load(), int64(2))
	require.Positive(t, multi.Load(), "no call was combined with another")
	require.Less(t, flushes.Load(), int64(callers))
	b.mu.Lock()
	require.Zero(t, b.flushing, "a flush slot leaked")
	require.Empty(t, b.queue)
	b.mu.Unlock()
}

// TestCombinerCancelAndErrors: a caller whose ctx ends while queued leaves
// without its items being flushed; a flush error reaches every caller in
// the batch; the combiner keeps working afterwards.
func TestCombinerCancelAndErrors(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var seen sync.Map
	fail := atomic.Bool{}
	b := newCombiner(100, 1, func(ctx context.Context, items []string) ([]string, error) {
		for _, it := range items {
			seen.Store(it, true)
		}
		if items[0] == "blocker" {
			<-release
		}
		if fail.Load() {
			return nil, errors.New("boom")
		}
		return items, nil
	})
	done := make(chan error, 1)
	go func() {
		_, err := b.do(context.Background(), []string{"blocker"})
		done <- err
	}()
	require.Eventually(t, func() bool { _, ok := seen.Load("blocker"); return ok }, 5*time.Second, time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	queued := make(chan error, 1)
	go func() {
		_, err := b.do(ctx, []string{"canceled"})
		queued <- err
	}()
	require.Eventually(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.queue) == 1
	}, 5*time.Second, time.Millisecond)
	cancel()
	require.ErrorIs(t, <-queued, context.Canceled)
	close(release)
	require.NoError(t, <-done)
	_, flushed := seen.Load("canceled")
	require.False(t, flushed, "a canceled, never-taken call was flushed")

	fail.Store(true)
	_, err := b.do(context.Background(), []string{"x"})
	require.EqualError(t, err, "boom")
	fail.Store(false)
	out, err := b.do(context.Background(), []string{"y"})
	require.NoError(t, err)
	require.Equal(t, []string{"y"}, out)
}

// TestCombinerAbandonedResults: a caller that gives up while its items are
// in flight gets ctx.Err(), and its results go to abandoned (so a claim
// made for it can be released); the other callers of the batch get theirs.
func TestCombinerAbandonedResults(t *testing.T) {
	t.Parallel()
	hold, inFlight, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
	abandoned := make(chan []string, 2)
	b := newCombiner(100, 1, func(ctx context.Context, items []string) ([]string, error) {
		switch {
		case items[0] == "hold":
			<-hold
		case slices.Contains(items, "b"):
			close(inFlight)
			<-release
		}
		return items, nil
	})
	b.abandoned = func(out []string) { abandoned <- out }
	first := make(chan error, 1)
	go func() {
		_, err := b.do(context.Background(), []string{"hold"})
		first <- err
	}()
	require.Eventually(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.flushing == 1 && len(b.queue) == 0
	}, 5*time.Second, time.Millisecond)
	type answer struct {
		out []string
		err error
	}
	ansA, ansB := make(chan answer, 1), make(chan answer, 1)
	go func() {
		out, err := b.do(context.Background(), []string{"a"})
		ansA <- answer{out, err}
	}()
	require.Eventually(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.queue) == 1 }, 5*time.Second, time.Millisecond)
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	go func() {
		out, err := b.do(ctxB, []string{"b"})
		ansB <- answer{out, err}
	}()
	require.Eventually(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.queue) == 2 }, 5*time.Second, time.Millisecond)
	close(hold)
	require.NoError(t, <-first)
	<-inFlight // a and b are flushed together
	cancelB()
	got := <-ansB
	require.ErrorIs(t, got.err, context.Canceled)
	require.Nil(t, got.out)
	close(release)
	a := <-ansA
	require.NoError(t, a.err)
	require.Equal(t, []string{"a"}, a.out)
	select {
	case out := <-abandoned:
		require.Equal(t, []string{"b"}, out)
	case <-time.After(5 * time.Second):
		t.Fatal("the abandoned call's results were not handed to abandoned")
	}
	require.Empty(t, abandoned, "a served call's results were abandoned")
}

// TestCombinerSpill: with spill set, calls that find the only busy slot
// with fewer than spill items queued wait for it; the call that brings the
// queue to spill items starts a second flush, which takes the queue.
func TestCombinerSpill(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var running, peak atomic.Int64
	var batches sync.Map // first item -> batch size
	b := newCombiner(100, 2, func(ctx context.Context, items []int) ([]int, error) {
		n := running.Add(1)
		defer running.Add(-1)
		if n > peak.Load() {
			peak.Store(n)
		}
		batches.Store(items[0], len(items))
		if items[0] == 0 {
			<-gate // the first flush holds the first slot
		}
		return items, nil
	})
	b.spill = 4
	var wg sync.WaitGroup
	call := func(x int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := b.do(context.Background(), []int{x})
			if err != nil || len(out) != 1 || out[0] != x {
				t.Errorf("call %d: %v, %v", x, out, err)
			}
		}()
	}
	call(0)
	require.Eventually(t, func() bool { return running.Load() == 1 }, 5*time.Second, time.Millisecond)
	for x := 1; x <= 3; x++ {
		call(x)
		require.Eventually(t, func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.queued == x
		}, 5*time.Second, time.Millisecond)
	}
	b.mu.Lock()
	require.Equal(t, 1, b.flushing, "a second flush started with %d items queued, under spill 4", b.queued)
	b.mu.Unlock()
	call(4) // the fourth queued item: a second flush takes all four
	require.Eventually(t, func() bool { _, ok := batches.Load(1); return ok }, 5*time.Second, time.Millisecond)
	n, _ := batches.Load(1)
	require.Equal(t, 4, n, "the second flush's batch")
	close(gate)
	wg.Wait()
	require.Equal(t, int64(2), peak.Load())
	b.mu.Lock()
	defer b.mu.Unlock()
	require.Zero(t, b.flushing, "a flush slot leaked")
	require.Zero(t, b.queued)
	require.Empty(t, b.queue)
}
