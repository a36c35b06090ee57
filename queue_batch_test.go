package batuta_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// batchLog records what a batch function saw.
type batchLog struct {
	mu      sync.Mutex
	batches [][]string     // item IDs per batch
	seen    map[string]int // deliveries handled per item
}

func (l *batchLog) record(b batuta.Batch) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids := make([]string, len(b.Items))
	for i, it := range b.Items {
		ids[i] = it.ID
		l.seen[it.ID]++
	}
	l.batches = append(l.batches, ids)
}

func (l *batchLog) snapshot() ([][]string, map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := make(map[string]int, len(l.seen))
	for k, v := range l.seen {
		seen[k] = v
	}
	return append([][]string(nil), l.batches...), seen
}

// batchSetup registers a batch function and binds a batch queue trigger to
// it. handle decides the result; the orchestrator runs until the test ends.
func batchSetup(t *testing.T, q *batuta.MemoryQueue, tcfg batuta.QueueTriggerConfig, handle func(b batuta.Batch) (batuta.BatchResult, error)) *batchLog {
	t.Helper()
	o := lambdaOrch(t, batuta.Config{})
	l := &batchLog{seen: map[string]int{}}
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "batch", Retry: batuta.RetryPolicy{MaxAttempts: 1}},
		func(_ context.Context, b batuta.Batch) (batuta.BatchResult, error) {
			l.record(b)
			return handle(b)
		}))
	tcfg.Queue = q
	if tcfg.RetryDelay == 0 {
		tcfg.RetryDelay = time.Millisecond
	}
	trig, err := batuta.NewQueueTrigger(tcfg)
	require.NoError(t, err)
	require.NoError(t, o.Bind("batch", trig))
	runOrch(t, o)
	return l
}

func TestQueueBatchSizes(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	ids := publishN(t, q, 95, "b-")
	l := batchSetup(t, q, batuta.QueueTriggerConfig{
		DeadLetter: &deadLetters{}, Receivers: 3, Batch: batuta.BatchConfig{Size: 10},
	}, func(b batuta.Batch) (batuta.BatchResult, error) {
		for _, it := range b.Items {
			if _, err := batuta.DecodeEvent[int](it.Event); err != nil {
				return batuta.BatchResult{}, err
			}
		}
		return batuta.BatchResult{}, nil
	})
	require.Eventually(t, func() bool { return q.Len() == 0 }, 20*time.Second, time.Millisecond)
	batches, seen := l.snapshot()
	for _, b := range batches {
		require.LessOrEqual(t, len(b), 10)
		require.NotEmpty(t, b)
	}
	require.Len(t, seen, len(ids))
	for _, id := range ids {
		require.Equal(t, 1, seen[id], id)
	}
}

// TestQueueBatchWindow: with a window, messages that arrive after the
// first one join its batch until the window closes.
func TestQueueBatchWindow(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	clock := batutatest.NewFakeClock(time.Now())
	l := batchSetup(t, q, batuta.QueueTriggerConfig{
		DeadLetter: &deadLetters{}, Clock: clock, Batch: batuta.BatchConfig{Size: 100, Window: time.Minute},
	}, func(batuta.Batch) (batuta.BatchResult, error) { return batuta.BatchResult{}, nil })
	ctx := testCtx(t)
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "w-0"}))
	require.True(t, clock.WaitForTimers(1, 10*time.Second), "the window timer starts with the first message")
	for i := 1; i < 5; i++ {
		require.NoError(t, q.Publish(ctx, batuta.Message{ID: "w-" + strconv.Itoa(i)}))
	}
	require.Eventually(t, func() bool { return q.InFlight() == 5 }, 10*time.Second, time.Millisecond)
	batches, _ := l.snapshot()
	require.Empty(t, batches, "no run before the window closes")
	clock.Advance(time.Minute)
	require.Eventually(t, func() bool { return q.Len() == 0 }, 10*time.Second, time.Millisecond)
	batches, _ = l.snapshot()
	require.Equal(t, [][]string{{"w-0", "w-1", "w-2", "w-3", "w-4"}}, batches)
}

