package batuta

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// AckMode says when the queue trigger acknowledges a message.
type AckMode int

// The ack modes.
const (
	// AckAuto acks after the run is accepted when the orchestrator's Store
	// is durable, and after the run finished when it is not (so a crash of
	// a process with the in-memory store redelivers the message instead of
	// losing its run). Without an orchestrator (Run with a bare FireFunc)
	// it acks after acceptance. The default.
	AckAuto AckMode = iota
	// AckOnAccept acks as soon as fire accepted the run.
	AckOnAccept
	// AckOnFinish acks once the run finished, whatever its state: the
	// run's failure is the workflow's business (its retries, a function's
	// dead-letter destination), not a reason to redeliver. It needs the
	// trigger bound to an orchestrator (RunTracking).
	AckOnFinish
)

func (m AckMode) String() string {
	switch m {
	case AckAuto:
		return "auto"
	case AckOnAccept:
		return "on_accept"
	case AckOnFinish:
		return "on_finish"
	}
	return "AckMode(" + strconv.Itoa(int(m)) + ")"
}

// QueueTriggerConfig configures NewQueueTrigger.
type QueueTriggerConfig struct {
	// Queue is consumed. Required. The trigger never closes it.
	Queue Queue
	// DeadLetter receives the messages that will not be retried: those
	// that failed their MaxDeliveries-th delivery, those older than MaxAge,
	// those fire refused with a permanent error, and those the Event func
	// rejected. A message is acked only after DeadLetter returned nil, so
	// nothing is dropped. A failing hand-off is retried DeadLetterAttempts
	// times with backoff; then the message is parked (see ParkDelay).
	// Required.
	DeadLetter DeadLetterHandler
	// DeadLetterAttempts is how many times the trigger tries to hand one
	// delivery to DeadLetter (waiting RetryDelay, doubling, between tries)
	// before it parks the message. All tries and waits of one hand-off
	// share one SettleTimeout. A hand-off that fails with a Permanent
	// error or ErrPayloadTooLarge is not retried. While the destination is
	// known to be failing (the trigger's last hand-off ended in a park),
	// each hand-off gets a single try, so the other deliveries of a batch
	// are not held for DeadLetterAttempts rounds each; a success resets
	// that. Default 3.
	DeadLetterAttempts int
	// ParkDelay is how long a parked message stays in the queue: when its
	// dead-letter hand-off failed DeadLetterAttempts times, the message is
	// nacked with this delay (it stays at the source, nothing is lost),
	// logged at error level, counted (QueueTrigger.Parked) and reported
	// to OnParked. When it comes back, this trigger does not fire it again
	// but retries the hand-off (a trigger started later, which did not
	// park it, handles it as any delivery). So a message whose destination
	// keeps failing costs one round of hand-offs per ParkDelay, never a
	// loop. Default 1 h.
	ParkDelay time.Duration
	// OnParked, if set, is called for each message parked, with the dead
	// letter that could not be handed off and the last error (for a metric,
	// an alert, or to record it elsewhere). It runs on the receiver's
	// goroutine: it must not block.
	OnParked func(ctx context.Context, dl DeadLetter, err error)
	// Receivers is the number of concurrent receive loops. Each receives
	// up to ReceiveMax messages (or one batch) and handles them before it
	// receives again. Its acks are sent in the background while it
	// handles the rest of the batch, and it receives again once they were
	// sent, so at most Receivers*ReceiveMax deliveries are held at once.
	// When the Queue is an AckBatcher, the acks ready at one moment are
	// sent together, and a loop receives on while up to max(ReceiveMax,
	// 16) of them (Batch.Size in batch mode) are still unsent, so that the
	// acks of several batches share a round trip: at most
	// Receivers*(ReceiveMax+max(ReceiveMax, 16)) deliveries are held then.
	// Default 1.
	Receivers int
	// ReceiveMax is the most messages one Receive call asks for. Default 10.
	// Ignored in batch mode (Batch.Size is used).
	ReceiveMax int
	// Ack says when a message is acked. Default AckAuto.
	Ack AckMode
	// MaxDeliveries is how many deliveries of a message may fail before
	// it goes to DeadLetter (Delivery.Attempt counts them). A nack for
	// backpressure (ErrBusy) or shutdown counts at the broker but never
	// dead-letters a message by itself. Default 5.
	MaxDeliveries int
	// MaxAge, if > 0, sends a message whose Message.Time is older than
	// MaxAge to DeadLetter instead of firing or retrying it. Default 0: no
	// limit.
	MaxAge time.Duration
	// RetryDelay is the nack delay after the first failed delivery; it
	// doubles with each further delivery, up to MaxRetryDelay, and is
	// jittered to between half and all of that. Default 1 s.
	RetryDelay time.Duration
	// MaxRetryDelay caps RetryDelay's growth. Default 1 min.
	MaxRetryDelay time.Duration
	// BusyDelay is the nack delay (and the receiver's pause) when fire
	// returns ErrBusy; it doubles while the orchestrator stays busy, up to
	// MaxRetryDelay. Default 100 ms.
	BusyDelay time.Duration
	// Batch, if Batch.Size > 1, hands messages to the workflow in batches.
	// See BatchConfig.
	Batch BatchConfig
	// Event turns a delivery into the Event to fire. An error sends the
	// message to DeadLetter at once (it is malformed; retrying cannot
	// help). Default: DefaultQueueEvent with Source.
	Event func(d Delivery) (Event, error)
	// Source is the Event.Source of the default Event func. Default
	// SourceQueue ("queue").
	Source string
	// ExtendEvery is how often a delivery waiting for its run to finish
	// (or for its dead-letter hand-off) has its visibility extended, when
	// the Queue is an Extender; one goroutine per Run extends them all.
	// Default 10s (a third of the usual 30 s visibility timeout); negative
	// never.
	ExtendEvery time.Duration
	// SettleTimeout bounds each Ack, Nack and DeadLetter call, which run
	// even while the trigger shuts down. Default 10 s.
	SettleTimeout time.Duration
	// Logger logs settle failures and dead letters. Default slog.Default().
	Logger *slog.Logger
	// Clock tells the time for MaxAge, pauses and batch windows. Default
	// SystemClock.
	Clock Clock
}

