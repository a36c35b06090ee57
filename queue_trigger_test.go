package batuta_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// newQueue returns an in-memory queue with a short visibility timeout.
func newQueue(t testing.TB, cfg batuta.MemoryQueueConfig) *batuta.MemoryQueue {
	t.Helper()
	if cfg.VisibilityTimeout == 0 {
		cfg.VisibilityTimeout = 5 * time.Second
	}
	q, err := batuta.NewMemoryQueue(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = q.Close() })
	return q
}

func publishN(t testing.TB, q batuta.Queue, n int, prefix string) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range n {
		ids[i] = prefix + strconv.Itoa(i)
		require.NoError(t, q.Publish(context.Background(), batuta.Message{ID: ids[i], Body: []byte(strconv.Itoa(i))}))
	}
	return ids
}

// deadLetters collects dead letters.
type deadLetters struct {
	mu    sync.Mutex
	list  []batuta.DeadLetter
	fail  atomic.Int32 // fail this many calls first
	calls atomic.Int32 // hand-offs tried
}

func (d *deadLetters) HandleDeadLetter(_ context.Context, dl batuta.DeadLetter) error {
	d.calls.Add(1)
	if d.fail.Load() > 0 && d.fail.Add(-1) >= 0 {
		return errors.New("dead-letter store down")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.list = append(d.list, dl)
	return nil
}

func (d *deadLetters) get() []batuta.DeadLetter {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]batuta.DeadLetter(nil), d.list...)
}

// runTrigger runs trig.Run in the background; the returned stop cancels it
// and returns Run's error.
func runTrigger(t *testing.T, trig *batuta.QueueTrigger, fire batuta.FireFunc) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- trig.Run(ctx, fire) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-errc
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func newTrigger(t *testing.T, cfg batuta.QueueTriggerConfig) *batuta.QueueTrigger {
	t.Helper()
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = time.Millisecond
	}
	if cfg.BusyDelay == 0 {
		cfg.BusyDelay = time.Millisecond
	}
	trig, err := batuta.NewQueueTrigger(cfg)
	require.NoError(t, err)
	return trig
}

func TestQueueTriggerConfigValidation(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	dl := batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error { return nil })
	tests := []struct {
		field string
		cfg   batuta.QueueTriggerConfig
	}{
		{"Queue", batuta.QueueTriggerConfig{DeadLetter: dl}},
		{"DeadLetter", batuta.QueueTriggerConfig{Queue: q}},
		{"Receivers", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, Receivers: -1}},
		{"ReceiveMax", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, ReceiveMax: -1}},
		{"Ack", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, Ack: 7}},
		{"MaxDeliveries", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, MaxDeliveries: -1}},
		{"MaxAge", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, MaxAge: -time.Second}},
		{"RetryDelay", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, RetryDelay: -1}},
		{"MaxRetryDelay", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, MaxRetryDelay: -1}},
		{"BusyDelay", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, BusyDelay: -1}},
		{"SettleTimeout", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, SettleTimeout: -1}},
		{"DeadLetterAttempts", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, DeadLetterAttempts: -1}},
		{"ParkDelay", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, ParkDelay: -1}},
		{"Batch.Size", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, Batch: batuta.BatchConfig{Size: -1}}},
		{"Batch.Window", batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, Batch: batuta.BatchConfig{Window: -1}}},
	}
	for _, tc := range tests {
		t.Run(tc.field, func(t *testing.T) {
			_, err := batuta.NewQueueTrigger(tc.cfg)
			require.ErrorIs(t, err, batuta.ErrInvalidConfig)
			var ce *batuta.ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.field, ce.Field)
		})
	}
}

func TestQueueTriggerRunRefusesModesNeedingRuns(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	dl := &deadLetters{}
	for _, cfg := range []batuta.QueueTriggerConfig{
		{Queue: q, DeadLetter: dl, Ack: batuta.AckOnFinish},
		{Queue: q, DeadLetter: dl, Batch: batuta.BatchConfig{Size: 5}},
	} {
		trig := newTrigger(t, cfg)
		err := trig.Run(context.Background(), func(context.Context, batuta.Event) error { return nil })
		require.ErrorIs(t, err, batuta.ErrInvalidConfig)
	}
}

