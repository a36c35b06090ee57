package batutanats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/pullstash"
	"github.com/batuta-dev/batuta/internal/redact"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrStreamNotFound reports that the stream or the durable consumer does not
// exist (Config.NoCreate, or it was deleted while in use), or that no
// stream captures the subject.
//
// It is the core's batuta.ErrQueueNotFound, so callers can match it
// whatever the broker.
var ErrStreamNotFound = batuta.ErrQueueNotFound

// releaseTimeout bounds the calls Close makes to hand back the deliveries it
// still holds.
const releaseTimeout = 10 * time.Second

// A Queue is a batuta.Queue on one JetStream stream and durable pull
// consumer. Each Queue is one puller on the consumer; open several, in one
// process or many, to share the work. All methods are safe for concurrent
// use.
type Queue struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	cons  jetstream.Consumer
	owned bool // Close closes nc (made by Open)
	cfg   Config
	log   *slog.Logger

	closing chan struct{} // closed by Close

	mu     sync.Mutex
	closed bool
	held   map[uint64]*receipt // stream sequence -> delivery held by this handle
	stash  *pullstash.Stash    // pulls in flight, and what abandoned ones pulled for the next Receive

	checkMu   sync.Mutex
	lastCheck time.Time // last time an idle Receive checked the consumer exists
}

// consumerCheckInterval is how often an idle Receive checks that the
// consumer still exists: a pull from a deleted consumer gets no answer at
// all, so without the check Receive would wait forever.
const consumerCheckInterval = 5 * time.Second

// checkConsumer returns ErrStreamNotFound if the consumer (or its stream)
// was deleted, at most once per consumerCheckInterval; other errors of the
// check are ignored (the next pull reports a lost connection).
func (q *Queue) checkConsumer(ctx context.Context) error {
	q.checkMu.Lock()
	if time.Since(q.lastCheck) < consumerCheckInterval {
		q.checkMu.Unlock()
		return nil
	}
	q.lastCheck = time.Now()
	q.checkMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, q.cfg.PollWait)
	defer cancel()
	_, err := q.js.Consumer(ctx, q.cfg.Stream, q.cfg.Consumer)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("batutanats: receive: %w", q.wrapErr(err))
	}
	return nil
}

// receipt is the batuta.Delivery.Receipt of this adapter.
type receipt struct {
	msg       jetstream.Msg
	seq       uint64 // stream sequence
	delivered uint64 // NumDelivered
}

// New returns a Queue over js, an existing JetStream context (its
// connection stays open on Close). Unless cfg.NoCreate, it creates the
// stream if missing and creates or updates the durable consumer; an
// existing stream is only checked to capture cfg.Subject. With NoCreate it
// fails with ErrStreamNotFound unless both exist. ctx bounds the calls made
// here.
func New(ctx context.Context, js jetstream.JetStream, cfg Config) (*Queue, error) {
	if js == nil {
		return nil, fmt.Errorf("batutanats: New: nil JetStream: %w", batuta.ErrInvalidConfig)
	}
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("batutanats: %w", err)
	}
	q := &Queue{
		nc:      js.Conn(),
		js:      js,
		cfg:     cfg,
		log:     cfg.Logger.With("stream", cfg.Stream, "consumer", cfg.Consumer),
		closing: make(chan struct{}),
		held:    make(map[uint64]*receipt),
		stash:   pullstash.New("batutanats"),
	}
	if err := q.ensureStream(ctx); err != nil {
		return nil, err
	}
	if err := q.ensureConsumer(ctx); err != nil {
		return nil, err
	}
	return q, nil
}

// Open connects to the NATS server(s) at url ("nats://[user:password@]host:port",
// comma-separated for several; "tls://" for TLS) with cfg.ConnectOptions,
// and returns a Queue over the connection, as New does. Close closes the
// connection. Errors never show the password.
func Open(ctx context.Context, url string, cfg Config) (*Queue, error) {
	opts := append([]nats.Option{
		nats.Name("batuta " + cfg.Stream),
		nats.MaxReconnects(-1),
	}, cfg.ConnectOptions...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, redact.Err(fmt.Errorf("batutanats: connect to %s: %w", redact.URL(url), err), url)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, redact.Err(fmt.Errorf("batutanats: JetStream on %s: %w", redact.URL(url), err), url)
	}
	q, err := New(ctx, js, cfg)
	if err != nil {
		nc.Close()
		return nil, redact.Err(err, url)
	}
	q.owned = true
	return q, nil
}

