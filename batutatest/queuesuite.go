// Queue conformance suite.
//
// TestQueue checks that a batuta.Queue keeps the contract the queue trigger
// relies on. Every adapter (the in-memory queue, batutaredis, batutanats,
// batutaamqp, a PostgreSQL table) runs it unchanged from its own tests:
//
//	func TestQueueConformance(t *testing.T) {
//		batutatest.TestQueue(t, batutatest.QueueSuiteConfig{
//			New: func(t *testing.T, opts batutatest.QueueOptions) batutatest.QueueFixture {
//				name := "suite-" + rand.Text()         // fresh and unique per subtest
//				vis := max(opts.VisibilityTimeout, time.Second) // the broker's minimum
//				// create the stream/queue/consumer group named name, with vis
//				t.Cleanup(func() { /* delete it */ })
//				return batutatest.QueueFixture{
//					Open: func(t *testing.T) batuta.Queue {
//						q := myadapter.Open(name, ...) // a new connection / consumer
//						t.Cleanup(func() { q.Close() })
//						return q
//					},
//					VisibilityTimeout: vis,
//				}
//			},
//			Ordered: false,
//		})
//	}
//
// New is called once per subtest and must return an empty queue nobody else
// uses. Open is called once or more per subtest: each call is a separate
// consumer of the same queue, as another process would be (its own
// connection, channel or consumer name), so that "two consumers never hold
// the same message" and "a closed consumer's deliveries go to another" can
// be tested. The suite closes the handles it opens; Close must tolerate a
// second call (from t.Cleanup), returning nil or ErrClosed.
//
// What the suite requires of a Queue, beyond the interface comments:
//   - Publish then Receive returns the message with its ID, Body (byte for
//     byte, including empty and large bodies) and Headers; Publish assigns
//     an ID and a Time when they are empty. Time survives to the second.
//   - Delivery.Attempt is 1 on the first delivery and grows by one on each
//     redelivery, whether caused by Nack, by the visibility timeout or by the
//     consumer closing. The queue trigger moves a message to the dead-letter
//     destination when Attempt reaches its MaxDeliveries, so an adapter must
//     count deliveries (Redis XPENDING's delivery count, JetStream's
//     NumDelivered, RabbitMQ quorum queues' x-delivery-count).
//   - Ack removes the message for good; Nack(delay) redelivers it, not
//     before delay.
//   - An unsettled delivery is redelivered after the visibility timeout, and
//     after its consumer closes (at once or after the visibility timeout).
//   - Receive(ctx, max) never returns more than max deliveries, returns
//     ctx's error when ctx ends, and ErrClosed once the handle is closed,
//     including for a Receive blocked at the time of Close.
//   - Concurrent consumers never hold the same message at the same time,
//     and together they receive every message.
//   - If QueueSuiteConfig.Ordered, one consumer receives messages in
//     publish order.
//   - The queue trigger, run over the queue, sends a message that always
//     fails to the dead-letter destination after exactly MaxDeliveries
//     deliveries, and acks it.
//   - When the dead-letter destination keeps failing, the trigger parks
//     the message with a long Nack delay: the queue must honour that delay
//     (the message comes back, not before it, and is not lost), so that a
//     failing hand-off never loops.
//   - A body over the queue's size limit is refused with an error
//     matching batuta.ErrPayloadTooLarge, a *batuta.PayloadTooLargeError
//     whose Limit is the room left, so that batuta.DeadLetterQueue over
//     the queue cuts an oversized dead letter to fit instead of failing.
//
// Timing is tolerant: every wait for something that should happen is
// bounded by QueueSuiteConfig.Timeout plus a few visibility timeouts, and
// the only "must not happen yet" checks wait less than a delay the suite
// itself asked for. Subtests run in parallel, each on its own queue.
package batutatest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// QueueOptions is what the suite asks of a new queue.
type QueueOptions struct {
	// VisibilityTimeout is how long a delivery that is neither acked nor
	// nacked should stay invisible before it is delivered again. The suite
	// asks for 250 ms; a broker with a minimum uses its minimum and reports
	// it in QueueFixture.VisibilityTimeout.
	VisibilityTimeout time.Duration
}

// QueueFixture is one fresh queue made by QueueSuiteConfig.New.
type QueueFixture struct {
	// Open returns a new handle (consumer) on the queue. Required.
	Open func(t *testing.T) batuta.Queue
	// VisibilityTimeout is the effective visibility timeout. Zero means
	// the requested one.
	VisibilityTimeout time.Duration
}