func TestQueueTriggerFiresAndAcks(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	var got sync.Map
	var n atomic.Int32
	trig := newTrigger(t, batuta.QueueTriggerConfig{Queue: q, DeadLetter: &deadLetters{}, Receivers: 3, Source: "queue/orders"})
	stop := runTrigger(t, trig, func(_ context.Context, ev batuta.Event) error {
		got.Store(ev.ID, ev)
		n.Add(1)
		return nil
	})
	require.NoError(t, q.Publish(context.Background(), batuta.Message{
		ID: "m-1", Body: []byte(`{"a":1}`), Headers: map[string]string{"type": "order.created", "k": "v"},
	}))
	ids := publishN(t, q, 99, "n-")
	require.Eventually(t, func() bool { return q.Len() == 0 }, 10*time.Second, time.Millisecond)
	require.NoError(t, stop())
	require.EqualValues(t, 100, n.Load())
	for _, id := range ids {
		_, ok := got.Load(id)
		require.True(t, ok, id)
	}
	v, _ := got.Load("m-1")
	ev := v.(batuta.Event)
	require.Equal(t, "queue/orders", ev.Source)
	require.Equal(t, "order.created", ev.Type)
	require.JSONEq(t, `{"a":1}`, string(ev.Data))
	require.Equal(t, "v", ev.Metadata["k"])
	require.False(t, ev.Time.IsZero())
}

func TestQueueTriggerPoisonMessageDeadLetteredAfterExactlyMaxDeliveries(t *testing.T) {
	t.Parallel()
	for _, max := range []int{1, 3, 5} {
		t.Run(strconv.Itoa(max), func(t *testing.T) {
			t.Parallel()
			q := newQueue(t, batuta.MemoryQueueConfig{})
			dl := &deadLetters{}
			var poisonFires, goodFires atomic.Int32
			trig := newTrigger(t, batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, MaxDeliveries: max, Receivers: 2})
			stop := runTrigger(t, trig, func(_ context.Context, ev batuta.Event) error {
				if ev.ID == "poison" {
					poisonFires.Add(1)
					return errors.New("cannot parse")
				}
				goodFires.Add(1)
				return nil
			})
			require.NoError(t, q.Publish(context.Background(), batuta.Message{ID: "poison", Body: []byte(`{`)}))
			publishN(t, q, 20, "good-")
			require.Eventually(t, func() bool { return len(dl.get()) == 1 && q.Len() == 0 }, 10*time.Second, time.Millisecond)
			require.NoError(t, stop())
			require.EqualValues(t, max, poisonFires.Load(), "fired once per delivery")
			require.EqualValues(t, 20, goodFires.Load(), "other work kept flowing")
			d := dl.get()[0]
			require.Equal(t, "poison", d.Event.ID)
			require.Equal(t, batuta.DeadLetterMaxDeliveries, d.Reason)
			require.Equal(t, max, d.Attempts)
			require.Equal(t, "cannot parse", d.Error)
			require.Equal(t, `{`, string(d.Event.Data))
		})
	}
}

func TestQueueTriggerDeadLetterReasons(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		msg    batuta.Message
		cfg    func(*batuta.QueueTriggerConfig)
		fire   error
		reason batuta.DeadLetterReason
		fired  int32
	}{
		{
			name: "permanent", msg: batuta.Message{ID: "p"},
			fire: batuta.Permanent(errors.New("no such customer")), reason: batuta.DeadLetterPermanent, fired: 1,
		},
		{
			name: "payload too large", msg: batuta.Message{ID: "big"},
			fire: &batuta.PayloadTooLargeError{What: "event data", Size: 10, Limit: 5}, reason: batuta.DeadLetterPermanent, fired: 1,
		},
		{
			name: "unknown workflow", msg: batuta.Message{ID: "u"},
			fire: fmt.Errorf("submit: %w", batuta.ErrUnknownWorkflow), reason: batuta.DeadLetterPermanent, fired: 1,
		},
		{
			name: "max age", msg: batuta.Message{ID: "old", Time: time.Now().Add(-2 * time.Hour)},
			cfg:    func(c *batuta.QueueTriggerConfig) { c.MaxAge = time.Hour },
			reason: batuta.DeadLetterMaxAge, fired: 0,
		},
		{
			name: "malformed", msg: batuta.Message{ID: "bad", Body: []byte("not json")},
			cfg: func(c *batuta.QueueTriggerConfig) {
				c.Event = func(d batuta.Delivery) (batuta.Event, error) {
					return batuta.Event{}, errors.New("body is not JSON")
				}
			},
			reason: batuta.DeadLetterMalformed, fired: 0,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q := newQueue(t, batuta.MemoryQueueConfig{})
			dl := &deadLetters{}
			cfg := batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, MaxDeliveries: 5}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			var fired atomic.Int32
			stop := runTrigger(t, newTrigger(t, cfg), func(context.Context, batuta.Event) error {
				fired.Add(1)
				return tc.fire
			})
			require.NoError(t, q.Publish(context.Background(), tc.msg))
			require.Eventually(t, func() bool { return len(dl.get()) == 1 && q.Len() == 0 }, 10*time.Second, time.Millisecond)
			require.NoError(t, stop())
			d := dl.get()[0]
			require.Equal(t, tc.reason, d.Reason)
			require.Equal(t, tc.msg.ID, d.Event.ID)
			require.Equal(t, 1, d.Attempts)
			require.NotEmpty(t, d.Error)
			require.Equal(t, tc.fired, fired.Load())
		})
	}
}

