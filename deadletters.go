package batuta

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
)

// Dead letters are the events a trigger gave up on (a queue message past
// its deliveries, an outbox row that can never be an event). A
// DeadLetterBox lets an operator see them with their reason, send them back
// to their source (redrive) or drop them: the dashboard and the CLI work
// through it, for every trigger bound to an orchestrator that has one
// (Orchestrator.DeadLetterBoxes). docs/operations.md lists which triggers
// have one.

// ErrBadDeadLetterID reports an ID given to a DeadLetterBox that is not of
// the form that box uses (an ID that is well formed but unknown is
// not an error: it was redriven or deleted already).
var ErrBadDeadLetterID = errors.New("batuta: malformed dead letter ID")

// DeadLetterQuery selects a page of a DeadLetterBox.
type DeadLetterQuery struct {
	// After is a cursor: only the dead letters after this ID in the box's
	// order (oldest first); pass the last ID of the previous page.
	After string
	// Limit caps the page (0: DefaultDeadLetterLimit; at most
	// MaxDeadLetterLimit).
	Limit int
}

// Page sizes of DeadLetterBox.DeadLetters.
const (
	DefaultDeadLetterLimit = 100
	MaxDeadLetterLimit     = 1000
)

// PageLimit returns q.Limit bounded to (0, MaxDeadLetterLimit], 0 meaning
// DefaultDeadLetterLimit: what a box answers at most.
func (q DeadLetterQuery) PageLimit() int {
	if q.Limit <= 0 {
		return DefaultDeadLetterLimit
	}
	return min(q.Limit, MaxDeadLetterLimit)
}

// A DeadLetterItem is one dead letter kept in a box.
type DeadLetterItem struct {
	// ID identifies the dead letter within its box (an outbox row id, a
	// queue position); it orders the box's listing.
	ID string `json:"id"`
	DeadLetter
}

// A DeadLetterBox is where a trigger keeps what it gave up on, browsable
// and redrivable. Each operation is idempotent: redriving or deleting an
// ID that is no longer there does nothing and is not an error (the count
// says what was done). Implementations are safe for concurrent use.
type DeadLetterBox interface {
	// DeadLetterSource describes the box for people ("postgres outbox
	// public.batuta_outbox", "queue orders-dlq").
	DeadLetterSource() string
	// DeadLetters lists a page of dead letters, oldest first.
	DeadLetters(ctx context.Context, q DeadLetterQuery) ([]DeadLetterItem, error)
	// Redrive sends the dead letters ids back to their source, to be
	// consumed again as new (with a fresh delivery count), and removes
	// them from the box. It returns how many it redrove.
	Redrive(ctx context.Context, ids ...string) (int, error)
	// Delete removes the dead letters ids for good and returns how many
	// it removed.
	Delete(ctx context.Context, ids ...string) (int, error)
}

// A DeadLetterCounter is a DeadLetterBox that can count its dead letters
// without listing them (a broker's message count): metrics use it instead
// of paging through the box.
type DeadLetterCounter interface {
	CountDeadLetters(ctx context.Context) (int, error)
}

// A DeadLetterBoxer is a trigger that may have a DeadLetterBox, depending
// on its configuration (a QueueTrigger has one when its dead letters go to
// a BrowsableQueue).
type DeadLetterBoxer interface {
	DeadLetterBox() (DeadLetterBox, bool)
}

// BoundDeadLetterBox is the DeadLetterBox of a trigger bound to a
// workflow.
type BoundDeadLetterBox struct {
	// Workflow is the workflow the trigger is bound to.
	Workflow string
	DeadLetterBox
}

// DeadLetterBoxes returns the dead-letter boxes of the triggers bound to o
// (those implementing DeadLetterBox, or DeadLetterBoxer with a box), in
// the order they were bound, then those of the registered workflows whose
// Workflow.DeadLetter is a DeadLetterQueue over a BrowsableQueue, by
// workflow name. A trigger bound to several workflows is listed once,
// with the first.
//
// A workflow's box holds failed runs: its Redrive retries each dead
// letter's run (Orchestrator.Retry: from its failed tasks, keeping the
// outputs of the others) and then removes the dead letter; a dead letter
// whose run is no longer failed or canceled (retried already) is removed
// and not counted.
func (o *Orchestrator) DeadLetterBoxes() []BoundDeadLetterBox {
	o.mu.RLock()
	defer o.mu.RUnlock()
	var out []BoundDeadLetterBox
	seen := map[DeadLetterBox]bool{}
	for _, b := range o.bindings {
		var box DeadLetterBox
		switch t := b.trigger.(type) {
		case DeadLetterBox:
			box = t
		case DeadLetterBoxer:
			if bx, ok := t.DeadLetterBox(); ok {
				box = bx
			}
		}
		if box != nil && !seen[box] {
			seen[box] = true
			out = append(out, BoundDeadLetterBox{Workflow: b.workflow, DeadLetterBox: box})
		}
	}
	for _, name := range o.wfNames {
		cw := o.workflows[name]
		if dq, ok := cw.deadLetter.(*deadLetterQueue); ok {
			if bq, ok := dq.q.(BrowsableQueue); ok {
				out = append(out, BoundDeadLetterBox{Workflow: name, DeadLetterBox: &runDeadLetters{o: o, workflow: name, dlq: bq}})
			}
		}
	}
	return out
}

