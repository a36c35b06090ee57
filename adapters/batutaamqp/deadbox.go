package batutaamqp

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/batuta-dev/batuta"
	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultDeadLetterScanMax is Config.DeadLetterScanMax's default.
const DefaultDeadLetterScanMax = 10000

// headerDeadID carries the ID of a dead letter in its box: set when the
// adapter dead-letters a message, and when the box refreshes a message the
// broker dead-lettered (see refreshAt).
const headerDeadID = "x-batuta-dead-id"

// refreshAt is the x-delivery-count at which the box replaces a message of
// a quorum dead-letter queue by a fresh copy while it looks through the
// queue: every look returns the messages to the queue, which RabbitMQ
// before 4.3 counts as a delivery, and RabbitMQ 4.0 to 4.2 give quorum
// queues a default delivery limit of 20 past which a message without a
// dead-letter exchange is dropped.
var refreshAt = 10

// deadIDPattern is a dead letter's ID: Unix milliseconds (13 digits) and
// 16 hex digits, so that IDs sort by time.
var deadIDPattern = regexp.MustCompile(`^[0-9]{13}-[0-9a-f]{16}$`)

// newDeadID returns a fresh dead-letter ID for a letter dead since t.
func newDeadID(t time.Time) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return formatDeadID(t, b[:])
}

func formatDeadID(t time.Time, tail []byte) string {
	return fmt.Sprintf("%013d-%s", max(t.UnixMilli(), 0), hex.EncodeToString(tail[:8]))
}

func checkDeadIDs(ids ...string) error {
	for _, id := range ids {
		if !deadIDPattern.MatchString(id) {
			return fmt.Errorf("%w: %q is not a RabbitMQ dead-letter ID (like 1700000000000-0123456789abcdef)", batuta.ErrBadDeadLetterID, id)
		}
	}
	return nil
}

// deadLetters is the handler DeadLetters returns: it hands dead letters
// to the dead-letter queue and keeps them browsable there.
type deadLetters struct{ q *Queue }

var _ batuta.DeadLetterKeeper = deadLetters{}

func (h deadLetters) HandleDeadLetter(ctx context.Context, dl batuta.DeadLetter) error {
	return h.q.handleDeadLetter(ctx, dl)
}

// DeadLetterBox returns the box of the dead-letter queue whose redrives go
// to source (the queue trigger's queue).
func (h deadLetters) DeadLetterBox(source batuta.Queue) batuta.DeadLetterBox {
	return &deadBox{q: h.q, source: source}
}

// DeadLetterBox returns the batuta.DeadLetterBox of the queue's dead-letter
// queue (Config.DeadLetterQueue), whose redrives publish back to q: for a
// dashboard (dashboard.Config.DeadLetters) or a tool with no queue
// trigger. A queue trigger whose DeadLetter is q.DeadLetters() has the
// same box (with redrives to the trigger's queue) through
// batuta.Orchestrator.DeadLetterBoxes.
//
// RabbitMQ queues cannot be read without taking their messages, so each
// call of the box takes the dead-letter queue's messages (up to
// Config.DeadLetterScanMax, oldest first) on a channel of its own, works
// on them, and gives back the others by closing the channel: one pass
// per call, one call at a time per Queue. While a call holds them, the
// messages are invisible to other processes: a redrive or delete from
// another process at that moment finds nothing and says so (0); run it
// again. The dead letters' IDs are "<Unix ms>-<16 hex digits>": stamped by
// DeadLetters when it dead-letters a message, derived from the message
// and its x-death history for those the broker dead-lettered itself
// (Config.DeliveryLimit, a policy), so they stay the same across calls.
// A dead letter the broker dead-lettered is listed with the reason
// max_deliveries (delivery limit), max_age (TTL) or failed (rejected,
// queue length), its error naming the broker's reason and source queue.
func (q *Queue) DeadLetterBox() batuta.DeadLetterBox { return &deadBox{q: q, source: q} }

// deadBox is a batuta.DeadLetterBox on a Queue's dead-letter queue.
type deadBox struct {
	q      *Queue
	source batuta.Queue
}

// heldLetter is a message of the dead-letter queue held by a scan.
type heldLetter struct {
	d    amqp.Delivery
	id   string
	item batuta.DeadLetterItem
}

// DeadLetterSource implements batuta.DeadLetterBox.
func (b *deadBox) DeadLetterSource() string {
	return "RabbitMQ queue " + b.q.cfg.DeadLetterQueue + " (dead letters of " + b.q.cfg.Queue + ")"
}

