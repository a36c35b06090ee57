package batutaamqp

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

// TestDeadLetterBoxConformance runs the shared dead-letter box suite over
// the queue's own dead-letter queue (Queue.DeadLetters), once per queue
// type, against the real broker.
func TestDeadLetterBoxConformance(t *testing.T) {
	admin := adminConn(t)
	for _, queueType := range []string{QueueTypeQuorum, QueueTypeClassic} {
		t.Run(queueType, func(t *testing.T) {
			batutatest.TestQueueDeadLetterBox(t, batutatest.DeadLetterBoxSuite{
				New: func(t *testing.T) (batuta.Queue, batuta.DeadLetterHandler) {
					cfg := testConfig(t, admin)
					cfg.QueueType = queueType
					q := openQueue(t, brokerURL(), cfg)
					return q, q.DeadLetters()
				},
				BadID: "not-an-id",
			})
		})
	}
}

// rejectOne takes one message of the queue name on the admin connection
// and rejects it without requeue: the broker dead-letters it.
func rejectOne(t *testing.T, admin *amqp.Connection, name string) {
	t.Helper()
	ch, err := admin.Channel()
	require.NoError(t, err)
	defer func() { _ = ch.Close() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, ok, err := ch.Get(name, false)
		require.NoError(t, err)
		if ok {
			require.NoError(t, d.Reject(false))
			return
		}
		require.True(t, time.Now().Before(deadline), "no message in %s", name)
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDeadLetterBoxBrokerDeadLetters: a message the broker dead-letters
// by itself (here rejected without requeue; the delivery limit goes the
// same way) is listed with the broker's reason and a stable ID, survives
// many listings (each a return to the queue that RabbitMQ may count as a
// delivery: the box refreshes the message before a delivery limit could
// drop it) and is redriven to the queue.
func TestDeadLetterBoxBrokerDeadLetters(t *testing.T) {
	old := refreshAt
	refreshAt = 2
	t.Cleanup(func() { refreshAt = old })
	admin := adminConn(t)
	for _, queueType := range []string{QueueTypeQuorum, QueueTypeClassic} {
		t.Run(queueType, func(t *testing.T) {
			cfg := testConfig(t, admin)
			cfg.QueueType = queueType
			q := openQueue(t, brokerURL(), cfg)
			box := q.DeadLetterBox()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			require.NoError(t, q.Publish(ctx, batuta.Message{ID: "rej", Body: []byte(`{"n":1}`), Headers: map[string]string{"k": "v"}}))
			rejectOne(t, admin, cfg.Queue)

			var first []batuta.DeadLetterItem
			require.Eventually(t, func() bool {
				var err error
				first, err = box.DeadLetters(ctx, batuta.DeadLetterQuery{})
				require.NoError(t, err)
				return len(first) == 1
			}, 10*time.Second, 5*time.Millisecond)
			it := first[0]
			require.Equal(t, "rej", it.Event.ID)
			require.Equal(t, batuta.DeadLetterFailed, it.Reason)
			require.Contains(t, it.Error, "rejected")
			require.Contains(t, it.Error, cfg.Queue)
			require.Equal(t, map[string]string{"k": "v"}, it.Event.Metadata)
			require.False(t, it.Time.IsZero())
			for range 6 {
				again, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{})
				require.NoError(t, err)
				require.Len(t, again, 1, "listing takes and gives back, and never loses or doubles a message")
				require.Equal(t, it.ID, again[0].ID, "the ID stays the same")
				require.Equal(t, it.Reason, again[0].Reason)
				require.Equal(t, it.Error, again[0].Error)
			}
			if queueType == QueueTypeQuorum {
				// Six listings returned it six times: it was replaced by a
				// fresh copy carrying its ID and reason, without x-death.
				ch, err := admin.Channel()
				require.NoError(t, err)
				d, ok, err := ch.Get(q.cfg.DeadLetterQueue, false)
				require.NoError(t, err)
				require.True(t, ok)
				require.Equal(t, it.ID, d.Headers[headerDeadID])
				require.Equal(t, string(batuta.DeadLetterFailed), d.Headers[batuta.HeaderDeadLetterReason])
				require.NotContains(t, d.Headers, "x-death")
				require.NoError(t, ch.Close())
			}

			n, err := box.Redrive(ctx, it.ID)
			require.NoError(t, err)
			require.Equal(t, 1, n)
			got := receiveN(t, ctx, q, 1)[0]
			require.Equal(t, "rej", got.ID)
			require.Equal(t, it.ID, got.Headers[batuta.HeaderRedriven])
			require.Equal(t, "v", got.Headers["k"])
			require.NoError(t, q.Ack(ctx, got))
			left, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{})
			require.NoError(t, err)
			require.Empty(t, left)
		})
	}
}