func TestQueueTriggerBusyNeverDeadLetters(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	dl := &deadLetters{}
	var calls atomic.Int32
	trig := newTrigger(t, batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, MaxDeliveries: 2})
	stop := runTrigger(t, trig, func(context.Context, batuta.Event) error {
		if calls.Add(1) <= 6 {
			return fmt.Errorf("submit: %w", batuta.ErrBusy)
		}
		return nil
	})
	require.NoError(t, q.Publish(context.Background(), batuta.Message{ID: "m"}))
	require.Eventually(t, func() bool { return q.Len() == 0 }, 10*time.Second, time.Millisecond)
	require.NoError(t, stop())
	require.Empty(t, dl.get(), "busy is backpressure, not a failure of the message")
	require.EqualValues(t, 7, calls.Load())
}

func TestQueueTriggerDeadLetterDestinationDownKeepsMessage(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	dl := &deadLetters{}
	dl.fail.Store(2)
	var fired atomic.Int32
	trig := newTrigger(t, batuta.QueueTriggerConfig{Queue: q, DeadLetter: dl, MaxDeliveries: 2})
	stop := runTrigger(t, trig, func(context.Context, batuta.Event) error {
		fired.Add(1)
		return errors.New("boom")
	})
	require.NoError(t, q.Publish(context.Background(), batuta.Message{ID: "m"}))
	require.Eventually(t, func() bool { return len(dl.get()) == 1 && q.Len() == 0 }, 10*time.Second, time.Millisecond)
	require.NoError(t, stop())
	// Delivery 1 failed and was retried; delivery 2 failed too and tried
	// the dead-letter destination, which refused twice and took the third
	// try (DeadLetterAttempts 3), without another delivery or fire.
	require.EqualValues(t, 2, fired.Load())
	require.EqualValues(t, 3, dl.calls.Load())
	require.Equal(t, 2, dl.get()[0].Attempts)
	require.Zero(t, trig.Parked())
}