// DeadLetters implements batuta.DeadLetterBox.
func (b *deadBox) DeadLetters(ctx context.Context, dq batuta.DeadLetterQuery) ([]batuta.DeadLetterItem, error) {
	if dq.After != "" {
		if err := checkDeadIDs(dq.After); err != nil {
			return nil, err
		}
	}
	var out []batuta.DeadLetterItem
	err := b.scan(ctx, func(_ *amqp.Channel, held []heldLetter) error {
		for _, h := range held {
			if h.id > dq.After && (len(out) == 0 || out[len(out)-1].ID != h.id) {
				out = append(out, h.item)
				if len(out) == dq.PageLimit() {
					break
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Redrive implements batuta.DeadLetterBox: each dead letter is published
// to the source queue (batuta.RedriveMessage) and then acked in the
// dead-letter queue; a crash between the two leaves it in both, and the
// orchestrator runs its event ID once. Copies of one dead letter (the
// broker dead-letters at least once) are redriven once and all removed.
func (b *deadBox) Redrive(ctx context.Context, ids ...string) (int, error) {
	return b.settle(ctx, "redrive", ids, func(ctx context.Context, h heldLetter) error {
		msg := fromDelivery(&h.d)
		if err := b.source.Publish(ctx, batuta.RedriveMessage(msg, h.id)); err != nil {
			return fmt.Errorf("publishing %q to the source queue: %w", msg.ID, err)
		}
		return nil
	})
}

var _ batuta.DeadLetterCounter = (*deadBox)(nil)

// CountDeadLetters implements batuta.DeadLetterCounter with a passive
// declaration of the dead-letter queue: its ready messages (not those a
// box call or a consumer holds at that moment), without taking them.
// batutaprom's batuta_dead_letters uses it instead of paging through the
// box.
func (b *deadBox) CountDeadLetters(ctx context.Context) (int, error) {
	q := b.q
	s, err := q.session(ctx, true)
	if err != nil {
		return 0, fmt.Errorf("batutaamqp: count dead letters of %q: %w", q.cfg.Queue, err)
	}
	ch, err := s.conn.Channel()
	if err != nil {
		return 0, fmt.Errorf("batutaamqp: count dead letters of %q: open channel: %w", q.cfg.Queue, err)
	}
	defer func() { _ = ch.Close() }()
	qi, err := ch.QueueDeclarePassive(q.cfg.DeadLetterQueue, true, false, false, false, nil)
	if err != nil {
		return 0, q.cfg.declareError("count dead letters: check queue", q.cfg.DeadLetterQueue, err)
	}
	return qi.Messages, nil
}

// Delete implements batuta.DeadLetterBox.
func (b *deadBox) Delete(ctx context.Context, ids ...string) (int, error) {
	return b.settle(ctx, "delete", ids, nil)
}

// settle runs do (if not nil) on the held dead letters named by ids, then
// acks them, and returns how many distinct IDs it settled.
func (b *deadBox) settle(ctx context.Context, op string, ids []string, do func(context.Context, heldLetter) error) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	if err := checkDeadIDs(ids...); err != nil {
		return 0, err
	}
	n := 0
	err := b.scan(ctx, func(ch *amqp.Channel, held []heldLetter) error {
		done := map[string]bool{}
		for _, h := range held {
			if !slices.Contains(ids, h.id) {
				continue
			}
			if do != nil && !done[h.id] {
				if err := do(ctx, h); err != nil {
					return fmt.Errorf("batutaamqp: %s dead letter %s: %w", op, h.id, err)
				}
			}
			if err := ch.Ack(h.d.DeliveryTag, false); err != nil {
				return fmt.Errorf("batutaamqp: %s dead letter %s: ack it in %q: %w", op, h.id, b.q.cfg.DeadLetterQueue, err)
			}
			if !done[h.id] {
				done[h.id] = true
				n++
			}
		}
		return nil
	})
	return n, err
}

// scan takes the messages of the dead-letter queue (up to
// Config.DeadLetterScanMax) on a channel of its own, calls fn with them
// sorted by ID, and closes the channel, which gives back those fn did not
// ack. Scans of one Queue run one at a time.
func (b *deadBox) scan(ctx context.Context, fn func(*amqp.Channel, []heldLetter) error) error {
	q := b.q
	select {
	case q.deadScan <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("batutaamqp: dead letters of %q: %w", q.cfg.Queue, ctx.Err())
	}
	defer func() { <-q.deadScan }()
	s, err := q.session(ctx, true)
	if err != nil {
		return fmt.Errorf("batutaamqp: dead letters of %q: %w", q.cfg.Queue, err)
	}
	ch, err := s.conn.Channel()
	if err != nil {
		return fmt.Errorf("batutaamqp: dead letters of %q: open channel: %w", q.cfg.Queue, err)
	}
	// Closing the channel gives back every message not acked.
	defer func() { _ = ch.Close() }()
	var held []heldLetter
	for len(held) < q.cfg.DeadLetterScanMax {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("batutaamqp: dead letters of %q: %w", q.cfg.Queue, err)
		}
		d, ok, err := ch.Get(q.cfg.DeadLetterQueue, false)
		if err != nil {
			var ae *amqp.Error
			if errors.As(err, &ae) && ae.Code == amqp.NotFound {
				return fmt.Errorf("batutaamqp: dead-letter queue %q: %w: %w", q.cfg.DeadLetterQueue, ErrQueueNotFound, err)
			}
			return fmt.Errorf("batutaamqp: read dead-letter queue %q: %w", q.cfg.DeadLetterQueue, err)
		}
		if !ok {
			break
		}
		if n, _ := intHeader(d.Headers["x-delivery-count"]); n >= refreshAt {
			// The fresh copy goes to the tail: this loop takes it later.
			if err := q.refreshDeadLetter(ctx, ch, d); err != nil {
				return err
			}
			continue
		}
		held = append(held, q.heldLetter(d))
	}
	slices.SortStableFunc(held, func(a, b heldLetter) int {
		switch {
		case a.id < b.id:
			return -1
		case a.id > b.id:
			return 1
		}
		return 0
	})
	return fn(ch, held)
}

// refreshDeadLetter replaces d in the dead-letter queue by a copy whose
// delivery count starts again (published, confirmed, then d acked), with
// its ID and, for a letter the broker dead-lettered, its reason written
// into headers (the copy has no x-death).
func (q *Queue) refreshDeadLetter(ctx context.Context, ch *amqp.Channel, d amqp.Delivery) error {
	h := q.heldLetter(d)
	p := republishing(&d, 1)
	p.Headers[headerDeadID] = h.id
	if _, ok := d.Headers[batuta.HeaderDeadLetterReason]; !ok {
		p.Headers[batuta.HeaderDeadLetterReason] = string(h.item.Reason)
		p.Headers[batuta.HeaderDeadLetterError] = h.item.Error
		p.Headers[batuta.HeaderDeadLetterAttempts] = strconv.Itoa(h.item.Attempts)
	}
	if err := q.publish(ctx, true, "", q.cfg.DeadLetterQueue, p); err != nil {
		return fmt.Errorf("batutaamqp: refresh dead letter %s in %q: %w", h.id, q.cfg.DeadLetterQueue, err)
	}
	if err := ch.Ack(d.DeliveryTag, false); err != nil {
		return fmt.Errorf("batutaamqp: refresh dead letter %s in %q: ack the old copy: %w", h.id, q.cfg.DeadLetterQueue, err)
	}
	return nil
}

// heldLetter describes a message of the dead-letter queue: its ID and the
// dead letter it holds.
func (q *Queue) heldLetter(d amqp.Delivery) heldLetter {
	id := stringHeader(d.Headers[headerDeadID])
	reason, from, deadAt := brokerDeath(d.Headers)
	if !deadIDPattern.MatchString(id) {
		// Dead-lettered by the broker (or by an older adapter): an ID
		// derived from what stays the same while it waits here.
		t := deadAt
		if t.IsZero() {
			t = d.Timestamp
		}
		sum := sha256.New()
		sum.Write(binary.AppendUvarint(nil, uint64(len(d.MessageId))))
		sum.Write([]byte(d.MessageId))
		sum.Write([]byte(contentID(&d, nil)))
		sum.Write([]byte(t.UTC().Format(time.RFC3339Nano)))
		id = formatDeadID(t, sum.Sum(nil))
	}
	stampID(&q.cfg, &d)
	dl := batuta.ParseDeadLetterMessage(fromDelivery(&d))
	if dl.Reason == "" && reason != "" {
		dl.Reason, dl.Error = brokerReason(reason), "dead-lettered by RabbitMQ from queue "+from+": "+reason
		if dl.Reason == batuta.DeadLetterMaxDeliveries && q.cfg.DeliveryLimit > 0 {
			dl.Attempts = q.cfg.DeliveryLimit + 1
		}
	}
	if dl.Time.IsZero() {
		dl.Time = time.UnixMilli(idMillis(id))
	}
	if dl.Attempts == 0 {
		if n, ok := intHeader(d.Headers[headerAttempt]); ok {
			dl.Attempts = n
		}
	}
	return heldLetter{d: d, id: id, item: batuta.DeadLetterItem{ID: id, DeadLetter: dl}}
}

// idMillis is the time part of a dead-letter ID.
func idMillis(id string) int64 {
	n, _ := strconv.ParseInt(id[:13], 10, 64)
	return n
}

// brokerDeath reads the broker's dead-lettering history of a message: the
// reason and queue of its latest death, and when.
func brokerDeath(h amqp.Table) (reason, queue string, at time.Time) {
	deaths, _ := h["x-death"].([]any)
	for _, e := range deaths {
		t, ok := e.(amqp.Table)
		if !ok {
			continue
		}
		when, _ := t["time"].(time.Time)
		if reason == "" || when.After(at) {
			reason, queue, at = stringHeader(t["reason"]), stringHeader(t["queue"]), when
		}
	}
	return reason, queue, at
}

// brokerReason maps a RabbitMQ dead-lettering reason to a batuta one.
func brokerReason(r string) batuta.DeadLetterReason {
	switch r {
	case "delivery_limit":
		return batuta.DeadLetterMaxDeliveries
	case "expired":
		return batuta.DeadLetterMaxAge
	}
	return batuta.DeadLetterFailed
}