// runDeadLetters is the box of a Workflow.DeadLetter queue: failed runs.
type runDeadLetters struct {
	o        *Orchestrator
	workflow string
	dlq      BrowsableQueue
}

func (b *runDeadLetters) DeadLetterSource() string {
	return "failed runs of workflow " + b.workflow + " (Workflow.DeadLetter queue)"
}

func (b *runDeadLetters) DeadLetters(ctx context.Context, q DeadLetterQuery) ([]DeadLetterItem, error) {
	return (&queueDeadLetters{dlq: b.dlq}).DeadLetters(ctx, q)
}

// Redrive retries the dead letters' runs and removes them.
func (b *runDeadLetters) Redrive(ctx context.Context, ids ...string) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	ms, err := b.dlq.Lookup(ctx, ids...)
	if err != nil {
		return 0, fmt.Errorf("batuta: redrive: %w", err)
	}
	n := 0
	for _, m := range ms {
		dl := ParseDeadLetterMessage(m.Message)
		if dl.RunID == "" {
			return n, fmt.Errorf("batuta: redrive %s: the dead letter names no run (not handed over by Workflow.DeadLetter?): delete it instead", m.Key)
		}
		retried := true
		if err := b.o.Retry(ctx, dl.RunID); err != nil {
			if !errors.Is(err, ErrNotRetryable) {
				return n, fmt.Errorf("batuta: redrive %s: %w", m.Key, err)
			}
			retried = false // retried already: the dead letter is stale
		}
		if _, err := b.dlq.Remove(ctx, m.Key); err != nil {
			return n, fmt.Errorf("batuta: redrive %s: removing it from the dead-letter queue (its run was retried): %w", m.Key, err)
		}
		if retried {
			n++ // counted by who retried the run, whoever removed the letter
		}
	}
	return n, nil
}

func (b *runDeadLetters) Delete(ctx context.Context, ids ...string) (int, error) {
	return (&queueDeadLetters{dlq: b.dlq}).Delete(ctx, ids...)
}

// A QueuedMessage is a message as a BrowsableQueue lists it.
type QueuedMessage struct {
	// Key is the message's position in the queue (a sequence number, a
	// stream entry ID): ordered, unique within the queue.
	Key string
	Message
}

// A BrowsableQueue is a Queue whose messages can be read and removed
// without receiving them: a dead-letter queue an operator looks into.
type BrowsableQueue interface {
	Queue
	// Browse lists up to limit messages after the key after ("": from the
	// start), in queue order, whether ready, delayed or in flight.
	Browse(ctx context.Context, after string, limit int) ([]QueuedMessage, error)
	// Lookup returns the messages with these keys that are still there.
	Lookup(ctx context.Context, keys ...string) ([]QueuedMessage, error)
	// Remove deletes the messages with these keys and returns how many
	// were there (a consumer holding one fails its settlement with
	// ErrLeaseLost).
	Remove(ctx context.Context, keys ...string) (int, error)
}

// deadLetterQueue is the handler DeadLetterQueue returns: it remembers q
// so that a QueueTrigger can browse it.
type deadLetterQueue struct {
	DeadLetterFunc
	q Queue
}

// DeadLetterBox returns t's box: the dead letters t handed to a
// DeadLetterQueue whose queue is a BrowsableQueue (the memory queue, the
// Redis Streams queue). Redrive publishes a message back to t's source
// queue (QueueTriggerConfig.Queue) with its ID, body, time and headers,
// without the batuta-dead-letter-* headers, then removes it from the
// dead-letter queue; a crash between the two leaves it in both, and the
// orchestrator deduplicates the second consumption by the message ID.
//
// A trigger whose DeadLetter is a DeadLetterKeeper (the RabbitMQ adapter's
// dead-letter queue) has the box the keeper returns for t's source queue.
func (t *QueueTrigger) DeadLetterBox() (DeadLetterBox, bool) {
	if k, ok := t.cfg.DeadLetter.(DeadLetterKeeper); ok {
		return k.DeadLetterBox(t.cfg.Queue), true
	}
	dq, ok := t.cfg.DeadLetter.(*deadLetterQueue)
	if !ok {
		return nil, false
	}
	bq, ok := dq.q.(BrowsableQueue)
	if !ok {
		return nil, false
	}
	return &queueDeadLetters{t: t, dlq: bq}, true
}