// QueueSuiteConfig drives TestQueue.
type QueueSuiteConfig struct {
	// New creates a fresh, empty, uniquely named queue for one subtest,
	// configured with opts as near as the broker allows, and registers its
	// deletion with t.Cleanup. Required. It may call t.Skip (service
	// unreachable) or t.Fatal.
	New func(t *testing.T, opts QueueOptions) QueueFixture
	// Ordered: the adapter promises that a single consumer receives
	// messages in publish order (as long as none is redelivered). The
	// ordering test runs only then.
	Ordered bool
	// LargeBody is the size in bytes of the large-payload round trip.
	// Default 256 KiB; set it lower if the broker's message limit is lower.
	LargeBody int
	// Messages is how many messages the concurrent-consumers test
	// publishes. Default 200.
	Messages int
	// Timeout bounds each wait for something that should happen, on top of
	// three visibility timeouts. Default 10 s.
	Timeout time.Duration
	// Sequential runs the subtests one after another instead of in
	// parallel (for brokers that struggle with many queues at once).
	Sequential bool
	// OversizedBody is the body size of the dead letter that
	// OversizedDeadLetterFits hands to batuta.DeadLetterQueue over the
	// queue. Default 2 MiB + 1 (over the 1 MiB default limits of the
	// in-memory queue, batutaredis and NATS's max_payload).
	OversizedBody int
	// ParkDelay is the QueueTriggerConfig.ParkDelay of
	// DeadLetterHandOffParks: the test waits for it twice. Default 2 s.
	ParkDelay time.Duration
}

func (c QueueSuiteConfig) withDefaults() QueueSuiteConfig {
	if c.LargeBody == 0 {
		c.LargeBody = 256 << 10
	}
	if c.Messages == 0 {
		c.Messages = 200
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.OversizedBody == 0 {
		c.OversizedBody = 2<<20 + 1
	}
	if c.ParkDelay == 0 {
		c.ParkDelay = 2 * time.Second
	}
	return c
}

// requestedVisibility is the visibility timeout the suite asks for.
const requestedVisibility = 250 * time.Millisecond

// TestQueue runs the Queue conformance suite. See the package comment of
// this file for what it checks and how an adapter wires it.
func TestQueue(t *testing.T, cfg QueueSuiteConfig) {
	t.Helper()
	if cfg.New == nil {
		t.Fatal("batutatest: QueueSuiteConfig.New is required")
	}
	cfg = cfg.withDefaults()
	tests := []struct {
		name string
		fn   func(t *testing.T, s *queueSuite)
	}{
		{"RoundTrip", testQueueRoundTrip},
		{"AssignsIDAndTime", testQueueAssignsIDAndTime},
		{"EmptyBody", testQueueEmptyBody},
		{"LargeBody", testQueueLargeBody},
		{"BinaryBody", testQueueBinaryBody},
		{"AckRemoves", testQueueAckRemoves},
		{"NackRedelivers", testQueueNackRedelivers},
		{"NackDelay", testQueueNackDelay},
		{"AttemptCountsDeliveries", testQueueAttemptCounts},
		{"VisibilityTimeoutRedelivers", testQueueVisibilityTimeout},
		{"ConsumerCloseRedelivers", testQueueConsumerClose},
		{"ReceiveMax", testQueueReceiveMax},
		{"ReceiveCanceled", testQueueReceiveCanceled},
		{"CloseDuringReceive", testQueueCloseDuringReceive},
		{"ReceiveAfterClose", testQueueReceiveAfterClose},
		{"ConcurrentConsumers", testQueueConcurrentConsumers},
		{"QueuesAreIsolated", testQueueIsolated},
		{"Ordered", testQueueOrdered},
		{"MaxDeliveriesToDeadLetter", testQueueMaxDeliveries},
		{"DeadLetterHandOffParks", testQueueDeadLetterParks},
		{"OversizedDeadLetterFits", testQueueOversizedDeadLetter},
		{"EventShape", testQueueEventShape},
		{"ExtendKeepsDelivery", testQueueExtendKeepsDelivery},
		{"AckBatch", testQueueAckBatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !cfg.Sequential {
				t.Parallel()
			}
			tc.fn(t, newQueueSuite(t, cfg))
		})
	}
}

// queueSuite is one subtest's queue.
type queueSuite struct {
	cfg QueueSuiteConfig
	fx  QueueFixture
	vis time.Duration
}

func newQueueSuite(t *testing.T, cfg QueueSuiteConfig) *queueSuite {
	t.Helper()
	fx := cfg.New(t, QueueOptions{VisibilityTimeout: requestedVisibility})
	if fx.Open == nil {
		t.Fatal("batutatest: QueueFixture.Open is nil")
	}
	vis := fx.VisibilityTimeout
	if vis == 0 {
		vis = requestedVisibility
	}
	return &queueSuite{cfg: cfg, fx: fx, vis: vis}
}

// open returns a new handle, closed at the end of the test.
func (s *queueSuite) open(t *testing.T) batuta.Queue {
	t.Helper()
	q := s.fx.Open(t)
	if q == nil {
		t.Fatal("batutatest: QueueFixture.Open returned nil")
	}
	t.Cleanup(func() { closeQueue(t, q) })
	return q
}

// patience bounds a wait for something that should happen.
func (s *queueSuite) patience() time.Duration { return s.cfg.Timeout + 3*s.vis }

func (s *queueSuite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), s.patience())
	t.Cleanup(cancel)
	return ctx
}

func closeQueue(t *testing.T, q batuta.Queue) {
	t.Helper()
	if err := q.Close(); err != nil && !errors.Is(err, batuta.ErrClosed) {
		t.Errorf("Close: %v", err)
	}
}