// Config returns the configuration in use, defaults applied.
func (q *Queue) Config() Config { return q.cfg }

// JetStream returns the JetStream context the queue uses.
func (q *Queue) JetStream() jetstream.JetStream { return q.js }

func (q *Queue) ensureStream(ctx context.Context) error {
	_, err := q.js.Stream(ctx, q.cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if q.cfg.NoCreate {
			return fmt.Errorf("batutanats: stream %q does not exist (Config.NoCreate is set): %w", q.cfg.Stream, ErrStreamNotFound)
		}
		_, err = q.js.CreateStream(ctx, jetstream.StreamConfig{
			Name:        q.cfg.Stream,
			Description: "batuta queue",
			Subjects:    []string{q.cfg.Subject, q.cfg.DeadLetterSubject},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Discard:     jetstream.DiscardNew,
			MaxMsgs:     orUnlimited(q.cfg.MaxMsgs),
			MaxBytes:    orUnlimited(q.cfg.MaxBytes),
			Replicas:    q.cfg.Replicas,
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			_, err = q.js.Stream(ctx, q.cfg.Stream) // created meanwhile by another handle
		}
	}
	if err != nil {
		return fmt.Errorf("batutanats: stream %q: %w", q.cfg.Stream, err)
	}
	if err := q.checkCaptured(ctx, q.cfg.Subject, "Subject"); err != nil {
		return err
	}
	if q.cfg.MaxDeliveries > 0 {
		return q.checkCaptured(ctx, q.cfg.DeadLetterSubject, "DeadLetterSubject")
	}
	return nil
}

// checkCaptured checks that the stream captures subject.
func (q *Queue) checkCaptured(ctx context.Context, subject, field string) error {
	name, err := q.js.StreamNameBySubject(ctx, subject)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("batutanats: no stream captures %s %q: %w", field, subject, ErrStreamNotFound)
		}
		return fmt.Errorf("batutanats: look up the stream of %s %q: %w", field, subject, err)
	}
	if field == "Subject" && name != q.cfg.Stream {
		return fmt.Errorf("batutanats: %s %q belongs to stream %q, not %q: %w", field, subject, name, q.cfg.Stream, batuta.ErrInvalidConfig)
	}
	return nil
}

func orUnlimited(n int64) int64 {
	if n == 0 {
		return -1
	}
	return n
}

func (q *Queue) ensureConsumer(ctx context.Context) error {
	var err error
	if q.cfg.NoCreate {
		q.cons, err = q.js.Consumer(ctx, q.cfg.Stream, q.cfg.Consumer)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("batutanats: consumer %q of stream %q does not exist (Config.NoCreate is set): %w", q.cfg.Consumer, q.cfg.Stream, ErrStreamNotFound)
		}
	} else {
		maxDeliver := -1
		if q.cfg.MaxDeliveries > 0 {
			maxDeliver = q.cfg.MaxDeliveries + 1
		}
		q.cons, err = q.js.CreateOrUpdateConsumer(ctx, q.cfg.Stream, jetstream.ConsumerConfig{
			Durable:       q.cfg.Consumer,
			Description:   "batuta queue consumer",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       q.cfg.AckWait,
			MaxDeliver:    maxDeliver,
			MaxAckPending: q.cfg.MaxAckPending,
			FilterSubject: q.cfg.Subject,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		})
	}
	if err != nil {
		return fmt.Errorf("batutanats: consumer %q of stream %q: %w", q.cfg.Consumer, q.cfg.Stream, err)
	}
	info := q.cons.CachedInfo()
	switch {
	case info == nil:
	case info.Config.AckPolicy != jetstream.AckExplicitPolicy:
		return fmt.Errorf("batutanats: consumer %q has ack policy %s, want explicit: %w", q.cfg.Consumer, info.Config.AckPolicy, batuta.ErrInvalidConfig)
	case info.Config.DeliverSubject != "":
		return fmt.Errorf("batutanats: consumer %q is a push consumer, want pull: %w", q.cfg.Consumer, batuta.ErrInvalidConfig)
	}
	return nil
}