// Defaults of QueueTriggerConfig.
const (
	DefaultQueueReceivers     = 1
	DefaultQueueReceiveMax    = 10
	DefaultQueueMaxDeliveries = 5
	DefaultQueueRetryDelay    = time.Second
	DefaultQueueMaxRetryDelay = time.Minute
	DefaultQueueBusyDelay     = 100 * time.Millisecond
	DefaultQueueSettleTimeout = 10 * time.Second
	// DefaultQueueDeadLetterAttempts is the default of DeadLetterAttempts.
	DefaultQueueDeadLetterAttempts = 3
	// DefaultQueueParkDelay is the default of ParkDelay.
	DefaultQueueParkDelay = time.Hour
)

func (c QueueTriggerConfig) withDefaults() QueueTriggerConfig {
	if c.Receivers == 0 {
		c.Receivers = DefaultQueueReceivers
	}
	if c.ReceiveMax == 0 {
		c.ReceiveMax = DefaultQueueReceiveMax
	}
	if c.MaxDeliveries == 0 {
		c.MaxDeliveries = DefaultQueueMaxDeliveries
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = DefaultQueueRetryDelay
	}
	if c.MaxRetryDelay == 0 {
		c.MaxRetryDelay = DefaultQueueMaxRetryDelay
	}
	if c.BusyDelay == 0 {
		c.BusyDelay = DefaultQueueBusyDelay
	}
	if c.ExtendEvery == 0 {
		c.ExtendEvery = 10 * time.Second
	}
	if c.SettleTimeout == 0 {
		c.SettleTimeout = DefaultQueueSettleTimeout
	}
	if c.DeadLetterAttempts == 0 {
		c.DeadLetterAttempts = DefaultQueueDeadLetterAttempts
	}
	if c.ParkDelay == 0 {
		c.ParkDelay = DefaultQueueParkDelay
	}
	if c.Source == "" {
		c.Source = SourceQueue
	}
	if c.Event == nil {
		src := c.Source
		c.Event = func(d Delivery) (Event, error) { return DefaultQueueEvent(d, src), nil }
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	c.Batch = c.Batch.withDefaults()
	return c
}

func (c QueueTriggerConfig) validate() error {
	switch {
	case c.Queue == nil:
		return &ConfigError{Field: "Queue", Reason: "required"}
	case c.DeadLetter == nil:
		return &ConfigError{Field: "DeadLetter", Reason: "required: messages that exhaust MaxDeliveries must go somewhere"}
	case c.Receivers < 0:
		return &ConfigError{Field: "Receivers", Reason: "must not be negative"}
	case c.ReceiveMax < 0:
		return &ConfigError{Field: "ReceiveMax", Reason: "must not be negative"}
	case c.Ack < AckAuto || c.Ack > AckOnFinish:
		return &ConfigError{Field: "Ack", Reason: "unknown ack mode " + c.Ack.String()}
	case c.MaxDeliveries < 0:
		return &ConfigError{Field: "MaxDeliveries", Reason: "must not be negative"}
	case c.MaxAge < 0:
		return &ConfigError{Field: "MaxAge", Reason: "must not be negative"}
	case c.RetryDelay < 0:
		return &ConfigError{Field: "RetryDelay", Reason: "must not be negative"}
	case c.MaxRetryDelay < 0:
		return &ConfigError{Field: "MaxRetryDelay", Reason: "must not be negative"}
	case c.BusyDelay < 0:
		return &ConfigError{Field: "BusyDelay", Reason: "must not be negative"}
	case c.SettleTimeout < 0:
		return &ConfigError{Field: "SettleTimeout", Reason: "must not be negative"}
	case c.DeadLetterAttempts < 0:
		return &ConfigError{Field: "DeadLetterAttempts", Reason: "must not be negative"}
	case c.ParkDelay < 0:
		return &ConfigError{Field: "ParkDelay", Reason: "must not be negative"}
	}
	return c.Batch.validate()
}

// DefaultQueueEvent is the Event the queue trigger fires for a delivery by
// default: ID is the message ID (so a redelivered message is deduplicated by
// the orchestrator), Type is the "type" header if present, Time the publish
// time, Data the body and Metadata the headers.
func DefaultQueueEvent(d Delivery, source string) Event {
	return Event{
		ID:       d.ID,
		Source:   source,
		Type:     d.Headers["type"],
		Time:     d.Time,
		Data:     d.Body,
		Metadata: d.Headers,
	}
}

// A QueueTrigger consumes a Queue and fires one Event per message (or per
// batch, see BatchConfig). It is a TrackingTrigger: bind it to a workflow
// or function with Orchestrator.Bind.
//
// Delivery guarantees: a message is acked only after its run was accepted
// (or finished, per Ack); a delivery whose fire failed is nacked with
// backoff and redelivered, until its MaxDeliveries-th delivery fails or it
// outlives MaxAge, when it goes to DeadLetter and only then is acked. Every
// delivery is settled exactly once by the trigger. On shutdown (ctx done)
// the receivers stop receiving, deliveries not yet fired are nacked at once,
// deliveries already accepted are acked, and Run returns after every
// delivery it received is settled.
//
// A QueueTrigger holds no state between runs; Run may be called again
// after it returned. It is safe for concurrent use.
type QueueTrigger struct {
	cfg QueueTriggerConfig

	parkedCount atomic.Int64
	// parked holds the messages this trigger parked (by message ID), with
	// the reason and error of their dead letter, so that their next
	// delivery goes straight to the hand-off instead of firing again.
	parkedMu sync.Mutex
	parked   map[string]parkedLetter
}

// parkedLetter is what a parked message's dead letter said.
type parkedLetter struct {
	reason DeadLetterReason
	msg    string
}

// Parked returns how many times this trigger parked a message because its
// dead-letter hand-off kept failing (see QueueTriggerConfig.ParkDelay).
// A message parked again on a later delivery counts again.
func (t *QueueTrigger) Parked() int64 { return t.parkedCount.Load() }

func (t *QueueTrigger) parkedLetter(id string) (parkedLetter, bool) {
	t.parkedMu.Lock()
	defer t.parkedMu.Unlock()
	p, ok := t.parked[id]
	return p, ok
}

func (t *QueueTrigger) setParked(id string, p *parkedLetter) {
	t.parkedMu.Lock()
	defer t.parkedMu.Unlock()
	if p == nil {
		delete(t.parked, id)
		return
	}
	if t.parked == nil {
		t.parked = make(map[string]parkedLetter)
	}
	if len(t.parked) >= maxParkedRemembered {
		// Parked messages another consumer settled are never forgotten
		// here; past the cap, a parked message is fired once more when it
		// comes back (as after a restart) rather than remembered.
		return
	}
	t.parked[id] = *p
}

// maxParkedRemembered bounds the parked messages a trigger remembers.
const maxParkedRemembered = 10_000

// NewQueueTrigger validates cfg and returns a trigger.
func NewQueueTrigger(cfg QueueTriggerConfig) (*QueueTrigger, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &QueueTrigger{cfg: cfg.withDefaults()}, nil
}

// Run consumes the queue until ctx ends, handing each message to fire and
// acking it once fire returned nil. It returns nil when ctx ends, or an
// error if the queue was closed. Ack mode AckOnFinish and batch mode need the
// run's outcome, so they work only through RunTracking (that is, bound to
// an orchestrator); Run refuses them with ErrInvalidConfig.
func (t *QueueTrigger) Run(ctx context.Context, fire FireFunc) error {
	if t.cfg.Ack == AckOnFinish {
		return &ConfigError{Field: "Ack", Reason: "AckOnFinish needs the trigger bound to an orchestrator (RunTracking)"}
	}
	if t.cfg.Batch.Size > 1 {
		return &ConfigError{Field: "Batch.Size", Reason: "batch mode needs the trigger bound to an orchestrator (RunTracking)"}
	}
	f := func(ctx context.Context, ev Event) (string, error) { return "", fire(ctx, ev) }
	return t.run(ctx, &queueConsumer{t: t, cfg: &t.cfg, fire: f})
}

// RunTracking is Run for a trigger bound to an orchestrator: it fires
// through runs and, in AckOnFinish mode (or AckAuto with a non-durable
// store) and in batch mode, waits for each run to finish before acking.
func (t *QueueTrigger) RunTracking(ctx context.Context, runs Runs) error {
	c := &queueConsumer{t: t, cfg: &t.cfg, fire: runs.Fire, runs: runs, workflow: runs.Workflow()}
	c.waitFinish = t.cfg.Ack == AckOnFinish || (t.cfg.Ack == AckAuto && !runs.Durable())
	return t.run(ctx, c)
}

func (t *QueueTrigger) run(ctx context.Context, c *queueConsumer) error {
	var (
		wg      sync.WaitGroup
		errOnce sync.Once
		runErr  error
	)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.ext = c.newExtender()
	extDone := make(chan struct{})
	if c.ext != nil {
		go func() {
			defer close(extDone)
			c.ext.run(rctx)
		}()
	} else {
		close(extDone)
	}
	for range t.cfg.Receivers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.receive(rctx); err != nil {
				errOnce.Do(func() { runErr = err })
				cancel()
			}
		}()
	}
	wg.Wait()
	cancel()
	<-extDone
	if runErr != nil {
		return runErr
	}
	return nil
}