func publish(t *testing.T, ctx context.Context, q batuta.Queue, msg batuta.Message) {
	t.Helper()
	if err := q.Publish(ctx, msg); err != nil {
		t.Fatalf("Publish(%q): %v", msg.ID, err)
	}
}

// receiveOne waits for one delivery, failing the test after the suite's
// patience.
func (s *queueSuite) receiveOne(t *testing.T, q batuta.Queue) batuta.Delivery {
	t.Helper()
	ds := s.receiveN(t, q, 1)
	return ds[0]
}

// receiveN waits until n deliveries arrived, receiving up to n at a time.
func (s *queueSuite) receiveN(t *testing.T, q batuta.Queue, n int) []batuta.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), s.patience())
	defer cancel()
	var out []batuta.Delivery
	for len(out) < n {
		ds, err := q.Receive(ctx, n-len(out))
		if err != nil {
			t.Fatalf("Receive: got %d of %d deliveries: %v", len(out), n, err)
		}
		if len(ds) > n-len(out) {
			t.Fatalf("Receive(max=%d) returned %d deliveries", n-len(out), len(ds))
		}
		out = append(out, ds...)
	}
	return out
}

func expectNothing(t *testing.T, q batuta.Queue, d time.Duration) {
	t.Helper()
	ExpectNothing(t, q, d)
}

// ExpectNothing fails the test unless a Receive on q for up to 10
// deliveries gets nothing within d (it returns the context's error).
func ExpectNothing(t *testing.T, q batuta.Queue, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	ds, err := q.Receive(ctx, 10)
	if err == nil {
		ids := make([]string, len(ds))
		for i, d := range ds {
			ids[i] = fmt.Sprintf("%s (attempt %d)", d.ID, d.Attempt)
		}
		t.Fatalf("Receive: got %v, want nothing", ids)
	}
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		t.Fatalf("Receive on an empty queue: got %v, want the context's error", err)
	}
}

func ack(t *testing.T, q batuta.Queue, d batuta.Delivery) {
	t.Helper()
	if err := q.Ack(t.Context(), d); err != nil {
		t.Fatalf("Ack(%q, attempt %d): %v", d.ID, d.Attempt, err)
	}
}

func nack(t *testing.T, q batuta.Queue, d batuta.Delivery, delay time.Duration) {
	t.Helper()
	if err := q.Nack(t.Context(), d, delay); err != nil {
		t.Fatalf("Nack(%q, attempt %d, %v): %v", d.ID, d.Attempt, delay, err)
	}
}

func checkDelivery(t *testing.T, d batuta.Delivery, id string, body []byte, attempt int) {
	t.Helper()
	if d.ID != id {
		t.Fatalf("delivery ID = %q, want %q", d.ID, id)
	}
	if !bytes.Equal(d.Body, body) {
		t.Fatalf("delivery %q: body of %d bytes differs from the %d bytes published", id, len(d.Body), len(body))
	}
	if d.Attempt != attempt {
		t.Fatalf("delivery %q: Attempt = %d, want %d", id, d.Attempt, attempt)
	}
}

// uniqueID returns a message ID unique to the test and n, made of letters,
// digits, '-' and '.'.
func uniqueID(t *testing.T, n int) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '.'
	}, t.Name())
	return fmt.Sprintf("%s-%d-%d", name, time.Now().UnixNano(), n)
}

func testQueueRoundTrip(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx := s.ctx(t)
	sent := batuta.Message{
		ID:      uniqueID(t, 1),
		Body:    []byte(`{"order":42,"note":"héllo"}`),
		Headers: map[string]string{"content-type": "application/json", "trace": "abc-123"},
		Time:    time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC),
	}
	publish(t, ctx, q, sent)
	d := s.receiveOne(t, q)
	checkDelivery(t, d, sent.ID, sent.Body, 1)
	for k, v := range sent.Headers {
		if d.Headers[k] != v {
			t.Fatalf("header %q = %q, want %q (headers %v)", k, d.Headers[k], v, d.Headers)
		}
	}
	if !d.Time.Truncate(time.Second).Equal(sent.Time) {
		t.Fatalf("Time = %v, want %v", d.Time, sent.Time)
	}
	ack(t, q, d)
}

func testQueueAssignsIDAndTime(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx := s.ctx(t)
	before := time.Now().Add(-time.Minute)
	publish(t, ctx, q, batuta.Message{Body: []byte(`"a"`)})
	publish(t, ctx, q, batuta.Message{Body: []byte(`"b"`)})
	ds := s.receiveN(t, q, 2)
	if ds[0].ID == "" || ds[1].ID == "" || ds[0].ID == ds[1].ID {
		t.Fatalf("assigned IDs %q and %q: want two distinct non-empty IDs", ds[0].ID, ds[1].ID)
	}
	for _, d := range ds {
		if d.Time.Before(before) || d.Time.After(time.Now().Add(time.Minute)) {
			t.Fatalf("assigned Time %v is not about now", d.Time)
		}
		ack(t, q, d)
	}
}

