package batutaamqp

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// A session is one generation of the adapter's link to the broker: a
// connection and two channels on it, one for publishing (in confirm mode)
// and one for consuming. Delivery tags belong to the consuming channel, so
// a receipt is bound to its session: once the session is dead, its
// receipts can no longer be settled (the broker redelivers their messages)
// and nothing is ever sent for them on a later session's channels.
type session struct {
	q       *Queue
	gen     uint64
	conn    *amqp.Connection
	ownConn bool // close conn at teardown

	pub  *amqp.Channel
	cons *amqp.Channel

	connClosed chan *amqp.Error
	pubClosed  chan *amqp.Error
	consClosed chan *amqp.Error
	returns    chan amqp.Return
	pubSlots   chan struct{} // bounds publishes awaiting their confirmation

	failed   chan struct{} // closed by fail: an operation saw the session break
	failOnce sync.Once
	failErr  error
	dead     chan struct{} // closed by kill: nothing may be settled any more
	killOnce sync.Once

	growMu   sync.Mutex         // serializes adding consumers
	merged   chan amqp.Delivery // what every consumer's forwarder hands over
	forwards sync.WaitGroup

	mu         sync.Mutex
	consumers  []*consumer                // started by Receive, in order
	prefetch   int                        // sum of the consumers' prefetch counts
	canceled   bool                       // consumers canceled by Shutdown
	waitQueues map[time.Duration]struct{} // wait queues declared on this session
	returned   map[string]int             // message IDs the broker returned unroutable
	held       map[*receipt]struct{}      // handed out by Receive, unsettled
	idle       chan struct{}              // closed when held empties
}

// A consumer is one basic.consume on the session's consuming channel.
type consumer struct {
	tag        string
	prefetch   int
	deliveries <-chan amqp.Delivery
}

// Receipt states.
const (
	stateHeld    int32 = iota // handed out, unsettled
	stateSettled              // acked or nacked by the caller
	stateExpired              // given back by the visibility timer
	stateLost                 // its session died: the broker redelivers
)

// A receipt is Delivery.Receipt for this adapter.
type receipt struct {
	s       *session
	tag     uint64
	raw     amqp.Delivery // for republishing
	attempt int
	state   atomic.Int32
	timer   *time.Timer // visibility timer, nil if disabled
}

// openSession opens the channels of a new session on conn and declares the
// topology. On error, the channels it opened are closed (conn is not).
func (q *Queue) openSession(conn *amqp.Connection, ownConn bool, gen uint64) (*session, error) {
	if err := q.cfg.declareTopology(conn); err != nil {
		return nil, err
	}
	s := &session{
		q:          q,
		gen:        gen,
		conn:       conn,
		ownConn:    ownConn,
		failed:     make(chan struct{}),
		dead:       make(chan struct{}),
		pubSlots:   make(chan struct{}, q.cfg.MaxInFlightPublishes),
		waitQueues: make(map[time.Duration]struct{}),
		returned:   make(map[string]int),
		held:       make(map[*receipt]struct{}),
		merged:     make(chan amqp.Delivery),
	}
	s.connClosed = conn.NotifyClose(make(chan *amqp.Error, 1))
	var err error
	if s.pub, err = conn.Channel(); err != nil {
		return nil, fmt.Errorf("batutaamqp: open publishing channel: %w", err)
	}
	if err = s.pub.Confirm(false); err != nil {
		s.closeChannels()
		return nil, fmt.Errorf("batutaamqp: enable publisher confirms: %w", err)
	}
	s.pubClosed = s.pub.NotifyClose(make(chan *amqp.Error, 1))
	// Returns are read by the publishers themselves (see publish), so the
	// buffer must hold one per publish that may be awaiting its confirm.
	s.returns = s.pub.NotifyReturn(make(chan amqp.Return, 2*q.cfg.MaxInFlightPublishes+64))
	if s.cons, err = conn.Channel(); err != nil {
		s.closeChannels()
		return nil, fmt.Errorf("batutaamqp: open consuming channel: %w", err)
	}
	s.consClosed = s.cons.NotifyClose(make(chan *amqp.Error, 1))
	return s, nil
}