// queueConsumer is one Run of a QueueTrigger.
type queueConsumer struct {
	t          *QueueTrigger
	cfg        *QueueTriggerConfig
	fire       func(ctx context.Context, ev Event) (string, error)
	runs       Runs // nil without an orchestrator
	workflow   string
	waitFinish bool
	// ext extends the deliveries waiting for their runs (nil when the
	// Queue is no Extender or ExtendEvery is negative).
	ext *extender
	// dlFailing: the last dead-letter hand-off ended in a park; the next
	// ones get one try until one succeeds.
	dlFailing atomic.Bool
}

// receive is one receiver loop. It returns nil when ctx ends and an error
// when the queue is closed.
func (c *queueConsumer) receive(ctx context.Context) error {
	r := &receiver{c: c, acks: c.newAckPipe(ctx)}
	defer r.acks.close() // every ack queued is sent before Run returns
	n := c.cfg.ReceiveMax
	if c.cfg.Batch.Size > 1 {
		n = c.cfg.Batch.Size
	}
	window := 0
	if _, ok := c.cfg.Queue.(AckBatcher); ok {
		window = max(n, queueAcksAhead)
	}
	var recvFailures int
	for ctx.Err() == nil {
		var (
			ds  []Delivery
			err error
		)
		// Acks in flight overlap with the next deliveries, a bounded
		// number of them, when they can share a round trip.
		r.acks.waitUnsent(window)
		if c.cfg.Batch.Size > 1 {
			ds, err = c.receiveBatch(ctx)
		} else {
			ds, err = c.cfg.Queue.Receive(ctx, c.cfg.ReceiveMax)
		}
		if err != nil {
			if ctx.Err() != nil {
				// Deliveries received with the batch window may still be
				// held: receiveBatch returns them with a nil error, so
				// nothing is held here.
				return nil // stopping is not a receive failure
			}
			if errors.Is(err, ErrClosed) {
				return fmt.Errorf("batuta: queue trigger: %w", err)
			}
			recvFailures++
			d := backoffDelay(c.cfg.BusyDelay, c.cfg.MaxRetryDelay, recvFailures)
			c.cfg.Logger.WarnContext(ctx, "batuta: queue trigger: receive failed", "error", err, "retry_in", d)
			c.pause(ctx, d)
			continue
		}
		recvFailures = 0
		if len(ds) == 0 {
			continue
		}
		if c.cfg.Batch.Size > 1 {
			r.handleBatch(ctx, ds)
		} else {
			r.handle(ctx, ds)
		}
	}
	return nil
}