func testQueueEmptyBody(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx := s.ctx(t)
	id := uniqueID(t, 1)
	publish(t, ctx, q, batuta.Message{ID: id})
	d := s.receiveOne(t, q)
	if d.ID != id || len(d.Body) != 0 {
		t.Fatalf("got %q with %d bytes, want %q with an empty body", d.ID, len(d.Body), id)
	}
	ack(t, q, d)
}

func testQueueLargeBody(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx := s.ctx(t)
	body := make([]byte, s.cfg.LargeBody)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	id := uniqueID(t, 1)
	publish(t, ctx, q, batuta.Message{ID: id, Body: body})
	d := s.receiveOne(t, q)
	checkDelivery(t, d, id, body, 1)
	ack(t, q, d)
}

func testQueueBinaryBody(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx := s.ctx(t)
	body := make([]byte, 512)
	for i := range body {
		body[i] = byte(i) // every byte value, NUL and invalid UTF-8 included
	}
	id := uniqueID(t, 1)
	publish(t, ctx, q, batuta.Message{ID: id, Body: body})
	d := s.receiveOne(t, q)
	checkDelivery(t, d, id, body, 1)
	ack(t, q, d)
}

func testQueueAckRemoves(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx := s.ctx(t)
	id := uniqueID(t, 1)
	publish(t, ctx, q, batuta.Message{ID: id, Body: []byte(`1`)})
	d := s.receiveOne(t, q)
	ack(t, q, d)
	// Past the visibility timeout, an acked message must not come back.
	expectNothing(t, q, 2*s.vis+500*time.Millisecond)
	// A second consumer does not see it either.
	expectNothing(t, s.open(t), s.vis)
}

func testQueueNackRedelivers(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx := s.ctx(t)
	id := uniqueID(t, 1)
	body := []byte(`{"n":1}`)
	publish(t, ctx, q, batuta.Message{ID: id, Body: body, Headers: map[string]string{"k": "v"}})
	d := s.receiveOne(t, q)
	checkDelivery(t, d, id, body, 1)
	nack(t, q, d, 0)
	d = s.receiveOne(t, q)
	checkDelivery(t, d, id, body, 2)
	if d.Headers["k"] != "v" {
		t.Fatalf("redelivered headers = %v, want k=v", d.Headers)
	}
	ack(t, q, d)
}

func testQueueNackDelay(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx := s.ctx(t)
	id := uniqueID(t, 1)
	publish(t, ctx, q, batuta.Message{ID: id})
	d := s.receiveOne(t, q)
	delay := max(2*s.vis, time.Second)
	start := time.Now()
	nack(t, q, d, delay)
	// Not before the delay (checked over half of it, so a slow broker
	// cannot fail this).
	expectNothing(t, q, delay/2)
	d = s.receiveOne(t, q)
	if waited := time.Since(start); waited < delay/2 {
		t.Fatalf("redelivered after %v, want no sooner than the %v delay", waited, delay)
	}
	checkDelivery(t, d, id, nil, 2)
	ack(t, q, d)
}

func testQueueAttemptCounts(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx := s.ctx(t)
	id := uniqueID(t, 1)
	publish(t, ctx, q, batuta.Message{ID: id, Body: []byte(`"x"`)})
	for want := 1; want <= 4; want++ {
		d := s.receiveOne(t, q)
		checkDelivery(t, d, id, []byte(`"x"`), want)
		if want < 4 {
			nack(t, q, d, 0)
		} else {
			ack(t, q, d)
		}
	}
}

func testQueueVisibilityTimeout(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx := s.ctx(t)
	id := uniqueID(t, 1)
	publish(t, ctx, q, batuta.Message{ID: id, Body: []byte(`"v"`)})
	first := s.receiveOne(t, q)
	checkDelivery(t, first, id, []byte(`"v"`), 1)
	// Neither acked nor nacked: it comes back after the visibility timeout.
	d := s.receiveOne(t, q)
	checkDelivery(t, d, id, []byte(`"v"`), 2)
	ack(t, q, d)
	// The stale first delivery may not be settled any more; whether its
	// Ack errs is up to the adapter, but it must not bring the message back.
	_ = q.Ack(t.Context(), first)
	expectNothing(t, q, 2*s.vis+500*time.Millisecond)
}

func testQueueConsumerClose(t *testing.T, s *queueSuite) {
	a := s.open(t)
	b := s.open(t)
	ctx := s.ctx(t)
	id := uniqueID(t, 1)
	publish(t, ctx, a, batuta.Message{ID: id, Body: []byte(`"c"`)})
	d := s.receiveOne(t, a)
	checkDelivery(t, d, id, []byte(`"c"`), 1)
	closeQueue(t, a)
	// The other consumer gets it, counted as a redelivery.
	d = s.receiveOne(t, b)
	checkDelivery(t, d, id, []byte(`"c"`), 2)
	ack(t, b, d)
}