// TestQueueTriggerDeadLetterHandOffNeverLoops: a dead-letter destination
// that keeps failing must not make the message loop past MaxDeliveries
// (before the fix, each redelivery fired the event again and tried the
// destination again, forever). The hand-off is tried DeadLetterAttempts
// times, then the message is parked at the source for ParkDelay: counted,
// reported, kept. When it comes back it goes straight to the hand-off,
// without firing again, and is dead-lettered once the destination works.
func TestQueueTriggerDeadLetterHandOffNeverLoops(t *testing.T) {
	t.Parallel()
	clk := batutatest.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	q := newQueue(t, batuta.MemoryQueueConfig{Clock: clk}) // delays and visibility on the fake clock
	dl := &deadLetters{}
	dl.fail.Store(1 << 30)
	var fired atomic.Int32
	parked := make(chan batuta.DeadLetter, 10)
	trig := newTrigger(t, batuta.QueueTriggerConfig{
		Queue: q, DeadLetter: dl, MaxDeliveries: 2, ParkDelay: time.Hour, ExtendEvery: -1,
		OnParked: func(_ context.Context, d batuta.DeadLetter, err error) {
			require.ErrorContains(t, err, "dead-letter store down")
			parked <- d
		},
	})
	stop := runTrigger(t, trig, func(context.Context, batuta.Event) error {
		fired.Add(1)
		return errors.New("boom")
	})
	require.NoError(t, q.Publish(context.Background(), batuta.Message{ID: "m", Body: []byte("payload")}))
	// Delivery 1 fails and is nacked with RetryDelay (1 ms, fake clock).
	require.Eventually(t, func() bool { return fired.Load() == 1 && q.InFlight() == 0 }, 10*time.Second, time.Millisecond)
	clk.Advance(time.Second)
	var d batuta.DeadLetter
	select {
	case d = <-parked:
	case <-time.After(10 * time.Second):
		t.Fatal("never parked")
	}
	require.Eventually(t, func() bool { return q.InFlight() == 0 }, 10*time.Second, time.Millisecond)
	require.EqualValues(t, 2, fired.Load(), "fired once per allowed delivery, not again for the hand-off")
	require.EqualValues(t, 3, dl.calls.Load(), "DeadLetterAttempts tries, then parked")
	require.EqualValues(t, 1, trig.Parked())
	require.Equal(t, batuta.DeadLetterMaxDeliveries, d.Reason)
	require.Equal(t, "boom", d.Error)
	require.Equal(t, 1, q.Len(), "parked at the source, not lost")

	// Nothing happens before ParkDelay.
	clk.Advance(time.Hour - time.Second)
	select {
	case <-parked:
		t.Fatal("parked again before ParkDelay")
	default:
	}
	// After ParkDelay: one more hand-off (a single try: the destination is
	// known to be failing), no fire.
	clk.Advance(2 * time.Second)
	select {
	case <-parked:
	case <-time.After(10 * time.Second):
		t.Fatal("not parked again")
	}
	require.EqualValues(t, 2, fired.Load())
	require.EqualValues(t, 4, dl.calls.Load())
	require.EqualValues(t, 2, trig.Parked())

	// The destination recovers: the next round hands it off and acks it.
	dl.fail.Store(0)
	require.Eventually(t, func() bool { return q.InFlight() == 0 }, 10*time.Second, time.Millisecond)
	clk.Advance(time.Hour + time.Second)
	require.Eventually(t, func() bool { return len(dl.get()) == 1 && q.Len() == 0 }, 10*time.Second, time.Millisecond)
	require.NoError(t, stop())
	require.EqualValues(t, 2, fired.Load())
	got := dl.get()[0]
	require.Equal(t, "m", got.Event.ID)
	require.Equal(t, batuta.DeadLetterMaxDeliveries, got.Reason, "the reason of the first hand-off is kept")
	require.Equal(t, "boom", got.Error)
	require.Equal(t, 4, got.Attempts)
	require.Equal(t, "payload", string(got.Event.Data))
}

// TestQueueTriggerDeadLetterPermanentErrorParksAtOnce: a hand-off that
// fails with a Permanent error (or payload too large) is not retried.
func TestQueueTriggerDeadLetterPermanentErrorParksAtOnce(t *testing.T) {
	t.Parallel()
	for _, herr := range []error{
		batuta.Permanent(errors.New("refused")),
		fmt.Errorf("publish: %w", &batuta.PayloadTooLargeError{What: "message body", Size: 10, Limit: 5}),
	} {
		q := newQueue(t, batuta.MemoryQueueConfig{})
		var calls atomic.Int32
		parked := make(chan struct{}, 1)
		trig := newTrigger(t, batuta.QueueTriggerConfig{
			Queue: q, MaxDeliveries: 1,
			DeadLetter: batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error {
				calls.Add(1)
				return herr
			}),
			OnParked: func(context.Context, batuta.DeadLetter, error) { parked <- struct{}{} },
		})
		stop := runTrigger(t, trig, func(context.Context, batuta.Event) error { return errors.New("boom") })
		require.NoError(t, q.Publish(context.Background(), batuta.Message{ID: "m"}))
		select {
		case <-parked:
		case <-time.After(10 * time.Second):
			t.Fatal("never parked")
		}
		require.NoError(t, stop())
		require.EqualValues(t, 1, calls.Load(), herr.Error())
		require.Equal(t, 1, q.Len())
		require.Zero(t, q.InFlight())
	}
}