// Publish publishes msg to Config.Subject and returns once the stream
// stored it. It assigns a UUIDv7 ID if msg.ID is empty and the current time
// if msg.Time is zero. The ID is the Nats-Msg-Id, so a second publish of
// the same ID within the stream's duplicate window is dropped by the
// server (and reported as success); a redrive of a dead letter (header
// batuta.HeaderRedriven) is deduplicated by its ID and that header
// instead, its ID kept in Batuta-Id. It fails with a
// *batuta.PayloadTooLargeError for a body over MaxBodyBytes, with
// batuta.ErrInvalidPayload for a header NATS cannot carry (or a reserved
// one: "Nats-*", Batuta-Id, Batuta-Time), with ErrStreamNotFound if no
// stream captures the subject, and with batuta.ErrClosed after Close.
func (q *Queue) Publish(ctx context.Context, msg batuta.Message) error {
	if q.isClosed() {
		return fmt.Errorf("batutanats: publish: %w", batuta.ErrClosed)
	}
	msg, err := pullstash.PreparePublish("batutanats", msg, q.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	msgID := msg.ID
	if key := msg.Headers[batuta.HeaderRedriven]; key != "" {
		// A redrive of a dead letter: the stream must not take it for the
		// original it may still remember within its duplicate window.
		msgID = "batuta-redrive-" + msg.ID + "-" + key
	}
	nm, err := encodeMessage(q.cfg.Subject, msg, msgID)
	if err != nil {
		return fmt.Errorf("batutanats: publish %q: %w", msg.ID, err)
	}
	if msgID != msg.ID {
		nm.Header.Set(HeaderID, msg.ID)
	}
	// WithExpectStream adds the Nats-Expected-Stream header on the wire.
	expect := len(jetstream.ExpectedStreamHeader) + 2 + len(q.cfg.Stream) + 2
	if room, ok := q.bodyRoom(nm.Header); ok && len(nm.Data) > room-expect {
		return fmt.Errorf("batutanats: publish %q: %w", msg.ID, q.tooLarge(len(nm.Data), max(room-expect, 0)))
	}
	if _, err := q.js.PublishMsg(ctx, nm, jetstream.WithExpectStream(q.cfg.Stream)); err != nil {
		if errors.Is(err, nats.ErrMaxPayload) {
			room, _ := q.bodyRoom(nm.Header)
			room = max(room-expect, 0)
			return fmt.Errorf("batutanats: publish %q: %w: %w", msg.ID, q.tooLarge(len(nm.Data), room), err)
		}
		return fmt.Errorf("batutanats: publish %q: %w", msg.ID, q.wrapErr(err))
	}
	return nil
}

// bodyRoom is how many body bytes fit in one message with headers h under
// the server's max_payload (which counts headers and body), when the
// connection knows it.
func (q *Queue) bodyRoom(h nats.Header) (int, bool) {
	if q.nc == nil {
		return 0, false
	}
	limit := q.nc.MaxPayload()
	if limit <= 0 {
		return 0, false
	}
	return max(int(limit)-headerBytes(h), 0), true
}

// tooLarge is the error for a body of size bytes where only room fit.
func (q *Queue) tooLarge(size, room int) error {
	return &batuta.PayloadTooLargeError{What: "message body (with its headers, under the server's max_payload)", Size: size, Limit: room}
}

// headerBytes is the size of h on the wire ("NATS/1.0\r\n", one
// "Key: value\r\n" per value, a final "\r\n").
func headerBytes(h nats.Header) int {
	if len(h) == 0 {
		return 0
	}
	n := len("NATS/1.0\r\n") + 2
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n
}

// Receive blocks until at least one message is available, ctx ends or the
// queue is closed, and returns up to n (>= 1) deliveries. It returns ctx's
// error when ctx ends (at once, even while a pull is outstanding: what that
// pull still brings is kept for the next Receive, or handed back by Close),
// batuta.ErrClosed after Close, and ErrStreamNotFound if the consumer or
// stream was deleted. Other errors (connection lost...) are returned as they
// come; call again to retry.
func (q *Queue) Receive(ctx context.Context, n int) ([]batuta.Delivery, error) {
	if n < 1 {
		return nil, fmt.Errorf("batutanats: receive: max must be at least 1, got %d", n)
	}
	for {
		if q.isClosed() {
			return nil, fmt.Errorf("batutanats: receive: %w", batuta.ErrClosed)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if ds := q.takeStash(n); len(ds) > 0 {
			return ds, nil
		}
		// What is ready now, in one round trip; else wait for one message.
		// Each pull runs in its own goroutine, so that Receive can return
		// when ctx ends without waiting for the server.
		for _, wait := range []bool{false, true} {
			k := n
			if wait {
				k = 1
			}
			ds, woken, err := q.stash.Read(ctx, q.closing, func() ([]batuta.Delivery, error) { return q.pull(k, wait) })
			if err != nil || len(ds) > 0 {
				return ds, err
			}
			if woken {
				break // another pull left deliveries in the stash: take them
			}
			if wait {
				if err := q.checkConsumer(ctx); err != nil {
					return nil, err
				}
			}
		}
	}
}

// takeStash returns up to n stashed deliveries; one that waited for more
// than half of AckWait gets an in-progress ack first.
func (q *Queue) takeStash(n int) []batuta.Delivery {
	var out []batuta.Delivery
	for _, s := range q.stash.Take(n) {
		if time.Since(s.At) > q.cfg.AckWait/2 {
			if r, ok := s.D.Receipt.(*receipt); ok {
				_ = r.msg.InProgress()
			}
		}
		out = append(out, s.D)
	}
	return out
}

// pull fetches up to n messages: those ready now, or (wait) the first to
// arrive within PollWait.
func (q *Queue) pull(n int, wait bool) ([]batuta.Delivery, error) {
	var (
		b   jetstream.MessageBatch
		err error
	)
	if wait {
		b, err = q.cons.Fetch(n, jetstream.FetchMaxWait(q.cfg.PollWait))
	} else {
		b, err = q.cons.FetchNoWait(n)
	}
	if err != nil {
		return nil, fmt.Errorf("batutanats: receive: %w", q.wrapErr(err))
	}
	var out []batuta.Delivery
	for m := range b.Messages() {
		if d, ok := q.deliver(m); ok {
			out = append(out, d)
		}
	}
	if err := b.Error(); err != nil && len(out) == 0 {
		return nil, fmt.Errorf("batutanats: receive: %w", q.wrapErr(err))
	}
	return out, nil
}

// deliver records a message now held and returns its Delivery. A message
// over Config.MaxDeliveries is dead-lettered instead (ok false).
func (q *Queue) deliver(m jetstream.Msg) (batuta.Delivery, bool) {
	meta, err := m.Metadata()
	if err != nil {
		q.log.Warn("batutanats: message without JetStream metadata ignored", "subject", m.Subject(), "err", err)
		return batuta.Delivery{}, false
	}
	r := &receipt{msg: m, seq: meta.Sequence.Stream, delivered: meta.NumDelivered}
	d := batuta.Delivery{
		Message: decodeMessage(m, meta),
		Attempt: int(meta.NumDelivered),
		Receipt: r,
	}
	q.mu.Lock()
	q.held[r.seq] = r
	q.mu.Unlock()
	if q.cfg.MaxDeliveries > 0 && d.Attempt > q.cfg.MaxDeliveries {
		ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
		defer cancel()
		reason := fmt.Sprintf("delivered %d times, over MaxDeliveries %d", d.Attempt, q.cfg.MaxDeliveries)
		if err := q.DeadLetter(ctx, d, reason); err != nil {
			q.log.Warn("batutanats: dead-letter failed; the message is redelivered after AckWait", "id", d.ID, "err", err)
		}
		return d, false
	}
	return d, true
}

// Ack settles d and waits for the server to confirm it (DoubleAck). Acking
// a delivery twice succeeds. It fails with batuta.ErrClosed after Close.
// When it fails otherwise (connection lost), the message may or may not be
// acked: if not, it is redelivered after AckWait.
func (q *Queue) Ack(ctx context.Context, d batuta.Delivery) error {
	r, err := q.settling(d, "ack")
	if err != nil {
		return err
	}
	err = r.msg.DoubleAck(ctx)
	if errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("batutanats: ack %q (attempt %d): %w", d.ID, d.Attempt, q.wrapErr(err))
	}
	q.forget(r)
	return nil
}

// Nack settles d for redelivery after delay (0: at once): a NAK with that
// delay, after which the server redelivers it with its delivery count, and
// so Attempt, incremented. With Config.MaxDeliveries set, a delivery on its
// last allowed attempt is dead-lettered instead. It fails with
// batuta.ErrLeaseLost for a delivery settled already, and with
// batuta.ErrClosed after Close.
func (q *Queue) Nack(ctx context.Context, d batuta.Delivery, delay time.Duration) error {
	r, err := q.settling(d, "nack")
	if err != nil {
		return err
	}
	if q.cfg.MaxDeliveries > 0 && d.Attempt >= q.cfg.MaxDeliveries {
		return q.DeadLetter(ctx, d, fmt.Sprintf("nacked on delivery %d of MaxDeliveries %d", d.Attempt, q.cfg.MaxDeliveries))
	}
	if delay > 0 {
		err = r.msg.NakWithDelay(delay)
	} else {
		err = r.msg.Nak()
	}
	if errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		return fmt.Errorf("batutanats: nack %q (attempt %d): settled already: %w", d.ID, d.Attempt, batuta.ErrLeaseLost)
	}
	if err != nil {
		return fmt.Errorf("batutanats: nack %q (attempt %d): %w", d.ID, d.Attempt, q.wrapErr(err))
	}
	q.forget(r)
	return nil
}