// A DeadLetterKeeper is a DeadLetterHandler that keeps what it is handed
// where it can be browsed, but not as a BrowsableQueue: a broker queue
// that can only be read by taking its messages (RabbitMQ), whose box
// works on it in one pass per call. A QueueTrigger whose DeadLetter is a
// DeadLetterKeeper has a DeadLetterBox: the one DeadLetterBox(source)
// returns, source being the trigger's queue (QueueTriggerConfig.Queue),
// where a redrive publishes dead letters again (as RedriveMessage makes
// them).
type DeadLetterKeeper interface {
	DeadLetterHandler
	DeadLetterBox(source Queue) DeadLetterBox
}

type queueDeadLetters struct {
	t   *QueueTrigger
	dlq BrowsableQueue
}

func (b *queueDeadLetters) DeadLetterSource() string {
	if b.t.cfg.Source != "" {
		return "dead letters of queue " + b.t.cfg.Source
	}
	return "dead-letter queue"
}

func (b *queueDeadLetters) DeadLetters(ctx context.Context, q DeadLetterQuery) ([]DeadLetterItem, error) {
	ms, err := b.dlq.Browse(ctx, q.After, q.PageLimit())
	if err != nil {
		return nil, fmt.Errorf("batuta: listing dead letters: %w", err)
	}
	out := make([]DeadLetterItem, len(ms))
	for i, m := range ms {
		out[i] = DeadLetterItem{ID: m.Key, DeadLetter: ParseDeadLetterMessage(m.Message)}
	}
	return out, nil
}

func (b *queueDeadLetters) Redrive(ctx context.Context, ids ...string) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	ms, err := b.dlq.Lookup(ctx, ids...)
	if err != nil {
		return 0, fmt.Errorf("batuta: redrive: %w", err)
	}
	n := 0
	for _, m := range ms {
		if err := b.t.cfg.Queue.Publish(ctx, RedriveMessage(m.Message, m.Key)); err != nil {
			return n, fmt.Errorf("batuta: redrive %s: publishing to the source queue: %w", m.Key, err)
		}
		k, err := b.dlq.Remove(ctx, m.Key)
		if err != nil {
			return n, fmt.Errorf("batuta: redrive %s: removing it from the dead-letter queue (it was published again): %w", m.Key, err)
		}
		n += k
	}
	return n, nil
}

func (b *queueDeadLetters) Delete(ctx context.Context, ids ...string) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	n, err := b.dlq.Remove(ctx, ids...)
	if err != nil {
		return n, fmt.Errorf("batuta: deleting dead letters: %w", err)
	}
	return n, nil
}

// ParseDeadLetterMessage is the inverse of DeadLetterMessage: the dead
// letter a message of a dead-letter queue holds (Time is left zero: the
// message does not record when it was dead-lettered).
func ParseDeadLetterMessage(m Message) DeadLetter {
	h := m.Headers
	attempts, _ := strconv.Atoi(h[HeaderDeadLetterAttempts])
	return DeadLetter{
		Event: Event{
			ID: m.ID, Source: h[HeaderDeadLetterSource], Type: h[HeaderDeadLetterType], Subject: h[HeaderDeadLetterSubject],
			Time: m.Time, Data: m.Body, Metadata: plainHeaders(h),
		},
		Reason:   DeadLetterReason(h[HeaderDeadLetterReason]),
		Error:    h[HeaderDeadLetterError],
		Attempts: attempts,
		Workflow: h[HeaderDeadLetterWorkflow],
		RunID:    h[HeaderDeadLetterRun],
	}
}

// deadLetterHeaderPrefix starts every header DeadLetterMessage adds.
const deadLetterHeaderPrefix = "batuta-dead-letter-"

// plainHeaders returns h without the dead-letter headers (nil if none is
// left).
func plainHeaders(h map[string]string) map[string]string {
	out := maps.Clone(h)
	for k := range out {
		if strings.HasPrefix(k, deadLetterHeaderPrefix) {
			delete(out, k)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// HeaderRedriven is set on a message a redrive publishes: the ID the dead
// letter had in its box. A queue that deduplicates publishes by message ID
// (JetStream within its duplicate window) must deduplicate a message
// carrying it by the ID and this header instead: otherwise it would take
// the redrive for a copy of the original and drop it, while the dead
// letter leaves its box. It stays in the redriven event's metadata, where
// it tells a run that came from a redrive.
const HeaderRedriven = "batuta-redriven"

// RedriveMessage is the message a redrive publishes for a message of a
// dead-letter queue (one DeadLetterMessage made) whose ID in its box is
// id: the original, with its ID, body, time and headers, without the
// batuta-dead-letter-* headers, with HeaderRedriven set to id.
func RedriveMessage(m Message, id string) Message {
	h := plainHeaders(m.Headers)
	if h == nil {
		h = map[string]string{}
	}
	h[HeaderRedriven] = id
	return Message{ID: m.ID, Body: m.Body, Time: m.Time, Headers: h}
}
