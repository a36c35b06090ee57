package batutaamqp

import (
	"context"
	"fmt"
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
// source, type, subject) as headers: batuta.DeadLetterMessage, whose error
// header is cut to batuta.MaxDeadLetterErrorBytes so the headers fit in
// one AMQP frame. The body is kept whole: it goes to the broker that
// accepted it (max_message_size, 128 MiB by default on RabbitMQ 3.x,
// 16 MiB on 4.x). If the broker still refuses it, the queue trigger
// retries the hand-off and then parks the message (see
// batuta.QueueTriggerConfig.ParkDelay), and a quorum queue's
// DeliveryLimit dead-letters it through the broker. It goes through the dead-letter
// exchange with the queue's name as routing key, or, when Config.Passive
// (the adapter declared no exchange), through the default exchange
// straight to Config.DeadLetterQueue. It works until Close; it keeps working
// during Shutdown, so the trigger can still dead-letter while it drains.
//
// The handler is a batuta.DeadLetterKeeper: a queue trigger given it has
// a batuta.DeadLetterBox on the dead-letter queue (see Queue.DeadLetterBox),
// so the dashboard and batuta.Orchestrator.DeadLetterBoxes list, redrive
// and delete its dead letters, those the broker dead-lettered included.
func (q *Queue) DeadLetters() batuta.DeadLetterHandler {
	return deadLetters{q: q}
}

func (q *Queue) handleDeadLetter(ctx context.Context, dl batuta.DeadLetter) error {
	// The batuta-dead-letter-* headers, the error cut to
	// batuta.MaxDeadLetterErrorBytes: the content header of a publishing
	// must fit in one frame (frame_max, 128 KiB by default), and an error
	// string can echo a whole payload.
	msg := batuta.DeadLetterMessage(dl)
	for k := range msg.Headers {
		if checkHeaders(map[string]string{k: ""}) != nil {
			delete(msg.Headers, k)
		}
	}
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
	p.Headers[headerDeadID] = newDeadID(time.Now())
	exchange, key := q.cfg.DeadLetterExchange, q.cfg.Queue
	if q.cfg.Passive {
		exchange, key = "", q.cfg.DeadLetterQueue
	}
	if err := q.publish(ctx, true, exchange, key, p); err != nil {
		return fmt.Errorf("batutaamqp: dead letter %q: %w", msg.ID, err)
	}
	return nil
}