// Extend resets d's AckWait timer on the server (an in-progress ack), so a
// handler that runs longer than AckWait keeps its delivery; call it
// periodically (say every third of AckWait). It fails with
// batuta.ErrLeaseLost for a delivery settled already.
//
// Extend is this adapter's implementation of the optional "extender"
// interface the queue trigger may look for:
//
//	interface{ Extend(ctx context.Context, d batuta.Delivery) error }
func (q *Queue) Extend(ctx context.Context, d batuta.Delivery) error {
	r, err := q.settling(d, "extend")
	if err != nil {
		return err
	}
	err = r.msg.InProgress()
	if errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		return fmt.Errorf("batutanats: extend %q: settled already: %w", d.ID, batuta.ErrLeaseLost)
	}
	if err != nil {
		return fmt.Errorf("batutanats: extend %q: %w", d.ID, q.wrapErr(err))
	}
	return nil
}

// DeadLetter settles d by publishing its message to
// Config.DeadLetterSubject (headers Batuta-Dead-Reason and
// Batuta-Dead-Attempts added, the ID in Batuta-Id) and then acking it. The
// dead letter is published first, so a failure in between leaves the
// message in both places rather than in neither; its Nats-Msg-Id is derived
// from the original's stream sequence, so a repeat is deduplicated by the
// stream. Errors as for Ack.
func (q *Queue) DeadLetter(ctx context.Context, d batuta.Delivery, reason string) error {
	r, err := q.settling(d, "dead-letter")
	if err != nil {
		return err
	}
	reason = cutReason(reason)
	_ = r.msg.InProgress() // keep it while we move it
	nm := nats.NewMsg(q.cfg.DeadLetterSubject)
	nm.Data = d.Body
	for k, v := range d.Headers {
		if validHeader(k, v) == nil {
			nm.Header.Set(k, v)
		}
	}
	nm.Header.Set(HeaderID, d.ID)
	nm.Header.Set(HeaderTime, d.Time.UTC().Format(time.RFC3339Nano))
	nm.Header.Set(HeaderDeadReason, reason)
	nm.Header.Set(HeaderDeadAttempts, strconv.Itoa(d.Attempt))
	nm.Header.Set(nats.MsgIdHdr, "batuta-dead-"+q.cfg.Stream+"-"+strconv.FormatUint(r.seq, 10))
	q.fitDeadLetter(nm, r.seq)
	if _, err := q.js.PublishMsg(ctx, nm); err != nil {
		return fmt.Errorf("batutanats: dead-letter %q to %q: %w", d.ID, q.cfg.DeadLetterSubject, q.wrapErr(err))
	}
	q.log.Warn("batutanats: message dead-lettered", "id", d.ID, "attempt", d.Attempt,
		"reason", reason, "dead_letter_subject", q.cfg.DeadLetterSubject)
	err = r.msg.DoubleAck(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		return fmt.Errorf("batutanats: dead-letter %q: ack the original: %w", d.ID, q.wrapErr(err))
	}
	q.forget(r)
	return nil
}