// queueAcksAhead is how many acks a receive loop may leave unsent (at
// least) while it receives and handles more deliveries, when the Queue is
// an AckBatcher.
const queueAcksAhead = 16

// receiver holds one receive loop's backpressure state.
type receiver struct {
	c    *queueConsumer
	acks *ackPipe
	busy int // consecutive ErrBusy answers
}

// accepted is a delivery whose run was accepted, waiting to be acked.
type acceptedDelivery struct {
	d      Delivery
	runID  string
	extKey uint64 // its entry in the extender
}

// handle fires each delivery and settles it.
func (r *receiver) handle(ctx context.Context, ds []Delivery) {
	c := r.c
	var waiting []acceptedDelivery
	var busyPause time.Duration
	for i, d := range ds {
		if ctx.Err() != nil {
			c.nackAll(ctx, ds[i:], 0)
			break
		}
		ev, ok := c.prepare(ctx, d)
		if !ok {
			continue // dead-lettered
		}
		opts, err := queueSubmitOptions(d)
		if err != nil {
			c.deadLetter(ctx, d, ev, DeadLetterMalformed, err.Error())
			continue
		}
		runID, err := c.fire(WithSubmitOptions(ctx, opts...), ev)
		if err == nil {
			r.busy = 0
			if c.waitFinish {
				waiting = append(waiting, acceptedDelivery{d, runID, c.ext.add(d)})
			} else {
				r.acks.add(d)
			}
			continue
		}
		if errors.Is(err, ErrBusy) && ctx.Err() == nil {
			r.busy++
			delay := backoffDelay(c.cfg.BusyDelay, c.cfg.MaxRetryDelay, r.busy)
			c.nackAll(ctx, ds[i:], delay)
			busyPause = delay
			break
		}
		c.failed(ctx, d, ev, err)
	}
	for _, a := range waiting {
		r.settleFinished(ctx, a)
	}
	// Back off before receiving more (after settling what was accepted).
	c.pause(ctx, busyPause)
}