// TestQueueBatchPartialFailure: only the items the run reports failed are
// redelivered; a poison item goes to dead letter after exactly
// MaxDeliveries deliveries while the rest keep flowing.
func TestQueueBatchPartialFailure(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	ids := publishN(t, q, 30, "p-")
	dl := &deadLetters{}
	l := batchSetup(t, q, batuta.QueueTriggerConfig{
		DeadLetter: dl, MaxDeliveries: 3, Receivers: 2, Batch: batuta.BatchConfig{Size: 8},
	}, func(b batuta.Batch) (batuta.BatchResult, error) {
		var res batuta.BatchResult
		for _, it := range b.Items {
			n, err := batuta.DecodeEvent[int](it.Event)
			switch {
			case err != nil:
				return res, err
			case n == 7:
				res.Fail(it.ID, errors.New("poison"))
			case n%3 == 0 && it.Attempt == 1:
				res.Fail(it.ID, errors.New("transient"))
			}
		}
		return res, nil
	})
	require.Eventually(t, func() bool { return q.Len() == 0 && len(dl.get()) == 1 }, 20*time.Second, time.Millisecond)
	_, seen := l.snapshot()
	for i, id := range ids {
		want := 1
		switch {
		case i == 7:
			want = 3
		case i%3 == 0:
			want = 2
		}
		require.Equal(t, want, seen[id], "deliveries of %s", id)
	}
	d := dl.get()[0]
	require.Equal(t, "p-7", d.Event.ID)
	require.Equal(t, 3, d.Attempts)
	require.Equal(t, batuta.DeadLetterMaxDeliveries, d.Reason)
	require.Equal(t, "poison", d.Error)
	require.Equal(t, "batch", d.Workflow)
}

// TestQueueBatchWholeFailure: a batch run that fails (an error, a panic)
// redelivers all of its items.
func TestQueueBatchWholeFailure(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		fail func() (batuta.BatchResult, error)
	}{
		{"error", func() (batuta.BatchResult, error) { return batuta.BatchResult{}, errors.New("db down") }},
		{"panic", func() (batuta.BatchResult, error) { panic("bug") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q := newQueue(t, batuta.MemoryQueueConfig{})
			ids := publishN(t, q, 12, "x-")
			var mu sync.Mutex
			failed := false
			l := batchSetup(t, q, batuta.QueueTriggerConfig{
				DeadLetter: &deadLetters{}, Batch: batuta.BatchConfig{Size: 50},
			}, func(b batuta.Batch) (batuta.BatchResult, error) {
				mu.Lock()
				first := !failed
				failed = true
				mu.Unlock()
				if first {
					return tc.fail()
				}
				return batuta.BatchResult{}, nil
			})
			require.Eventually(t, func() bool { return q.Len() == 0 }, 20*time.Second, time.Millisecond)
			batches, seen := l.snapshot()
			first := batches[0]
			for _, id := range ids {
				want := 1
				for _, f := range first {
					if f == id {
						want = 2
					}
				}
				require.Equal(t, want, seen[id], id)
			}
		})
	}
}

func TestQueueBatchMaxAge(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	ctx := testCtx(t)
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "old", Time: time.Now().Add(-time.Hour)}))
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "fresh"}))
	dl := &deadLetters{}
	l := batchSetup(t, q, batuta.QueueTriggerConfig{
		DeadLetter: dl, MaxAge: time.Minute, Batch: batuta.BatchConfig{Size: 10},
	}, func(batuta.Batch) (batuta.BatchResult, error) { return batuta.BatchResult{}, nil })
	require.Eventually(t, func() bool { return q.Len() == 0 }, 20*time.Second, time.Millisecond)
	_, seen := l.snapshot()
	require.Equal(t, map[string]int{"fresh": 1}, seen)
	require.Len(t, dl.get(), 1)
	require.Equal(t, "old", dl.get()[0].Event.ID)
	require.Equal(t, batuta.DeadLetterMaxAge, dl.get()[0].Reason)
}

func TestBatchItemJSON(t *testing.T) {
	t.Parallel()
	var r batuta.BatchResult
	r.Fail("a", errors.New("boom"))
	r.Fail("b", nil)
	require.Equal(t, []batuta.BatchItemFailure{{ID: "a", Error: "boom"}, {ID: "b"}}, r.Failed)

	type payload struct{ N int }
	v, err := batuta.DecodeEvent[payload](batuta.Event{Data: []byte(`{"N":3}`)})
	require.NoError(t, err)
	require.Equal(t, 3, v.N)
	v, err = batuta.DecodeEvent[payload](batuta.Event{})
	require.NoError(t, err)
	require.Zero(t, v.N)
	_, err = batuta.DecodeEvent[payload](batuta.Event{ID: "e", Data: []byte(`{`)})
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)
}