// TestQueueTriggerStopMidFlightLosesNothing stops the trigger while many
// fires are in progress, then starts a new one: every published message is
// processed at least once, none is left in the queue, none was left
// unsettled by the stopped trigger.
func TestQueueTriggerStopMidFlightLosesNothing(t *testing.T) {
	t.Parallel()
	const n = 2000
	q := newQueue(t, batuta.MemoryQueueConfig{VisibilityTimeout: time.Minute})
	ids := publishN(t, q, n, "m-")
	var (
		mu        sync.Mutex
		processed = map[string]int{}
		total     atomic.Int32
	)
	fire := func(ctx context.Context, ev batuta.Event) error {
		if c := total.Add(1); c%7 == 0 {
			return errors.New("transient") // some fail and are retried
		}
		mu.Lock()
		processed[ev.ID]++
		mu.Unlock()
		return nil
	}
	sc := &settleCounter{MemoryQueue: q, settled: map[string]int{}}
	cfg := batuta.QueueTriggerConfig{Queue: sc, DeadLetter: &deadLetters{}, Receivers: 8, ReceiveMax: 16, MaxDeliveries: 100}
	stop := runTrigger(t, newTrigger(t, cfg), fire)
	require.Eventually(t, func() bool { return total.Load() >= n/3 }, 10*time.Second, time.Millisecond)
	require.NoError(t, stop())
	// The stopped trigger settled everything it received: nothing waits for
	// a visibility timeout (a minute here).
	require.Zero(t, q.InFlight(), "deliveries left unsettled by the stopped trigger")
	mu.Lock()
	done := len(processed)
	mu.Unlock()
	require.Less(t, done, n, "the trigger should have been stopped mid-flight")

	stop = runTrigger(t, newTrigger(t, cfg), fire)
	require.Eventually(t, func() bool { return q.Len() == 0 }, 20*time.Second, time.Millisecond)
	require.NoError(t, stop())
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		require.GreaterOrEqual(t, processed[id], 1, "message %s lost", id)
	}
	require.Len(t, processed, n)
	sc.mu.Lock()
	defer sc.mu.Unlock()
	require.Empty(t, sc.failed, "settle errors (double acks would show here)")
	for k, c := range sc.settled {
		require.Equal(t, 1, c, "delivery %s settled %d times", k, c)
	}
}

// settleCounter counts how often each delivery (message ID and attempt) is
// settled, and records settle errors.
type settleCounter struct {
	*batuta.MemoryQueue
	mu      sync.Mutex
	settled map[string]int
	failed  []error
}

func (s *settleCounter) count(d batuta.Delivery, err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settled[d.ID+"#"+strconv.Itoa(d.Attempt)]++
	if err != nil {
		s.failed = append(s.failed, err)
	}
	return err
}

func (s *settleCounter) Ack(ctx context.Context, d batuta.Delivery) error {
	return s.count(d, s.MemoryQueue.Ack(ctx, d))
}

func (s *settleCounter) Nack(ctx context.Context, d batuta.Delivery, delay time.Duration) error {
	return s.count(d, s.MemoryQueue.Nack(ctx, d, delay))
}

func TestQueueTriggerQueueClosedEndsRun(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	trig := newTrigger(t, batuta.QueueTriggerConfig{Queue: q, DeadLetter: &deadLetters{}, Receivers: 3})
	errc := make(chan error, 1)
	go func() {
		errc <- trig.Run(context.Background(), func(context.Context, batuta.Event) error { return nil })
	}()
	require.NoError(t, q.Close())
	select {
	case err := <-errc:
		require.ErrorIs(t, err, batuta.ErrClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the queue was closed")
	}
}

// TestQueueTriggerStartStopStress starts and stops triggers from many
// goroutines under -race: Run always returns, nothing is left unsettled.
func TestQueueTriggerStartStopStress(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{VisibilityTimeout: time.Minute})
	publishN(t, q, 500, "s-")
	var processed atomic.Int32
	cfg := batuta.QueueTriggerConfig{Queue: q, DeadLetter: &deadLetters{}, Receivers: 2, ReceiveMax: 3}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				trig, err := batuta.NewQueueTrigger(cfg)
				if err != nil {
					t.Error(err)
					return
				}
				ctx, cancel := context.WithCancel(context.Background())
				if (g+i)%2 == 0 {
					cancel()
				}
				errc := make(chan error, 1)
				go func() {
					errc <- trig.Run(ctx, func(context.Context, batuta.Event) error { processed.Add(1); return nil })
				}()
				cancel()
				if err := <-errc; err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	require.Zero(t, q.InFlight())
	require.Equal(t, 500-int(processed.Load()), q.Len())
}