func testQueueReceiveMax(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx := s.ctx(t)
	const n = 5
	for i := range n {
		publish(t, ctx, q, batuta.Message{ID: uniqueID(t, i), Body: []byte(strconv.Itoa(i))})
	}
	got := 0
	for got < n {
		ds, err := q.Receive(ctx, 2)
		if err != nil {
			t.Fatalf("Receive after %d of %d: %v", got, n, err)
		}
		if len(ds) == 0 || len(ds) > 2 {
			t.Fatalf("Receive(max=2) returned %d deliveries", len(ds))
		}
		for _, d := range ds {
			ack(t, q, d)
		}
		got += len(ds)
	}
	if got != n {
		t.Fatalf("received %d messages, want %d", got, n)
	}
}

func testQueueReceiveCanceled(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := q.Receive(ctx, 1)
		errc <- err
	}()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Receive after cancel: got %v, want context.Canceled", err)
		}
	case <-time.After(s.patience()):
		t.Fatalf("Receive did not return within %v of its ctx being canceled", s.patience())
	}
	// The handle still works.
	id := uniqueID(t, 1)
	publish(t, s.ctx(t), q, batuta.Message{ID: id})
	d := s.receiveOne(t, q)
	checkDelivery(t, d, id, nil, 1)
	ack(t, q, d)
}

func testQueueCloseDuringReceive(t *testing.T, s *queueSuite) {
	q := s.open(t)
	errc := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		close(started)
		_, err := q.Receive(s.ctx(t), 1)
		errc <- err
	}()
	<-started
	closeQueue(t, q)
	select {
	case err := <-errc:
		if !errors.Is(err, batuta.ErrClosed) {
			t.Fatalf("Receive blocked during Close: got %v, want ErrClosed", err)
		}
	case <-time.After(s.patience()):
		t.Fatalf("Receive did not return within %v of Close", s.patience())
	}
}

func testQueueReceiveAfterClose(t *testing.T, s *queueSuite) {
	q := s.open(t)
	closeQueue(t, q)
	_, err := q.Receive(s.ctx(t), 1)
	if !errors.Is(err, batuta.ErrClosed) {
		t.Fatalf("Receive after Close: got %v, want ErrClosed", err)
	}
	closeQueue(t, q) // a second Close is harmless
}

func testQueueConcurrentConsumers(t *testing.T, s *queueSuite) {
	ctx := s.ctx(t)
	n := s.cfg.Messages
	p := s.open(t)
	for i := range n {
		publish(t, ctx, p, batuta.Message{ID: uniqueID(t, i), Body: []byte(strconv.Itoa(i))})
	}
	var (
		mu       sync.Mutex
		holding  = map[string]bool{}
		received = map[string]int{}
		failure  error
		done     = make(chan struct{})
		closed   sync.Once
	)
	fail := func(err error) {
		mu.Lock()
		if failure == nil {
			failure = err
		}
		mu.Unlock()
		closed.Do(func() { close(done) })
	}
	consumers := []batuta.Queue{s.open(t), s.open(t), s.open(t)}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for c, q := range consumers {
		for g := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					ds, err := q.Receive(rctx, 4)
					if err != nil {
						if rctx.Err() == nil {
							fail(fmt.Errorf("consumer %d/%d: Receive: %w", c, g, err))
						}
						return
					}
					mu.Lock()
					for _, d := range ds {
						if holding[d.ID] {
							mu.Unlock()
							fail(fmt.Errorf("message %q held by two consumers at once", d.ID))
							return
						}
						holding[d.ID] = true
						received[d.ID]++
					}
					mu.Unlock()
					for _, d := range ds {
						mu.Lock()
						delete(holding, d.ID)
						mu.Unlock()
						if err := q.Ack(rctx, d); err != nil {
							if rctx.Err() == nil {
								fail(fmt.Errorf("consumer %d/%d: Ack(%q): %w", c, g, d.ID, err))
							}
							return
						}
					}
					mu.Lock()
					all := len(received) == n
					mu.Unlock()
					if all {
						closed.Do(func() { close(done) })
					}
				}
			}()
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		fail(fmt.Errorf("timed out after %v", s.patience()))
	}
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if failure != nil {
		t.Fatal(failure)
	}
	if len(received) != n {
		t.Fatalf("received %d distinct messages, want %d", len(received), n)
	}
	dups := 0
	for _, c := range received {
		dups += c - 1
	}
	if dups > 0 {
		t.Logf("%d messages were delivered more than once (allowed: at least once)", dups)
	}
}

func testQueueIsolated(t *testing.T, s *queueSuite) {
	other := newQueueSuite(t, s.cfg)
	q1 := s.open(t)
	q2 := other.open(t)
	ctx := s.ctx(t)
	id := uniqueID(t, 1)
	publish(t, ctx, q1, batuta.Message{ID: id})
	expectNothing(t, q2, s.vis)
	d := s.receiveOne(t, q1)
	checkDelivery(t, d, id, nil, 1)
	ack(t, q1, d)
}