// closeChannels closes the session's channels; the broker requeues the
// consuming channel's unacked messages.
func (s *session) closeChannels() {
	if s.cons != nil {
		_ = s.cons.Close()
	}
	if s.pub != nil {
		_ = s.pub.Close()
	}
}

// fail records that an operation found the session broken (a consumer
// canceled by the broker, say) and detaches it from the Queue, so that
// callers wait for the next session while the supervisor replaces it.
func (s *session) fail(err error) {
	s.failOnce.Do(func() {
		s.failErr = err
		close(s.failed)
	})
	s.q.detach(s)
}

// kill ends the session for settlement: every receipt still held becomes
// lost (its message is redelivered by the broker once the channel is
// gone), and no receipt of this session is settled from now on.
func (s *session) kill() {
	s.killOnce.Do(func() {
		s.mu.Lock()
		close(s.dead)
		for r := range s.held {
			if r.state.CompareAndSwap(stateHeld, stateLost) && r.timer != nil {
				r.timer.Stop()
			}
		}
		clear(s.held)
		if s.idle != nil {
			close(s.idle)
			s.idle = nil
		}
		s.mu.Unlock()
	})
}

// teardown kills the session and closes its channels, and its connection
// if the adapter owns it (a connection given to New stays open, for the
// next session).
func (s *session) teardown() {
	s.kill()
	if s.ownConn {
		// Closing the connection closes its channels; the deadline keeps
		// a silent broker (a partition, no TCP reset) from blocking Close.
		_ = s.conn.CloseDeadline(time.Now().Add(closeTimeout))
	} else {
		s.closeChannels()
	}
	// Closed channels close their consumers' deliveries: the forwarders
	// end.
	s.forwards.Wait()
}

// closeTimeout bounds the closing handshake of an owned connection.
const closeTimeout = 5 * time.Second

func (s *session) isDead() bool {
	select {
	case <-s.dead:
		return true
	case <-s.failed:
		return true
	default:
		return false
	}
}

// errSessionLost: the connection or channel dropped under an operation.
var errSessionLost = errors.New("connection to the broker lost")

// errNacked: the broker refused a publish (negative confirmation).
var errNacked = errors.New("broker refused the message (negative publisher confirmation)")

// publish sends p and waits for the broker's confirmation. It returns nil
// only when the broker confirmed the message and did not return it as
// unroutable; errSessionLost (wrapped) if the session broke meanwhile, in
// which case the message may or may not have been stored.
func (s *session) publish(ctx context.Context, exchange, key string, p amqp.Publishing) error {
	select {
	case s.pubSlots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.dead:
		return errSessionLost
	}
	defer func() { <-s.pubSlots }()
	dc, err := s.pub.PublishWithDeferredConfirmWithContext(ctx, exchange, key, true, false, p)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// The channel is closed or the socket write failed (a frame may
		// be half written): either way this session is done.
		return fmt.Errorf("%w: %w", errSessionLost, err)
	}
	select {
	case <-dc.Done():
	case <-ctx.Done():
		return fmt.Errorf("waiting for the broker's confirmation: %w", ctx.Err())
	}
	// The broker sends basic.return before the confirmation of the same
	// message, and amqp091 hands the return to our buffered channel before
	// it resolves the confirmation: draining now is sure to see it.
	if s.takeReturn(p.MessageId) {
		return fmt.Errorf("%w: the broker returned message %q as unroutable (no queue bound to %q with key %q)", ErrQueueNotFound, p.MessageId, exchange, key)
	}
	if !dc.Acked() {
		if s.pub.IsClosed() {
			return errSessionLost
		}
		return errNacked
	}
	return nil
}

// takeReturn drains the returns channel and reports whether a return for
// id was pending (consuming it).
func (s *session) takeReturn(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
drain:
	for {
		select {
		case r, ok := <-s.returns:
			if !ok {
				break drain
			}
			s.returned[r.MessageId]++
		default:
			break drain
		}
	}
	if s.returned[id] == 0 {
		return false
	}
	s.returned[id]--
	if s.returned[id] == 0 {
		delete(s.returned, id)
	}
	return true
}