func TestDeadLetterQueuePublishes(t *testing.T) {
	t.Parallel()
	dlq := newQueue(t, batuta.MemoryQueueConfig{})
	h := batuta.DeadLetterQueue(dlq)
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	require.NoError(t, h.HandleDeadLetter(context.Background(), batuta.DeadLetter{
		Event:    batuta.Event{ID: "e-1", Source: "queue/in", Type: "order.created", Subject: "o-9", Time: at, Data: []byte(`{"x":1}`), Metadata: map[string]string{"k": "v"}},
		Reason:   batuta.DeadLetterMaxDeliveries,
		Error:    "boom",
		Attempts: 4,
		Workflow: "orders",
		RunID:    "r-1",
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ds, err := dlq.Receive(ctx, 1)
	require.NoError(t, err)
	m := ds[0].Message
	require.Equal(t, "e-1", m.ID)
	require.Equal(t, `{"x":1}`, string(m.Body))
	require.Equal(t, at, m.Time)
	require.Equal(t, map[string]string{
		"k":                             "v",
		batuta.HeaderDeadLetterReason:   "max_deliveries",
		batuta.HeaderDeadLetterError:    "boom",
		batuta.HeaderDeadLetterAttempts: "4",
		batuta.HeaderDeadLetterWorkflow: "orders",
		batuta.HeaderDeadLetterRun:      "r-1",
		batuta.HeaderDeadLetterSource:   "queue/in",
		batuta.HeaderDeadLetterType:     "order.created",
		batuta.HeaderDeadLetterSubject:  "o-9",
	}, m.Headers)

	require.NoError(t, dlq.Close())
	err = h.HandleDeadLetter(context.Background(), batuta.DeadLetter{Event: batuta.Event{ID: "e-2"}})
	require.ErrorIs(t, err, batuta.ErrClosed)
}

// BenchmarkQueueTrigger measures end-to-end throughput on the in-memory
// queue: a producer publishes b.N messages while the trigger consumes them
// and a function handles each; the clock stops when the last message is
// handled and acked.
func BenchmarkQueueTrigger(b *testing.B) {
	for _, bc := range []struct {
		name string
		ack  batuta.AckMode
		orch bool
	}{
		{"trigger-only", batuta.AckOnAccept, false},
		{"function/ack-on-accept", batuta.AckOnAccept, true},
		{"function/ack-on-finish", batuta.AckOnFinish, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			q := newQueue(b, batuta.MemoryQueueConfig{VisibilityTimeout: time.Minute})
			var handled atomic.Int64
			trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
				Queue: q, DeadLetter: &deadLetters{}, Receivers: 8, ReceiveMax: 32, Ack: bc.ack,
				BusyDelay: time.Millisecond, Logger: lambdaQuiet,
			})
			require.NoError(b, err)
			var stop func()
			if bc.orch {
				o := lambdaOrch(b, batuta.Config{NoLogHooks: true, Workers: 16})
				require.NoError(b, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "consume"},
					func(context.Context, json.RawMessage) (int, error) { handled.Add(1); return 0, nil }))
				require.NoError(b, o.Bind("consume", trig))
				runOrch(b, o)
				stop = func() {}
			} else {
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() {
					defer close(done)
					_ = trig.Run(ctx, func(context.Context, batuta.Event) error { handled.Add(1); return nil })
				}()
				stop = func() { cancel(); <-done }
			}
			body := []byte(`{"order":42}`)
			b.ResetTimer()
			start := time.Now()
			go func() {
				for i := range b.N {
					if err := q.Publish(context.Background(), batuta.Message{ID: "m" + strconv.Itoa(i), Body: body}); err != nil {
						b.Error(err)
						return
					}
				}
			}()
			for handled.Load() < int64(b.N) || q.Len() > 0 {
				time.Sleep(100 * time.Microsecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			stop()
		})
	}
}

// TestQueueTriggerAckModes: with AckOnAccept the message is gone while its
// run still runs; with AckOnFinish (and AckAuto on the in-memory store) it
// stays in flight until the run finished.
func TestQueueTriggerAckModes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode        batuta.AckMode
		ackedEarly  bool
		description string
	}{
		{batuta.AckOnAccept, true, "acked once accepted"},
		{batuta.AckOnFinish, false, "acked once finished"},
		{batuta.AckAuto, false, "in-memory store: acked once finished"},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			t.Parallel()
			o := lambdaOrch(t, batuta.Config{})
			q := newQueue(t, batuta.MemoryQueueConfig{VisibilityTimeout: time.Minute})
			started := make(chan struct{})
			release := make(chan struct{})
			require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "slow"},
				func(ctx context.Context, _ batuta.Event) (int, error) {
					close(started)
					select {
					case <-release:
					case <-ctx.Done():
					}
					return 1, nil
				}))
			trig := newTrigger(t, batuta.QueueTriggerConfig{Queue: q, DeadLetter: &deadLetters{}, Ack: tc.mode})
			require.NoError(t, o.Bind("slow", trig))
			runOrch(t, o)
			require.NoError(t, q.Publish(testCtx(t), batuta.Message{ID: "m"}))
			<-started
			if tc.ackedEarly {
				require.Eventually(t, func() bool { return q.Len() == 0 }, 10*time.Second, time.Millisecond, tc.description)
			} else {
				require.Equal(t, 1, q.InFlight(), tc.description)
			}
			close(release)
			require.Eventually(t, func() bool { return q.Len() == 0 }, 10*time.Second, time.Millisecond)
		})
	}
}