func testQueueOrdered(t *testing.T, s *queueSuite) {
	if !s.cfg.Ordered {
		t.Skip("the adapter does not promise ordering (QueueSuiteConfig.Ordered is false)")
	}
	q := s.open(t)
	ctx := s.ctx(t)
	const n = 20
	ids := make([]string, n)
	for i := range n {
		ids[i] = uniqueID(t, i)
		publish(t, ctx, q, batuta.Message{ID: ids[i], Body: []byte(strconv.Itoa(i))})
	}
	for i := 0; i < n; {
		ds, err := q.Receive(ctx, 3)
		if err != nil {
			t.Fatalf("Receive after %d: %v", i, err)
		}
		for _, d := range ds {
			if d.ID != ids[i] {
				t.Fatalf("message %d: got %q, want %q", i, d.ID, ids[i])
			}
			ack(t, q, d)
			i++
		}
	}
}

// testQueueMaxDeliveries runs the queue trigger over the queue with a fire
// that always fails: the message reaches the dead-letter destination after
// exactly MaxDeliveries deliveries, once, and is acked.
func testQueueMaxDeliveries(t *testing.T, s *queueSuite) {
	const maxDeliveries = 3
	q := s.open(t)
	ctx := s.ctx(t)
	id := uniqueID(t, 1)
	publish(t, ctx, q, batuta.Message{ID: id, Body: []byte(`"poison"`)})

	var fires atomic.Int32
	dead := make(chan batuta.DeadLetter, 4)
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue:         q,
		MaxDeliveries: maxDeliveries,
		RetryDelay:    10 * time.Millisecond,
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		DeadLetter: batuta.DeadLetterFunc(func(_ context.Context, dl batuta.DeadLetter) error {
			dead <- dl
			return nil
		}),
	})
	if err != nil {
		t.Fatalf("NewQueueTrigger: %v", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- trig.Run(rctx, func(context.Context, batuta.Event) error {
			fires.Add(1)
			return errors.New("poison")
		})
	}()
	var dl batuta.DeadLetter
	select {
	case dl = <-dead:
	case <-ctx.Done():
		cancel()
		<-runErr
		t.Fatalf("no dead letter within %v (fired %d times)", s.patience(), fires.Load())
	}
	cancel()
	if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("trigger Run: %v", err)
	}
	if dl.Event.ID != id || dl.Attempts != maxDeliveries {
		t.Fatalf("dead letter for %q after %d deliveries, want %q after %d", dl.Event.ID, dl.Attempts, id, maxDeliveries)
	}
	if n := fires.Load(); n != maxDeliveries {
		t.Fatalf("fired %d times, want %d", n, maxDeliveries)
	}
	select {
	case extra := <-dead:
		t.Fatalf("second dead letter for %q", extra.Event.ID)
	default:
	}
	// It was acked: nothing comes back.
	expectNothing(t, q, 2*s.vis+500*time.Millisecond)
}

// testQueueDeadLetterParks: a dead-letter destination that keeps failing.
// The trigger tries the hand-off DeadLetterAttempts times, then parks the
// message (Nack with ParkDelay); the queue must bring it back, not before
// ParkDelay, without another fire; once the destination works it is
// dead-lettered and acked. The deliveries are bounded: MaxDeliveries
// fires, one more delivery per ParkDelay.
func testQueueDeadLetterParks(t *testing.T, s *queueSuite) {
	const maxDeliveries, tries = 2, 3
	q := s.open(t)
	ctx := s.ctx(t)
	id := uniqueID(t, 1)
	publish(t, ctx, q, batuta.Message{ID: id, Body: []byte(`"poison"`)})

	var fires, handoffs atomic.Int32
	var working atomic.Bool
	parked := make(chan time.Time, 4)
	dead := make(chan batuta.DeadLetter, 4)
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue:              q,
		MaxDeliveries:      maxDeliveries,
		DeadLetterAttempts: tries,
		ParkDelay:          s.cfg.ParkDelay,
		RetryDelay:         10 * time.Millisecond,
		Logger:             slog.New(slog.NewTextHandler(io.Discard, nil)),
		DeadLetter: batuta.DeadLetterFunc(func(_ context.Context, dl batuta.DeadLetter) error {
			handoffs.Add(1)
			if !working.Load() {
				return errors.New("dead-letter store down")
			}
			dead <- dl
			return nil
		}),
		OnParked: func(context.Context, batuta.DeadLetter, error) { parked <- time.Now() },
	})
	if err != nil {
		t.Fatalf("NewQueueTrigger: %v", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- trig.Run(rctx, func(context.Context, batuta.Event) error {
			fires.Add(1)
			return errors.New("poison")
		})
	}()
	stop := func() {
		cancel()
		if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("trigger Run: %v", err)
		}
	}
	wait := func(what string) time.Time {
		t.Helper()
		select {
		case at := <-parked:
			return at
		case <-ctx.Done():
			stop()
			t.Fatalf("%s: not parked within %v (fired %d times, %d hand-offs)", what, s.patience(), fires.Load(), handoffs.Load())
		}
		return time.Time{}
	}
	first := wait("first round")
	if f, h := fires.Load(), handoffs.Load(); f != maxDeliveries || h != tries {
		stop()
		t.Fatalf("first park after %d fires and %d hand-offs, want %d and %d", f, h, maxDeliveries, tries)
	}
	second := wait("second round (the parked message must come back after ParkDelay)")
	if gap := second.Sub(first); gap < s.cfg.ParkDelay {
		stop()
		t.Fatalf("the parked message came back after %v, before ParkDelay %v", gap, s.cfg.ParkDelay)
	}
	// The second round is a single try: the destination is known to fail.
	if f, h := fires.Load(), handoffs.Load(); f != maxDeliveries || h != tries+1 {
		stop()
		t.Fatalf("second park after %d fires and %d hand-offs, want %d (no new fire) and %d", f, h, maxDeliveries, tries+1)
	}
	working.Store(true)
	var dl batuta.DeadLetter
	select {
	case dl = <-dead:
	case <-ctx.Done():
		stop()
		t.Fatalf("the parked message was not dead-lettered once the destination worked")
	}
	stop()
	if dl.Event.ID != id || dl.Reason != batuta.DeadLetterMaxDeliveries || dl.Error != "poison" {
		t.Fatalf("dead letter %q (%s: %q), want %q (max_deliveries: \"poison\")", dl.Event.ID, dl.Reason, dl.Error, id)
	}
	if f := fires.Load(); f != maxDeliveries {
		t.Fatalf("fired %d times, want %d", f, maxDeliveries)
	}
	if n := trig.Parked(); n != 2 {
		t.Fatalf("Parked() = %d, want 2", n)
	}
	// It was acked: nothing comes back.
	expectNothing(t, q, 2*s.vis+500*time.Millisecond)
}