// prepare builds the event for d, or dead-letters d (malformed, too old,
// parked by this trigger on an earlier delivery).
func (c *queueConsumer) prepare(ctx context.Context, d Delivery) (Event, bool) {
	if p, ok := c.t.parkedLetter(d.ID); ok && d.ID != "" {
		ev, err := c.cfg.Event(d)
		if err != nil {
			ev = DefaultQueueEvent(d, c.cfg.Source)
		}
		c.deadLetter(ctx, d, ev, p.reason, p.msg)
		return Event{}, false
	}
	ev, err := c.cfg.Event(d)
	if err != nil {
		c.deadLetter(ctx, d, DefaultQueueEvent(d, c.cfg.Source), DeadLetterMalformed, err.Error())
		return Event{}, false
	}
	if c.tooOld(d) {
		c.deadLetter(ctx, d, ev, DeadLetterMaxAge, fmt.Sprintf("message older than %v", c.cfg.MaxAge))
		return Event{}, false
	}
	return ev, true
}

func (c *queueConsumer) tooOld(d Delivery) bool {
	return c.cfg.MaxAge > 0 && !d.Time.IsZero() && c.cfg.Clock.Now().Sub(d.Time) > c.cfg.MaxAge
}

// failed settles a delivery whose processing failed with err: nack at once
// on shutdown, dead letter when retrying cannot help or the budget is
// spent, else nack with backoff.
func (c *queueConsumer) failed(ctx context.Context, d Delivery, ev Event, err error) {
	switch {
	case ctx.Err() != nil:
		// Shutting down: whatever failed, it is not the message's fault.
		c.nack(ctx, d, 0)
	case IsPermanent(err) || errors.Is(err, ErrPayloadTooLarge) || errors.Is(err, ErrInvalidPayload) || errors.Is(err, ErrUnknownWorkflow):
		c.deadLetter(ctx, d, ev, DeadLetterPermanent, err.Error())
	case d.Attempt >= c.cfg.MaxDeliveries:
		c.deadLetter(ctx, d, ev, DeadLetterMaxDeliveries, err.Error())
	case c.tooOld(d):
		c.deadLetter(ctx, d, ev, DeadLetterMaxAge, err.Error())
	default:
		delay := backoffDelay(c.cfg.RetryDelay, c.cfg.MaxRetryDelay, d.Attempt)
		c.cfg.Logger.DebugContext(ctx, "batuta: queue trigger: delivery failed, will retry",
			"message", d.ID, "attempt", d.Attempt, "retry_in", delay, "error", err)
		c.nack(ctx, d, delay)
	}
}

// settleFinished waits for an accepted run to finish and queues its
// message's ack; if the trigger stops first, the message is nacked for
// redelivery (the event ID dedupes it against the existing run). The
// delivery is extended (it was added to the extender when its run was
// accepted) until then.
func (r *receiver) settleFinished(ctx context.Context, a acceptedDelivery) {
	c := r.c
	err := c.awaitRun(ctx, a.runID)
	c.ext.remove(a.extKey)
	if err != nil && !errors.Is(err, ErrRunNotFound) {
		c.nack(ctx, a.d, 0)
		return
	}
	// Finished (or finished and already pruned: it existed when fire
	// returned its ID).
	r.acks.add(a.d)
}

// awaitRun returns once run id finished. Bound to an orchestrator, it
// does not read the run when the store publishes run completions.
func (c *queueConsumer) awaitRun(ctx context.Context, id string) error {
	if a, ok := c.runs.(runAwaiter); ok {
		return a.awaitFinished(ctx, id)
	}
	_, err := c.runs.Wait(ctx, id)
	return err
}

// settleCtx is the context for settling: it outlives ctx's cancellation, so
// shutdown still acks and nacks, but is bounded by SettleTimeout.
func (c *queueConsumer) settleCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), c.cfg.SettleTimeout)
}

func (c *queueConsumer) ack(ctx context.Context, d Delivery) {
	sctx, cancel := c.settleCtx(ctx)
	defer cancel()
	if err := c.cfg.Queue.Ack(sctx, d); err != nil {
		c.ackFailed(ctx, d, err)
	}
}

func (c *queueConsumer) ackFailed(ctx context.Context, d Delivery, err error) {
	// The message will be redelivered; the event ID dedupes its run.
	c.cfg.Logger.WarnContext(ctx, "batuta: queue trigger: ack failed; the message will be redelivered",
		"message", d.ID, "attempt", d.Attempt, "error", err)
}

func (c *queueConsumer) nack(ctx context.Context, d Delivery, delay time.Duration) {
	sctx, cancel := c.settleCtx(ctx)
	defer cancel()
	if err := c.cfg.Queue.Nack(sctx, d, delay); err != nil {
		// The visibility timeout redelivers it.
		c.cfg.Logger.WarnContext(ctx, "batuta: queue trigger: nack failed; the message returns after its visibility timeout",
			"message", d.ID, "attempt", d.Attempt, "error", err)
	}
}

func (c *queueConsumer) nackAll(ctx context.Context, ds []Delivery, delay time.Duration) {
	for _, d := range ds {
		c.nack(ctx, d, delay)
	}
}