// TestDeadLetterBoxScanMaxAndMissingQueue: the box takes at most
// Config.DeadLetterScanMax messages per call, and a missing dead-letter
// queue (Passive) is reported as ErrQueueNotFound.
func TestDeadLetterBoxScanMaxAndMissingQueue(t *testing.T) {
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	cfg.DeadLetterScanMax = 2
	q := openQueue(t, brokerURL(), cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, id := range []string{"d1", "d2", "d3"} {
		require.NoError(t, q.DeadLetters().HandleDeadLetter(ctx, batuta.DeadLetter{Event: batuta.Event{ID: id}, Reason: batuta.DeadLetterFailed, Error: "x"}))
	}
	n0, err := q.DeadLetterBox().(batuta.DeadLetterCounter).CountDeadLetters(ctx)
	require.NoError(t, err)
	require.Equal(t, 3, n0, "counted past DeadLetterScanMax, without taking them")
	items, err := q.DeadLetterBox().DeadLetters(ctx, batuta.DeadLetterQuery{})
	require.NoError(t, err)
	require.Len(t, items, 2)
	require.Equal(t, "d1", items[0].Event.ID)
	require.Equal(t, "d2", items[1].Event.ID)
	n, err := q.DeadLetterBox().Delete(ctx, items[0].ID, items[1].ID)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	items, err = q.DeadLetterBox().DeadLetters(ctx, batuta.DeadLetterQuery{})
	require.NoError(t, err)
	require.Len(t, items, 1)
	require.Equal(t, "d3", items[0].Event.ID)

	p := openQueue(t, brokerURL(), Config{Queue: cfg.Queue, Passive: true, DeadLetterQueue: uniqueName() + ".missing", Logger: quietLogger()})
	_, err = p.DeadLetterBox().DeadLetters(ctx, batuta.DeadLetterQuery{})
	require.True(t, errors.Is(err, ErrQueueNotFound), "%v", err)
	// The queue keeps working after the refused read.
	_, err = p.DeadLetterBox().DeadLetters(ctx, batuta.DeadLetterQuery{})
	require.ErrorIs(t, err, ErrQueueNotFound)
}

// TestDeadLetterBoxThroughOrchestrator: a queue trigger with
// q.DeadLetters() bound to an orchestrator lists its box in
// Orchestrator.DeadLetterBoxes, which the dashboard and batutaprom read.
func TestDeadLetterBoxThroughOrchestrator(t *testing.T) {
	admin := adminConn(t)
	q := openQueue(t, brokerURL(), testConfig(t, admin))
	o, err := batuta.New(batuta.Config{Logger: quietLogger()})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "orders", Tasks: []batuta.Task{{Name: "t", Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil }}}}))
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, DeadLetter: q.DeadLetters()})
	require.NoError(t, err)
	require.NoError(t, o.Bind("orders", trig))
	boxes := o.DeadLetterBoxes()
	require.Len(t, boxes, 1)
	require.Equal(t, "orders", boxes[0].Workflow)
	require.Contains(t, boxes[0].DeadLetterSource(), q.cfg.DeadLetterQueue)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	require.NoError(t, q.DeadLetters().HandleDeadLetter(ctx, batuta.DeadLetter{Event: batuta.Event{ID: "e1"}, Reason: batuta.DeadLetterPermanent, Error: "bad", Attempts: 2, Workflow: "orders"}))
	items, err := boxes[0].DeadLetters(ctx, batuta.DeadLetterQuery{})
	require.NoError(t, err)
	require.Len(t, items, 1)
	require.Equal(t, "e1", items[0].Event.ID)
	require.Equal(t, batuta.DeadLetterPermanent, items[0].Reason)
	require.Equal(t, 2, items[0].Attempts)
	require.Equal(t, "orders", items[0].Workflow)
	require.WithinDuration(t, time.Now(), items[0].Time, time.Minute, "the time it was dead-lettered")
}