// testQueueOversizedDeadLetter: batuta.DeadLetterQueue over the queue takes
// a dead letter whose body is over the queue's limit: the queue keeps it
// whole, or refuses it as a *batuta.PayloadTooLargeError with the room
// left and takes it cut to that room, with the original size and hash.
func testQueueOversizedDeadLetter(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ctx := s.ctx(t)
	body := make([]byte, s.cfg.OversizedBody)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	id := uniqueID(t, 1)
	err := q.Publish(ctx, batuta.Message{ID: id + "-direct", Body: body})
	refused := err != nil
	var tooLarge *batuta.PayloadTooLargeError
	switch {
	case err == nil:
		ack(t, q, s.receiveOne(t, q))
	case !errors.As(err, &tooLarge) || !errors.Is(err, batuta.ErrPayloadTooLarge):
		t.Fatalf("Publish of a %d-byte body: %v; a size refusal must be a *batuta.PayloadTooLargeError", len(body), err)
	case tooLarge.Limit <= 0 || tooLarge.Limit >= len(body):
		t.Fatalf("Publish of a %d-byte body: PayloadTooLargeError.Limit = %d, want the room left (0 < Limit < %d)", len(body), tooLarge.Limit, len(body))
	}
	h := batuta.DeadLetterQueue(q)
	err = h.HandleDeadLetter(ctx, batuta.DeadLetter{
		Event:    batuta.Event{ID: id, Data: body, Metadata: map[string]string{"k": "v"}},
		Reason:   batuta.DeadLetterMaxDeliveries,
		Error:    strings.Repeat("long error ", 1000),
		Attempts: 5,
	})
	if err != nil {
		t.Fatalf("DeadLetterQueue: a %d-byte dead letter was refused: %v", len(body), err)
	}
	d := s.receiveOne(t, q)
	defer ack(t, q, d)
	if d.ID != id || d.Headers["k"] != "v" || d.Headers[batuta.HeaderDeadLetterReason] != "max_deliveries" {
		t.Fatalf("dead letter %q with headers %v", d.ID, d.Headers)
	}
	if n := len(d.Headers[batuta.HeaderDeadLetterError]); n > batuta.MaxDeadLetterErrorBytes {
		t.Fatalf("error header of %d bytes, over MaxDeadLetterErrorBytes", n)
	}
	if len(d.Body) == len(body) {
		if !bytes.Equal(d.Body, body) {
			t.Fatalf("dead letter body differs")
		}
		if refused {
			t.Fatalf("the queue refused a %d-byte body but took it whole as a dead letter", len(body))
		}
		return
	}
	if !bytes.Equal(d.Body, body[:len(d.Body)]) {
		t.Fatalf("cut dead letter body (%d bytes) is not a prefix of the original", len(d.Body))
	}
	if got := d.Headers[batuta.HeaderDeadLetterBodySize]; got != strconv.Itoa(len(body)) {
		t.Fatalf("%s = %q, want %d", batuta.HeaderDeadLetterBodySize, got, len(body))
	}
	if d.Headers[batuta.HeaderDeadLetterTruncated] == "" || len(d.Headers[batuta.HeaderDeadLetterBodySHA256]) != 64 {
		t.Fatalf("cut dead letter without its truncation headers: %v", d.Headers)
	}
}

