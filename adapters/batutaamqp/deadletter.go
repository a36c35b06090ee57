package batutaamqp

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/batuta-dev/batuta"
)

// DeadLetters returns the batuta.DeadLetterHandler that keeps dead letters
// in the queue's dead-letter queue, next to the messages the broker
// dead-letters by itself (Config.DeliveryLimit). Give it to the queue
// trigger:
//
//	batuta.QueueTriggerConfig{Queue: q, DeadLetter: q.DeadLetters()}
//
// Each dead letter is published, persistent and confirmed, with the event
// ID as message ID, the event data as body, and the event metadata plus the
// batuta-dead-letter-* headers (reason, error, attempts, workflow, run,
// source, type, subject) as headers. It goes through the dead-letter
// exchange with the queue's name as routing key, or, when Config.Passive
// (the adapter declared no exchange), through the default exchange
// straight to Config.DeadLetterQueue. It works until Close; it keeps working
// during Shutdown, so the trigger can still dead-letter while it drains.
func (q *Queue) DeadLetters() batuta.DeadLetterHandler {
	return batuta.DeadLetterFunc(q.handleDeadLetter)
}

func (q *Queue) handleDeadLetter(ctx context.Context, dl batuta.DeadLetter) error {
	h := maps.Clone(dl.Event.Metadata)
	if h == nil {
		h = make(map[string]string, 8)
	}
	for k := range h {
		if checkHeaders(map[string]string{k: ""}) != nil {
			delete(h, k)
		}
	}
	set := func(k, v string) {
		if v != "" {
			h[k] = v
		}
	}
	set(batuta.HeaderDeadLetterReason, string(dl.Reason))
	set(batuta.HeaderDeadLetterError, dl.Error)
	set(batuta.HeaderDeadLetterAttempts, strconv.Itoa(dl.Attempts))
	set(batuta.HeaderDeadLetterWorkflow, dl.Workflow)
	set(batuta.HeaderDeadLetterRun, dl.RunID)
	set(batuta.HeaderDeadLetterSource, dl.Event.Source)
	set(batuta.HeaderDeadLetterType, dl.Event.Type)
	set(batuta.HeaderDeadLetterSubject, dl.Event.Subject)
	msg := batuta.Message{ID: dl.Event.ID, Body: dl.Event.Data, Headers: h, Time: dl.Event.Time}
	if msg.ID == "" {
		msg.ID = newMessageID()
	}
	if msg.Time.IsZero() {
		msg.Time = time.Now()
	}
	// A dead letter starts a new life in the dead-letter queue (attempt
	// 1 for whoever consumes it); the spent deliveries are in a header.
	p := toPublishing(msg, 1)
	p.Headers[headerDeadReason] = string(dl.Reason)
	exchange, key := q.cfg.DeadLetterExchange, q.cfg.Queue
	if q.cfg.Passive {
		exchange, key = "", q.cfg.DeadLetterQueue
	}
	if err := q.publish(ctx, true, exchange, key, p); err != nil {
		return fmt.Errorf("batutaamqp: dead letter %q: %w", msg.ID, err)
	}
	return nil
}
