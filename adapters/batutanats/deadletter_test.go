package batutanats_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutanats"
	"github.com/stretchr/testify/require"
)

// TestPublishOverMaxPayloadIsPayloadTooLarge: a body that passes
// MaxBodyBytes but not the server's max_payload (1 MiB by default) fails
// with a *batuta.PayloadTooLargeError giving the room left, so that
// batuta.DeadLetterQueue can cut a dead letter to fit (before, the error
// was nats.ErrMaxPayload, which matched nothing batuta knows).
func TestPublishOverMaxPayloadIsPayloadTooLarge(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	maxPayload := int(js.Conn().MaxPayload())
	q := open(t, batutanats.Config{Stream: uniqueStream(t, js), MaxBodyBytes: 4 << 20})
	err := q.Publish(t.Context(), batuta.Message{ID: "big", Body: make([]byte, 2<<20)})
	require.ErrorIs(t, err, batuta.ErrPayloadTooLarge)
	var tl *batuta.PayloadTooLargeError
	require.ErrorAs(t, err, &tl)
	require.Equal(t, 2<<20, tl.Size)
	require.Less(t, tl.Limit, maxPayload)
	require.Greater(t, tl.Limit, maxPayload-1024, "room left by the headers")
	// The room is exact: a body of that size is accepted.
	require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "big", Body: make([]byte, tl.Limit-64)}))
}

// TestTriggerDeadLettersOversizedBodyToNATS: a 2 MB message (from a source
// that accepts it) that fails its deliveries reaches a NATS dead-letter
// queue cut to the server's max_payload, with the original size and hash,
// after exactly MaxDeliveries deliveries; before, every hand-off failed and
// the message was fired and handed off again forever.
func TestTriggerDeadLettersOversizedBodyToNATS(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	maxPayload := int(js.Conn().MaxPayload())
	dead := open(t, batutanats.Config{Stream: uniqueStream(t, js), MaxBodyBytes: 4 << 20})
	src, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{MaxBodyBytes: 4 << 20})
	require.NoError(t, err)
	t.Cleanup(func() { _ = src.Close() })
	var fired atomic.Int32
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: src, DeadLetter: batuta.DeadLetterQueue(dead), MaxDeliveries: 3, RetryDelay: time.Millisecond,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- trig.Run(ctx, func(context.Context, batuta.Event) error {
			fired.Add(1)
			return errors.New("handler down")
		})
	}()
	body := bytes.Repeat([]byte("0123456789abcdef"), (2<<20)/16)
	require.NoError(t, src.Publish(t.Context(), batuta.Message{ID: "huge", Body: body}))
	d := receiveOne(t, dead)
	require.Eventually(t, func() bool { return src.Len() == 0 }, 10*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	require.EqualValues(t, 3, fired.Load())
	require.Zero(t, trig.Parked())
	require.Equal(t, "huge", d.ID)
	require.Less(t, len(d.Body), maxPayload)
	require.Equal(t, body[:len(d.Body)], d.Body)
	require.Equal(t, strconv.Itoa(len(body)), d.Headers[batuta.HeaderDeadLetterBodySize])
	require.NotEmpty(t, d.Headers[batuta.HeaderDeadLetterBodySHA256])
	require.Contains(t, d.Headers[batuta.HeaderDeadLetterTruncated], "limit")
	require.Equal(t, "handler down", d.Headers[batuta.HeaderDeadLetterError])
	require.NoError(t, dead.Ack(t.Context(), d))
}

// TestAdapterDeadLetterFitsMaxPayload: the adapter's own DeadLetter adds
// headers to a message that filled max_payload; the dead letter is cut to
// fit, with a reference to the original's stream sequence, instead of
// failing every time (before: nats.ErrMaxPayload, forever).
func TestAdapterDeadLetterFitsMaxPayload(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	maxPayload := int(js.Conn().MaxPayload())
	stream := uniqueStream(t, js)
	cfg := batutanats.Config{Stream: stream, MaxBodyBytes: 4 << 20}
	q := open(t, cfg)
	body := bytes.Repeat([]byte("x"), maxPayload-200)
	require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "full", Body: body}))
	d := receiveOne(t, q)
	reason := strings.Repeat("r", 5000) // also capped
	require.NoError(t, q.DeadLetter(t.Context(), d, reason))

	dq := open(t, batutanats.Config{Stream: stream, Subject: cfg.WithDefaults().DeadLetterSubject, Consumer: "dead"})
	dd := receiveOne(t, dq)
	require.Equal(t, "full", dd.ID)
	require.Less(t, len(dd.Body), len(body))
	require.Equal(t, body[:len(dd.Body)], dd.Body)
	require.Equal(t, strconv.Itoa(len(body)), dd.Headers[batuta.HeaderDeadLetterBodySize])
	require.Equal(t, stream+"-1", dd.Headers[batutanats.HeaderDeadSourceSeq])
	require.LessOrEqual(t, len(dd.Headers[batutanats.HeaderDeadReason]), batuta.MaxDeadLetterErrorBytes)
	require.NoError(t, dq.Ack(t.Context(), dd))
	expectNothing(t, q, 300*time.Millisecond) // the original was acked
}