// ensureConsumers makes the consumers' total prefetch at least want,
// starting the first consumer on first use. With grow false (a fixed
// Config.Prefetch) only the first consumer is started. Growing adds a
// consumer with the missing prefetch on the same channel rather than
// replacing the first: RabbitMQ applies a new basic.qos only to consumers
// started after it, and canceling a consumer makes a quorum queue return
// the messages in transit to it (counted as a delivery).
func (s *session) ensureConsumers(want int, grow bool) error {
	want = max(1, min(want, 65535))
	enough := func() (bool, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.canceled {
			return false, errConsumerCanceled
		}
		return s.prefetch > 0 && (!grow || s.prefetch >= want), nil
	}
	if ok, err := enough(); ok || err != nil {
		return err
	}
	s.growMu.Lock()
	defer s.growMu.Unlock()
	if ok, err := enough(); ok || err != nil {
		return err
	}
	s.mu.Lock()
	add := want - s.prefetch
	s.mu.Unlock()
	if err := s.cons.Qos(add, 0, false); err != nil {
		return fmt.Errorf("batutaamqp: set prefetch %d: %w", add, err)
	}
	tag := fmt.Sprintf("batuta-%s-%d", newMessageID()[:10], s.gen)
	d, err := s.cons.Consume(s.q.cfg.Queue, tag, false, false, false, false, nil)
	if err != nil {
		return s.q.cfg.declareError("consume from queue", s.q.cfg.Queue, err)
	}
	c := &consumer{tag: tag, prefetch: add, deliveries: d}
	s.mu.Lock()
	select {
	case <-s.dead:
		// teardown may be waiting for the forwarders already: adding one
		// now would race its Wait. The consumer's deliveries end with its
		// channel; unacked, the broker requeues them.
		s.mu.Unlock()
		return errSessionDead
	default:
	}
	s.consumers = append(s.consumers, c)
	s.prefetch += add
	// Under s.mu, before kill (which closes s.dead under it): every Add
	// happens before teardown's Wait.
	s.forwards.Add(1)
	s.mu.Unlock()
	go s.forward(c)
	return nil
}

// errSessionDead: the session died while a consumer was being started.
var errSessionDead = errors.New("batutaamqp: session closed while starting a consumer")

// forward hands a consumer's deliveries to Receive callers through
// s.merged. Once the session is dead, deliveries are dropped (unacked, the
// broker requeues them as the channel closes) and the loop only drains.
// When the deliveries end while the session lives and Shutdown did not
// cancel the consumer, the broker canceled it (queue deleted): the session
// fails and is replaced.
func (s *session) forward(c *consumer) {
	defer s.forwards.Done()
	for d := range c.deliveries {
		select {
		case s.merged <- d:
		case <-s.dead:
		}
	}
	s.mu.Lock()
	canceled := s.canceled
	s.mu.Unlock()
	if !canceled && !s.isDead() {
		s.fail(errors.New("consumer canceled by the broker (queue deleted?)"))
	}
}

// errConsumerCanceled: Shutdown canceled the consumers.
var errConsumerCanceled = errors.New("consumer canceled by Shutdown")

// demand is what a Receive for max more deliveries asks the prefetch to
// cover: the deliveries already held plus max.
func (s *session) demand(max int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held) + max
}

// cancelConsumers stops the broker from pushing more messages to this
// session (Shutdown). Deliveries already pushed but not handed out stay
// unacked and are requeued when the channel closes.
func (s *session) cancelConsumers() {
	s.growMu.Lock()
	defer s.growMu.Unlock()
	s.mu.Lock()
	cs := slices.Clone(s.consumers)
	s.canceled = true
	s.mu.Unlock()
	for _, c := range cs {
		_ = s.cons.Cancel(c.tag, false)
	}
}