// deadLetter hands d to the dead-letter destination and acks it. A failing
// hand-off is retried DeadLetterAttempts times with backoff (the delivery's
// visibility extended meanwhile); then d is parked: nacked with ParkDelay,
// logged, counted and reported, never redelivered in a loop. On shutdown a
// failed hand-off is not retried: d is nacked at once.
func (c *queueConsumer) deadLetter(ctx context.Context, d Delivery, ev Event, reason DeadLetterReason, msg string) {
	dl := DeadLetter{
		Event:    ev,
		Reason:   reason,
		Error:    msg,
		Attempts: d.Attempt,
		Workflow: c.workflow,
		Time:     c.cfg.Clock.Now(),
	}
	var ext *extender
	if c.cfg.DeadLetterAttempts > 1 {
		ext = c.ext
	}
	extKey := ext.add(d)
	tries := c.cfg.DeadLetterAttempts
	if c.dlFailing.Load() {
		tries = 1
	}
	// The whole hand-off, tries and waits, is bounded by SettleTimeout, so
	// a hung destination holds the deliveries received with d no longer
	// than a single try did.
	sctx, cancel := c.settleCtx(ctx)
	defer cancel()
	var err error
	for try := 1; ; try++ {
		err = c.cfg.DeadLetter.HandleDeadLetter(sctx, dl)
		if err == nil || try >= tries || ctx.Err() != nil || sctx.Err() != nil ||
			IsPermanent(err) || errors.Is(err, ErrPayloadTooLarge) {
			break
		}
		delay := backoffDelay(c.cfg.RetryDelay, c.cfg.MaxRetryDelay, try)
		if end, ok := sctx.Deadline(); ok && time.Until(end) <= delay {
			break // no time left for another try
		}
		c.cfg.Logger.WarnContext(ctx, "batuta: queue trigger: dead-letter hand-off failed; retrying",
			"message", d.ID, "attempt", d.Attempt, "reason", reason, "try", try, "of", tries,
			"error", err, "retry_in", delay)
		c.pause(ctx, delay)
	}
	ext.remove(extKey)
	switch {
	case err == nil:
		c.dlFailing.Store(false)
		c.t.setParked(d.ID, nil)
		c.cfg.Logger.WarnContext(ctx, "batuta: queue trigger: message dead-lettered",
			"message", d.ID, "attempt", d.Attempt, "reason", reason, "error", msg)
		c.ack(ctx, d)
	case ctx.Err() != nil:
		c.cfg.Logger.ErrorContext(ctx, "batuta: queue trigger: dead-letter hand-off failed while shutting down; the message stays in the queue",
			"message", d.ID, "attempt", d.Attempt, "reason", reason, "error", err)
		c.nack(ctx, d, 0)
	default:
		c.dlFailing.Store(true)
		c.park(ctx, d, dl, err, tries)
	}
}

// park keeps d at the source for ParkDelay after its dead-letter hand-off
// failed for good: nothing is lost, nothing spins, and an operator finds
// it in the log, the Parked count and the OnParked hook.
func (c *queueConsumer) park(ctx context.Context, d Delivery, dl DeadLetter, err error, tries int) {
	if d.ID != "" {
		c.t.setParked(d.ID, &parkedLetter{reason: dl.Reason, msg: dl.Error})
	}
	c.t.parkedCount.Add(1)
	c.cfg.Logger.ErrorContext(ctx, "batuta: queue trigger: dead-letter hand-off failed; message parked in the queue",
		"message", d.ID, "attempt", d.Attempt, "reason", dl.Reason, "tries", tries,
		"error", err, "parked_for", c.cfg.ParkDelay)
	if c.cfg.OnParked != nil {
		c.cfg.OnParked(ctx, dl, err)
	}
	c.nack(ctx, d, c.cfg.ParkDelay)
}

// pause waits d or until ctx ends.
func (c *queueConsumer) pause(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	tm := c.cfg.Clock.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C():
	}
}

// backoffDelay is base*2^(n-1), capped, jittered to [d/2, d].
func backoffDelay(base, limit time.Duration, n int) time.Duration {
	if base <= 0 {
		return 0
	}
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	if limit > 0 && d > limit {
		d = limit
	}
	half := int64(d / 2)
	return time.Duration(half + rand.Int64N(int64(d)-half+1))
}

// DeadLetterReason says why an event was dead-lettered.
type DeadLetterReason string

// The dead-letter reasons.
const (
	// DeadLetterMaxDeliveries: the message failed its last allowed delivery.
	DeadLetterMaxDeliveries DeadLetterReason = "max_deliveries"
	// DeadLetterMaxAge: the message outlived the trigger's MaxAge.
	DeadLetterMaxAge DeadLetterReason = "max_age"
	// DeadLetterPermanent: it was refused with an error retrying cannot fix
	// (Permanent, payload too large or invalid, unknown workflow).
	DeadLetterPermanent DeadLetterReason = "permanent"
	// DeadLetterMalformed: the trigger could not turn the message into an
	// event.
	DeadLetterMalformed DeadLetterReason = "malformed"
	// DeadLetterFailed: a function's last attempt failed.
	DeadLetterFailed DeadLetterReason = "failed"
)