// TestQueueBatchInvalidResultFailsWholeBatch: as in AWS Lambda's partial
// batch response, a BatchItemFailure with an empty ID or an ID that names
// no item of the batch makes the whole batch a failure (every item is
// redelivered) instead of acking the items that really failed. A failure
// listed twice fails its item once; the others are acked.
func TestQueueBatchInvalidResultFailsWholeBatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		bad   func(b batuta.Batch) batuta.BatchResult
		whole bool // whole batch redelivered, else only items[0]
	}{
		{"empty id", func(b batuta.Batch) batuta.BatchResult {
			return batuta.BatchResult{Failed: []batuta.BatchItemFailure{{ID: b.Items[0].ID}, {ID: "", Error: "lost"}}}
		}, true},
		{"unknown id", func(b batuta.Batch) batuta.BatchResult {
			return batuta.BatchResult{Failed: []batuta.BatchItemFailure{{ID: "no-such-message"}}}
		}, true},
		{"id with a typo", func(b batuta.Batch) batuta.BatchResult {
			return batuta.BatchResult{Failed: []batuta.BatchItemFailure{{ID: b.Items[0].ID + " "}}}
		}, true},
		{"wrong key name", func(b batuta.Batch) batuta.BatchResult {
			// A result built from JSON with another key for the ID
			// ("itemIdentifier") decodes with an empty ID.
			var res batuta.BatchResult
			require.NoError(t, json.Unmarshal([]byte(`{"failed":[{"itemIdentifier":"`+b.Items[0].ID+`"}]}`), &res))
			return res
		}, true},
		{"duplicate id", func(b batuta.Batch) batuta.BatchResult {
			return batuta.BatchResult{Failed: []batuta.BatchItemFailure{{ID: b.Items[0].ID, Error: "first"}, {ID: b.Items[0].ID, Error: "second"}}}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q := newQueue(t, batuta.MemoryQueueConfig{})
			ids := publishN(t, q, 6, "i-")
			dl := &deadLetters{}
			var mu sync.Mutex
			calls := 0
			l := batchSetup(t, q, batuta.QueueTriggerConfig{
				DeadLetter: dl, MaxDeliveries: 2, Batch: batuta.BatchConfig{Size: 50},
			}, func(b batuta.Batch) (batuta.BatchResult, error) {
				mu.Lock()
				calls++
				first := calls == 1
				mu.Unlock()
				if first {
					return tc.bad(b), nil
				}
				return batuta.BatchResult{}, nil
			})
			require.Eventually(t, func() bool { return q.Len() == 0 }, 20*time.Second, time.Millisecond)
			batches, seen := l.snapshot()
			first := batches[0]
			require.NotEmpty(t, first)
			for _, id := range ids {
				want := 1
				for j, f := range first {
					if f == id && (tc.whole || j == 0) {
						want = 2
					}
				}
				require.Equal(t, want, seen[id], id)
			}
			require.Empty(t, dl.get(), "the redelivered items succeeded on their second delivery")
		})
	}
}

// TestQueueBatchDeadLetterDestinationDown: a batch whose items all go to a
// failing dead-letter destination parks every item, with a bounded number
// of hand-offs: DeadLetterAttempts for the first, then one each while the
// destination is known to fail (the other deliveries are not held for
// rounds of retries each). Nothing is lost: all stay in the queue.
func TestQueueBatchDeadLetterDestinationDown(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	publishN(t, q, 5, "d-")
	dl := &deadLetters{}
	dl.fail.Store(1 << 30)
	var parked atomic.Int32
	batchSetup(t, q, batuta.QueueTriggerConfig{
		DeadLetter: dl, MaxDeliveries: 1, Batch: batuta.BatchConfig{Size: 10},
		OnParked: func(context.Context, batuta.DeadLetter, error) { parked.Add(1) },
	}, func(b batuta.Batch) (batuta.BatchResult, error) {
		var res batuta.BatchResult
		for _, it := range b.Items {
			res.Fail(it.ID, errors.New("poison"))
		}
		return res, nil
	})
	require.Eventually(t, func() bool { return parked.Load() == 5 && q.InFlight() == 0 }, 20*time.Second, time.Millisecond)
	require.EqualValues(t, 3+4, dl.calls.Load())
	require.Equal(t, 5, q.Len(), "parked in the queue, not lost")
}