// fitDeadLetter cuts the body of the dead letter nm (the message at stream
// sequence seq) when it and its headers would exceed the server's
// max_payload (the original had fewer headers, or the server's limit was
// lowered since): the first bytes that fit are kept, and the
// batuta-dead-letter-truncated, -body-size and -body-sha256 headers, plus
// Batuta-Dead-Source-Seq, say what was cut and where it came from.
func (q *Queue) fitDeadLetter(nm *nats.Msg, seq uint64) {
	room, ok := q.bodyRoom(nm.Header)
	if !ok || len(nm.Data) <= room {
		return
	}
	// Leave room for the headers the truncation adds.
	const extra = 2048
	h := make(map[string]string, len(nm.Header))
	for k := range nm.Header {
		h[k] = nm.Header.Get(k)
	}
	why := fmt.Sprintf("body and headers over the NATS server's max_payload of %d bytes", q.nc.MaxPayload())
	cut := batuta.TruncateDeadLetter(batuta.Message{Body: nm.Data, Headers: h}, max(room-extra, 0), why)
	nm.Data = cut.Body
	for _, k := range []string{batuta.HeaderDeadLetterTruncated, batuta.HeaderDeadLetterBodySize, batuta.HeaderDeadLetterBodySHA256} {
		nm.Header.Set(k, cut.Headers[k])
	}
	nm.Header.Set(HeaderDeadSourceSeq, q.cfg.Stream+"-"+strconv.FormatUint(seq, 10))
}