// TestQueueTriggerExtendsLongRuns: with ack-on-finish, a run that outlasts
// the queue's visibility timeout keeps its delivery (the trigger extends
// it), so the message is neither redelivered nor handled twice.
func TestQueueTriggerExtendsLongRuns(t *testing.T) {
	t.Parallel()
	// Margins are wide (a 1 s visibility timeout extended every 100 ms) so
	// that a loaded machine delaying the extender does not fail the test.
	q := newQueue(t, batuta.MemoryQueueConfig{VisibilityTimeout: time.Second})
	o := lambdaOrch(t, batuta.Config{})
	var calls atomic.Int32
	require.NoError(t, o.Register(&batuta.Workflow{Name: "slow", Tasks: []batuta.Task{{Name: "a", Run: func(ctx context.Context, _ *batuta.Input) (any, error) {
		calls.Add(1)
		select { // the run's length, 2.5 visibility timeouts
		case <-time.After(2500 * time.Millisecond):
		case <-ctx.Done():
		}
		return nil, nil
	}}}}))
	cq := &countingQueue{MemoryQueue: q}
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: cq, Ack: batuta.AckOnFinish, ExtendEvery: 100 * time.Millisecond,
		DeadLetter: batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error { return nil })})
	require.NoError(t, err)
	require.NoError(t, o.Bind("slow", trig))
	runOrch(t, o)
	ctx := testCtx(t)
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "long"}))
	require.Eventually(t, func() bool { return q.Len() == 0 }, 10*time.Second, 5*time.Millisecond)
	require.EqualValues(t, 1, calls.Load())
	require.EqualValues(t, 1, cq.delivered.Load(), "the message was redelivered while its run ran")
}

// countingQueue counts deliveries; Extend and the rest come from the
// embedded queue.
type countingQueue struct {
	*batuta.MemoryQueue
	delivered atomic.Int32
}

func (c *countingQueue) Receive(ctx context.Context, max int) ([]batuta.Delivery, error) {
	ds, err := c.MemoryQueue.Receive(ctx, max)
	c.delivered.Add(int32(len(ds)))
	return ds, err
}

func TestMemoryQueueExtend(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{VisibilityTimeout: time.Hour})
	ctx := testCtx(t)
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "m"}))
	ds, err := q.Receive(ctx, 1)
	require.NoError(t, err)
	require.NoError(t, q.Extend(ctx, ds[0]))
	require.NoError(t, q.Ack(ctx, ds[0]))
	require.ErrorIs(t, q.Extend(ctx, ds[0]), batuta.ErrLeaseLost)
}