// A DeadLetter is an event that will not be retried any more, with the
// reason. Its Event.ID is stable across redeliveries, so a destination can
// drop the rare duplicate (delivery of dead letters is at least once: a
// crash between the hand-off and the ack repeats it).
type DeadLetter struct {
	// Event is the failed event (for a queue message, as the trigger built
	// it: the message ID, body and headers).
	Event Event `json:"event"`
	// Reason says why.
	Reason DeadLetterReason `json:"reason"`
	// Error is the last error.
	Error string `json:"error,omitempty"`
	// Attempts counts the deliveries (queue trigger) or attempts
	// (function) spent.
	Attempts int `json:"attempts"`
	// Workflow names the workflow or function the event was for, when
	// known.
	Workflow string `json:"workflow,omitempty"`
	// RunID is the failed run, for a function's failure.
	RunID string `json:"run_id,omitempty"`
	// Time is when the event was dead-lettered.
	Time time.Time `json:"time"`
}

// A DeadLetterHandler is an on-failure destination: it takes events that
// will not be retried. It returns nil once the dead letter is safely kept;
// an error makes the caller keep the event and try again later.
// Implementations must be safe for concurrent use.
type DeadLetterHandler interface {
	HandleDeadLetter(ctx context.Context, dl DeadLetter) error
}

// DeadLetterFunc adapts a function to DeadLetterHandler.
type DeadLetterFunc func(ctx context.Context, dl DeadLetter) error

// HandleDeadLetter calls f(ctx, dl).
func (f DeadLetterFunc) HandleDeadLetter(ctx context.Context, dl DeadLetter) error { return f(ctx, dl) }

// Header names DeadLetterQueue sets on the messages it publishes.
const (
	HeaderDeadLetterReason   = "batuta-dead-letter-reason"
	HeaderDeadLetterError    = "batuta-dead-letter-error"
	HeaderDeadLetterAttempts = "batuta-dead-letter-attempts"
	HeaderDeadLetterWorkflow = "batuta-dead-letter-workflow"
	HeaderDeadLetterRun      = "batuta-dead-letter-run"
	HeaderDeadLetterSource   = "batuta-dead-letter-source"
	HeaderDeadLetterType     = "batuta-dead-letter-type"
	HeaderDeadLetterSubject  = "batuta-dead-letter-subject"
	// HeaderDeadLetterTruncated is set on a dead letter whose body was cut
	// to fit its destination: it says why, how big the original was and
	// how much is kept. HeaderDeadLetterBodySize and
	// HeaderDeadLetterBodySHA256 are the original body's size in bytes
	// and its SHA-256 (hex), so the original can be matched to a copy
	// kept elsewhere (the message ID is the original's ID).
	HeaderDeadLetterTruncated  = "batuta-dead-letter-truncated"
	HeaderDeadLetterBodySize   = "batuta-dead-letter-body-size"
	HeaderDeadLetterBodySHA256 = "batuta-dead-letter-body-sha256"
)

// Message metadata (headers) the queue trigger reads to delay or prioritise
// a message's run (not in batch mode, where one run serves many messages).
// A malformed value makes the message malformed: it goes to the dead
// letter destination with DeadLetterMalformed and the reason.
const (
	// HeaderDelay delays the run: a Go duration ("90s", "1h30m") or an
	// integer number of milliseconds ("1500"), counted from the message's
	// publish time (Message.Time; the receipt if unknown), so a
	// redelivered message is not delayed again. Not negative.
	HeaderDelay = "batuta-delay"
	// HeaderStartAt sets the run's start time, RFC 3339
	// ("2026-12-24T09:00:00Z"); a time in the past means now. It wins over
	// HeaderDelay.
	HeaderStartAt = "batuta-start-at"
	// HeaderPriority sets the run's priority, an integer (see
	// WithPriority).
	HeaderPriority = "batuta-priority"
)

// queueSubmitOptions reads HeaderDelay, HeaderStartAt and HeaderPriority.
func queueSubmitOptions(d Delivery) ([]SubmitOption, error) {
	if len(d.Headers) == 0 {
		return nil, nil
	}
	var opts []SubmitOption
	if v, ok := d.Headers[HeaderDelay]; ok {
		delay, err := time.ParseDuration(v)
		if err != nil {
			ms, ierr := strconv.ParseInt(v, 10, 64)
			if ierr != nil || ms > math.MaxInt64/int64(time.Millisecond) || ms < math.MinInt64/int64(time.Millisecond) {
				return nil, fmt.Errorf("header %s: %q is neither a Go duration (\"90s\") nor an integer number of milliseconds", HeaderDelay, clip(v))
			}
			delay = time.Duration(ms) * time.Millisecond
		}
		if delay < 0 {
			return nil, fmt.Errorf("header %s: %q is negative", HeaderDelay, clip(v))
		}
		if d.Time.IsZero() {
			opts = append(opts, StartAfter(delay))
		} else {
			opts = append(opts, StartAt(d.Time.Add(delay)))
		}
	}
	if v, ok := d.Headers[HeaderStartAt]; ok {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return nil, fmt.Errorf("header %s: %q is not an RFC 3339 time such as \"2026-12-24T09:00:00Z\"", HeaderStartAt, clip(v))
		}
		opts = append(opts, StartAt(t))
	}
	if v, ok := d.Headers[HeaderPriority]; ok {
		p, err := strconv.ParseInt(v, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("header %s: %q is not a 32-bit integer", HeaderPriority, clip(v))
		}
		opts = append(opts, WithPriority(int(p)))
	}
	return opts, nil
}