// testQueueEventShape checks the queue trigger's documented default event
// (docs/events.md, batuta.QueueMessageFrom) against what a task really
// receives for a message that went through the queue: ID the message ID,
// Source "queue", Type the "type" header, Time the publish time, Data the
// body, Metadata the headers; and that the readers of other sources refuse
// it.
func testQueueEventShape(t *testing.T, s *queueSuite) {
	ctx := s.ctx(t)
	q := s.open(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	o, err := batuta.New(batuta.Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan batuta.Event, 1)
	if err := o.Register(&batuta.Workflow{Name: "orders", Tasks: []batuta.Task{{
		Name: "see",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			seen <- in.Event()
			return nil, nil
		},
	}}}); err != nil {
		t.Fatal(err)
	}
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q,
		DeadLetter: batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error { return nil }), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Bind("orders", trig); err != nil {
		t.Fatal(err)
	}
	octx, ocancel := context.WithCancel(ctx)
	odone := make(chan error, 1)
	go func() { odone <- o.Run(octx) }()
	defer func() {
		ocancel()
		if err := <-odone; err != nil {
			t.Errorf("orchestrator Run: %v", err)
		}
	}()

	published := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	headers := map[string]string{"type": "order.created", "tenant": "acme"}
	publish(t, ctx, q, batuta.Message{ID: "order-7", Body: []byte(`{"id":7}`), Headers: headers, Time: published})
	var ev batuta.Event
	select {
	case ev = <-seen:
	case <-ctx.Done():
		t.Fatal("no event reached the task")
	}
	if ev.ID != "order-7" || ev.Source != batuta.SourceQueue || ev.Type != "order.created" || ev.Subject != "" ||
		!ev.Time.Equal(published) || string(ev.Data) != `{"id":7}` || fmt.Sprint(ev.Metadata) != fmt.Sprint(headers) {
		t.Fatalf("event %+v, want ID order-7, Source %q, Type order.created, no Subject, Time %v, Data {\"id\":7}, Metadata %v",
			ev, batuta.SourceQueue, published, headers)
	}
	msg, err := batuta.QueueMessageFrom(ev)
	if err != nil {
		t.Fatalf("QueueMessageFrom: %v", err)
	}
	want := batuta.QueueMessage{ID: "order-7", Source: batuta.SourceQueue, Type: "order.created", Time: ev.Time, Body: ev.Data, Headers: headers}
	if msg.ID != want.ID || msg.Source != want.Source || msg.Type != want.Type || !msg.Time.Equal(want.Time) ||
		!bytes.Equal(msg.Body, want.Body) || fmt.Sprint(msg.Headers) != fmt.Sprint(want.Headers) {
		t.Fatalf("QueueMessageFrom = %+v, want %+v", msg, want)
	}
	for name, read := range map[string]func(batuta.Event) error{
		"CronTickFrom":    func(ev batuta.Event) error { _, err := batuta.CronTickFrom(ev); return err },
		"HTTPRequestFrom": func(ev batuta.Event) error { _, err := batuta.HTTPRequestFrom(ev); return err },
		"ChangeFrom":      func(ev batuta.Event) error { _, err := batuta.ChangeFrom[map[string]any](ev); return err },
		"QueueBatchFrom":  func(ev batuta.Event) error { _, err := batuta.QueueBatchFrom(ev); return err },
	} {
		if err := read(ev); !errors.Is(err, batuta.ErrWrongSource) {
			t.Errorf("%s on a queue message: %v, want batuta.ErrWrongSource", name, err)
		}
	}
}

// testQueueExtendKeepsDelivery (a batuta.Extender only): while one
// consumer extends a delivery every third of the visibility timeout,
// another gets nothing over three timeouts; once acked, the delivery can be
// extended any more (batuta.ErrLeaseLost).
func testQueueExtendKeepsDelivery(t *testing.T, s *queueSuite) {
	ctx := s.ctx(t)
	q, b := s.open(t), s.open(t)
	a, ok := q.(batuta.Extender)
	if !ok {
		t.Skip("the Queue is no batuta.Extender")
	}
	id := uniqueID(t, 1)
	publish(t, ctx, q, batuta.Message{ID: id, Body: []byte(`"long"`)})
	d := s.receiveOne(t, q)
	stop := make(chan struct{})
	extended := make(chan error, 1)
	go func() {
		tick := time.NewTicker(s.vis / 3)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				extended <- nil
				return
			case <-tick.C:
				if err := a.Extend(ctx, d); err != nil {
					extended <- err
					return
				}
			}
		}
	}()
	expectNothing(t, b, 3*s.vis)
	close(stop)
	if err := <-extended; err != nil {
		t.Fatalf("Extend: %v", err)
	}
	ack(t, q, d)
	if err := a.Extend(ctx, d); !errors.Is(err, batuta.ErrLeaseLost) {
		t.Errorf("Extend after Ack: %v, want batuta.ErrLeaseLost", err)
	}
}

// ReceiveOne receives one delivery from q within timeout, or fails the
// test.
func ReceiveOne(t *testing.T, q batuta.Queue, timeout time.Duration) batuta.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	ds, err := q.Receive(ctx, 1)
	if err != nil || len(ds) != 1 {
		t.Fatalf("Receive(1): %d deliveries, %v; want one", len(ds), err)
	}
	return ds[0]
}