// TestDeadLetterQueueTruncatesOversizedBody: a body over the dead-letter
// queue's limit reaches it cut to the limit, with the reason, the original
// size and hash in headers, instead of failing every hand-off; an error
// longer than MaxDeadLetterErrorBytes is cut.
func TestDeadLetterQueueTruncatesOversizedBody(t *testing.T) {
	t.Parallel()
	dlq := newQueue(t, batuta.MemoryQueueConfig{MaxBodyBytes: 1024})
	h := batuta.DeadLetterQueue(dlq)
	body := make([]byte, 4096)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	longErr := strings.Repeat("é", 2000) // 4,000 bytes
	require.NoError(t, h.HandleDeadLetter(context.Background(), batuta.DeadLetter{
		Event:  batuta.Event{ID: "big", Data: body, Metadata: map[string]string{"k": "v"}},
		Reason: batuta.DeadLetterPermanent, Error: longErr, Attempts: 1,
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ds, err := dlq.Receive(ctx, 1)
	require.NoError(t, err)
	m := ds[0].Message
	require.Equal(t, "big", m.ID)
	require.Equal(t, body[:1024], m.Body)
	require.Equal(t, "4096", m.Headers[batuta.HeaderDeadLetterBodySize])
	sum := sha256.Sum256(body)
	require.Equal(t, hex.EncodeToString(sum[:]), m.Headers[batuta.HeaderDeadLetterBodySHA256])
	require.Contains(t, m.Headers[batuta.HeaderDeadLetterTruncated], "limit of 1024 bytes")
	require.Contains(t, m.Headers[batuta.HeaderDeadLetterTruncated], "original body 4096 bytes, first 1024 kept")
	require.Equal(t, "v", m.Headers["k"])
	require.Equal(t, "permanent", m.Headers[batuta.HeaderDeadLetterReason])
	e := m.Headers[batuta.HeaderDeadLetterError]
	require.LessOrEqual(t, len(e), batuta.MaxDeadLetterErrorBytes)
	require.True(t, utf8.ValidString(e))
	require.True(t, strings.HasSuffix(e, "..."))

	// A body within the limit is untouched and unmarked.
	require.NoError(t, h.HandleDeadLetter(context.Background(), batuta.DeadLetter{Event: batuta.Event{ID: "small", Data: body[:10]}}))
	ds, err = dlq.Receive(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, body[:10], ds[0].Body)
	require.NotContains(t, ds[0].Headers, batuta.HeaderDeadLetterTruncated)
}

// TestQueueTriggerOversizedMessageReachesDeadLetterQueue: a 2 MB message
// (accepted by its source) that the dead-letter queue (1 MiB) refuses is
// dead-lettered truncated after exactly MaxDeliveries deliveries; before,
// its hand-off failed forever and it was fired again on every redelivery.
func TestQueueTriggerOversizedMessageReachesDeadLetterQueue(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{MaxBodyBytes: 4 << 20})
	dead := newQueue(t, batuta.MemoryQueueConfig{})
	var fired atomic.Int32
	trig := newTrigger(t, batuta.QueueTriggerConfig{Queue: q, DeadLetter: batuta.DeadLetterQueue(dead), MaxDeliveries: 3})
	stop := runTrigger(t, trig, func(context.Context, batuta.Event) error {
		fired.Add(1)
		return errors.New("handler down")
	})
	body := bytes.Repeat([]byte("x"), 2<<20)
	require.NoError(t, q.Publish(context.Background(), batuta.Message{ID: "huge", Body: body}))
	require.Eventually(t, func() bool { return dead.Len() == 1 && q.Len() == 0 }, 10*time.Second, time.Millisecond)
	require.NoError(t, stop())
	require.EqualValues(t, 3, fired.Load())
	require.Zero(t, trig.Parked())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ds, err := dead.Receive(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, "huge", ds[0].ID)
	require.Len(t, ds[0].Body, batuta.DefaultMemoryQueueBodyLimit)
	require.Equal(t, strconv.Itoa(2<<20), ds[0].Headers[batuta.HeaderDeadLetterBodySize])
	require.Equal(t, "max_deliveries", ds[0].Headers[batuta.HeaderDeadLetterReason])
	require.Equal(t, "handler down", ds[0].Headers[batuta.HeaderDeadLetterError])
}

// TestQueueTriggerDeadLetterHungDestinationParks: a destination that hangs
// uses up the hand-off's SettleTimeout in one try; the message is parked,
// not retried in place (which would hold the other deliveries received
// with it) nor redelivered in a loop.
func TestQueueTriggerDeadLetterHungDestinationParks(t *testing.T) {
	t.Parallel()
	q := newQueue(t, batuta.MemoryQueueConfig{})
	var calls atomic.Int32
	parked := make(chan error, 1)
	trig := newTrigger(t, batuta.QueueTriggerConfig{
		Queue: q, MaxDeliveries: 1, SettleTimeout: 200 * time.Millisecond,
		DeadLetter: batuta.DeadLetterFunc(func(ctx context.Context, _ batuta.DeadLetter) error {
			calls.Add(1)
			<-ctx.Done()
			return ctx.Err()
		}),
		OnParked: func(_ context.Context, _ batuta.DeadLetter, err error) { parked <- err },
	})
	stop := runTrigger(t, trig, func(context.Context, batuta.Event) error { return errors.New("boom") })
	require.NoError(t, q.Publish(context.Background(), batuta.Message{ID: "m"}))
	select {
	case err := <-parked:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(10 * time.Second):
		t.Fatal("never parked")
	}
	require.NoError(t, stop())
	require.EqualValues(t, 1, calls.Load())
	require.Equal(t, 1, q.Len())
}