// MaxDeadLetterErrorBytes caps the batuta-dead-letter-error header: a
// longer error is cut (at a UTF-8 boundary) and ends with "...". Brokers
// limit header sizes (AMQP's frame size, NATS's max_payload counts
// headers), and an error string can echo a whole payload.
const MaxDeadLetterErrorBytes = 1024

// DeadLetterMessage returns the Message that DeadLetterQueue publishes for
// dl: the message ID is the event ID, the body the event data, the time the
// event time, the headers the event metadata plus the batuta-dead-letter-*
// headers (reason, error cut to MaxDeadLetterErrorBytes, attempts,
// workflow, run, source, type, subject). Adapters with their own
// dead-letter publishing build on it.
func DeadLetterMessage(dl DeadLetter) Message {
	h := maps.Clone(dl.Event.Metadata)
	if h == nil {
		h = make(map[string]string, 8)
	}
	set := func(k, v string) {
		if v != "" {
			h[k] = v
		}
	}
	set(HeaderDeadLetterReason, string(dl.Reason))
	set(HeaderDeadLetterError, cutUTF8(dl.Error, MaxDeadLetterErrorBytes))
	set(HeaderDeadLetterAttempts, strconv.Itoa(dl.Attempts))
	set(HeaderDeadLetterWorkflow, dl.Workflow)
	set(HeaderDeadLetterRun, dl.RunID)
	set(HeaderDeadLetterSource, dl.Event.Source)
	set(HeaderDeadLetterType, dl.Event.Type)
	set(HeaderDeadLetterSubject, dl.Event.Subject)
	return Message{ID: dl.Event.ID, Body: dl.Event.Data, Headers: h, Time: dl.Event.Time}
}

// TruncateDeadLetter returns a copy of msg (a dead letter) whose body is
// cut to its first limit bytes, with the HeaderDeadLetterTruncated header
// (why, plus the original and kept sizes), HeaderDeadLetterBodySize and
// HeaderDeadLetterBodySHA256 set. A body within limit is returned as is.
// The bytes cut off are lost: the headers say so, and let an operator find
// the original by its message ID and hash.
func TruncateDeadLetter(msg Message, limit int, why string) Message {
	if limit < 0 {
		limit = 0
	}
	if len(msg.Body) <= limit {
		return msg
	}
	sum := sha256.Sum256(msg.Body)
	h := maps.Clone(msg.Headers)
	if h == nil {
		h = make(map[string]string, 3)
	}
	h[HeaderDeadLetterTruncated] = cutUTF8(fmt.Sprintf("%s; original body %d bytes, first %d kept", why, len(msg.Body), limit), MaxDeadLetterErrorBytes)
	h[HeaderDeadLetterBodySize] = strconv.Itoa(len(msg.Body))
	h[HeaderDeadLetterBodySHA256] = hex.EncodeToString(sum[:])
	msg.Headers = h
	msg.Body = msg.Body[:limit:limit]
	return msg
}

// cutUTF8 cuts s to at most n bytes, at a rune boundary, marking the cut.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "..."
	i := max(n-len(mark), 0)
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + mark
}

// DeadLetterQueue returns a DeadLetterHandler that publishes each dead
// letter to q, as DeadLetterMessage builds it. If q refuses the body as too
// large (an error matching ErrPayloadTooLarge, as a *PayloadTooLargeError
// with its Limit), the dead letter is published again with its body cut to
// the limit (TruncateDeadLetter: the reason, the original size and SHA-256
// in headers), so an oversized message still reaches the destination in a
// form it accepts instead of failing its hand-off forever.
//
// A QueueTrigger whose DeadLetter is a DeadLetterQueue of a BrowsableQueue
// is a DeadLetterBox: its dead letters can be listed, redriven and deleted
// (deadletters.go).
func DeadLetterQueue(q Queue) DeadLetterHandler {
	return &deadLetterQueue{q: q, DeadLetterFunc: func(ctx context.Context, dl DeadLetter) error {
		msg := DeadLetterMessage(dl)
		err := q.Publish(ctx, msg)
		var tooLarge *PayloadTooLargeError
		if err != nil && errors.As(err, &tooLarge) && tooLarge.Limit < len(msg.Body) {
			why := fmt.Sprintf("body over the dead-letter queue's limit of %d bytes", tooLarge.Limit)
			// A limit that counts headers too (NATS's max_payload)
			// shrinks by the headers the truncation adds: the next
			// refusal gives the room left, a third try fits.
			for range 3 {
				err = q.Publish(ctx, TruncateDeadLetter(msg, tooLarge.Limit, why))
				if err == nil || !errors.As(err, &tooLarge) {
					break
				}
			}
		}
		if err != nil {
			return fmt.Errorf("batuta: dead-letter queue: %w", err)
		}
		return nil
	}}
}

var (
	_ TrackingTrigger = (*QueueTrigger)(nil)
)