// cutReason bounds a dead-letter reason header (it counts against
// max_payload), marking the cut.
func cutReason(s string) string {
	if len(s) <= batuta.MaxDeadLetterErrorBytes {
		return s
	}
	return strings.ToValidUTF8(s[:batuta.MaxDeadLetterErrorBytes-3], "") + "..."
}

func (q *Queue) settling(d batuta.Delivery, op string) (*receipt, error) {
	r, ok := d.Receipt.(*receipt)
	if !ok || r == nil {
		return nil, fmt.Errorf("batutanats: %s %q: not a delivery of a batutanats queue (receipt %T)", op, d.ID, d.Receipt)
	}
	if q.isClosed() {
		return nil, fmt.Errorf("batutanats: %s %q: %w", op, d.ID, batuta.ErrClosed)
	}
	return r, nil
}

func (q *Queue) forget(r *receipt) {
	q.mu.Lock()
	if q.held[r.seq] == r {
		delete(q.held, r.seq)
	}
	q.mu.Unlock()
}

// Close closes the handle: pending Receive calls return batuta.ErrClosed
// at once, then Close waits for an outstanding pull to finish (at most
// Config.PollWait) and NAKs every delivery this handle still holds, so the
// server redelivers them at once to other pullers, counted as a delivery.
// Later Ack, Nack and Extend calls fail with batuta.ErrClosed. A
// connection passed to New (through its JetStream) stays open; one made by
// Open is closed. The stream and the durable consumer stay. A second Close
// returns nil.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	close(q.closing)
	q.mu.Unlock()
	q.stash.Close()

	q.mu.Lock()
	holding := q.held
	q.held = map[uint64]*receipt{}
	q.mu.Unlock()
	var errs []error
	for _, r := range holding {
		if err := r.msg.Nak(); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			errs = append(errs, err)
		}
	}
	if len(holding) > 0 && q.nc != nil && !q.nc.IsClosed() {
		if err := q.nc.FlushTimeout(releaseTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		q.log.Warn("batutanats: close could not hand back every delivery; they come back after AckWait",
			"err", errors.Join(errs...))
	}
	if q.owned {
		q.nc.Close()
	}
	return nil
}

func (q *Queue) isClosed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}

// wrapErr maps NATS errors onto the adapter's and the core's sentinels.
func (q *Queue) wrapErr(err error) error {
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrConsumerDeleted):
		return fmt.Errorf("consumer %q of stream %q is missing (deleted?): %w: %w", q.cfg.Consumer, q.cfg.Stream, ErrStreamNotFound, err)
	case errors.Is(err, jetstream.ErrStreamNotFound),
		(errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)) && q.streamGone():
		return fmt.Errorf("stream %q is missing (deleted?): %w: %w", q.cfg.Stream, ErrStreamNotFound, err)
	case errors.Is(err, nats.ErrConnectionClosed):
		return fmt.Errorf("%w: %w", batuta.ErrClosed, err)
	}
	return err
}

// streamGone reports whether the stream does not exist (checked after a
// "no responders" or "no response from stream" error, which a deleted
// stream shares with a lost connection).
func (q *Queue) streamGone() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := q.js.Stream(ctx, q.cfg.Stream)
	return errors.Is(err, jetstream.ErrStreamNotFound)
}

// String describes the queue for logs.
func (q *Queue) String() string {
	return "batutanats.Queue(" + strconv.Quote(q.cfg.Stream) + ", consumer " + strconv.Quote(q.cfg.Consumer) + ")"
}

var _ batuta.Extender = (*Queue)(nil)