// handOut turns broker deliveries into batuta deliveries held by the
// caller, starting their visibility timers. It returns false, handing out
// nothing, if the session died or the Queue stopped taking deliveries
// (the messages stay unacked and are requeued when the channel closes).
func (s *session) handOut(raw []amqp.Delivery) ([]*receipt, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isDead() || s.q.stopped() {
		return nil, false
	}
	out := make([]*receipt, len(raw))
	for i := range raw {
		r := &receipt{s: s, tag: raw[i].DeliveryTag, raw: raw[i], attempt: attemptOf(&raw[i])}
		s.held[r] = struct{}{}
		if vt := s.q.cfg.VisibilityTimeout; vt > 0 {
			r.timer = time.AfterFunc(vt, r.expire)
		}
		out[i] = r
	}
	return out, true
}

// unhold forgets a receipt that left the held state.
func (s *session) unhold(r *receipt) {
	s.mu.Lock()
	delete(s.held, r)
	if len(s.held) == 0 && s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
	s.mu.Unlock()
}

// rehold puts back a receipt whose settlement failed before anything was
// sent, restarting its visibility timer. It reports false if the session
// died meanwhile (the receipt is then lost).
func (s *session) rehold(r *receipt) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isDead() || !r.state.CompareAndSwap(stateSettled, stateHeld) {
		r.state.Store(stateLost)
		return false
	}
	s.held[r] = struct{}{}
	if r.timer != nil {
		r.timer.Reset(s.q.cfg.VisibilityTimeout)
	}
	return true
}

// idleCh returns a channel closed once no delivery is held (at once if
// none is).
func (s *session) idleCh() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.held) == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	if s.idle == nil {
		s.idle = make(chan struct{})
	}
	return s.idle
}

// ensureWaitQueue declares the wait queue of bucket once per session.
func (s *session) ensureWaitQueue(bucket time.Duration) error {
	s.mu.Lock()
	_, ok := s.waitQueues[bucket]
	s.mu.Unlock()
	if ok {
		return nil
	}
	if err := s.q.cfg.declareWaitQueue(s.conn, bucket); err != nil {
		return err
	}
	s.mu.Lock()
	s.waitQueues[bucket] = struct{}{}
	s.mu.Unlock()
	return nil
}

// requeue gives a held message back to the broker as attempt attempt,
// after delay: a quorum queue's own requeue when there is no delay (the
// broker counts it), otherwise a confirmed copy (to a wait queue when
// delayed) followed by an ack of the original. Between the copy and the
// ack a crash leaves two copies: at least once, never none.
func (s *session) requeue(ctx context.Context, r *receipt, delay time.Duration) error {
	cfg := &s.q.cfg
	if delay <= 0 && cfg.QueueType == QueueTypeQuorum {
		return s.cons.Nack(r.tag, false, true)
	}
	target := cfg.Queue
	if delay > 0 {
		bucket := cfg.bucketFor(delay)
		if err := s.ensureWaitQueue(bucket); err != nil {
			return err
		}
		target = cfg.waitQueueName(bucket)
	}
	if err := s.publish(ctx, "", target, republishing(&r.raw, r.attempt+1)); err != nil {
		return fmt.Errorf("batutaamqp: republish message %q to %q: %w", r.raw.MessageId, target, err)
	}
	return s.cons.Ack(r.tag, false)
}

// expire is the visibility timer: the delivery was held too long, so it
// goes back to the queue for another consumer, as attempt+1.
func (r *receipt) expire() {
	if !r.state.CompareAndSwap(stateHeld, stateExpired) {
		return
	}
	s := r.s
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := s.requeue(ctx, r, 0)
	if err != nil && !s.isDead() && s.q.cfg.QueueType == QueueTypeClassic {
		// The copy could not be published: let the broker requeue the
		// original instead (it only flags it as redelivered).
		err = s.cons.Nack(r.tag, false, true)
	}
	s.unhold(r)
	if err != nil && !s.isDead() {
		s.q.log.Warn("batutaamqp: visibility timeout: could not give the message back; it is redelivered when the channel closes",
			"queue", s.q.cfg.Queue, "message_id", r.raw.MessageId, "error", err)
	}
}
