package batutaredis_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/stretchr/testify/require"
)

// TestTriggerDeadLettersOversizedBodyToRedis is the reported case: a 2 MB
// message on a stream that accepts it (MaxBodyBytes 4 MiB) fails its
// deliveries, and its dead-letter queue (another stream, the default
// MaxBodyBytes of 1 MiB) refuses the body. It must reach the dead-letter
// stream cut to 1 MiB, with the reason, original size and hash, after
// exactly MaxDeliveries deliveries, and leave the source empty; before,
// every hand-off failed and the message was fired and handed off again,
// forever.
func TestTriggerDeadLettersOversizedBodyToRedis(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	srcStream := uniqueStream(t, admin)
	src := open(t, batutaredis.Config{Stream: srcStream, MaxBodyBytes: 4 << 20})
	dead := open(t, batutaredis.Config{Stream: uniqueStream(t, admin)})
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
	require.NoError(t, src.Publish(t.Context(), batuta.Message{ID: "huge", Body: body, Headers: map[string]string{"k": "v"}}))
	d := receiveOne(t, dead)
	require.Eventually(t, func() bool {
		n, err := admin.XLen(t.Context(), srcStream).Result()
		return err == nil && n == 0
	}, 10*time.Second, time.Millisecond, "the original is acked (and deleted)")
	cancel()
	require.NoError(t, <-done)
	require.EqualValues(t, 3, fired.Load())
	require.Zero(t, trig.Parked())
	require.Equal(t, "huge", d.ID)
	require.Equal(t, body[:batutaredis.DefaultMaxBodyBytes], d.Body)
	require.Equal(t, strconv.Itoa(len(body)), d.Headers[batuta.HeaderDeadLetterBodySize])
	sum := sha256.Sum256(body)
	require.Equal(t, hex.EncodeToString(sum[:]), d.Headers[batuta.HeaderDeadLetterBodySHA256])
	require.Contains(t, d.Headers[batuta.HeaderDeadLetterTruncated], "limit of 1048576 bytes")
	require.Equal(t, "handler down", d.Headers[batuta.HeaderDeadLetterError])
	require.Equal(t, "max_deliveries", d.Headers[batuta.HeaderDeadLetterReason])
	require.Equal(t, "v", d.Headers["k"])
	require.NoError(t, dead.Ack(t.Context(), d))
}

// TestAdapterDeadLetterKeepsWholeBodyCapsReason: the adapter's own
// DeadLetter moves the entry whole (Redis takes bodies up to its
// proto-max-bulk-len, 512 MB by default), and caps a long reason.
func TestAdapterDeadLetterKeepsWholeBodyCapsReason(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	stream := uniqueStream(t, admin)
	q := open(t, batutaredis.Config{Stream: stream, MaxBodyBytes: 4 << 20})
	body := bytes.Repeat([]byte("y"), 2<<20)
	require.NoError(t, q.Publish(t.Context(), batuta.Message{ID: "big", Body: body}))
	d := receiveOne(t, q)
	require.NoError(t, q.DeadLetter(t.Context(), d, strings.Repeat("r", 5000)))
	entries, err := admin.XRange(t.Context(), stream+":dead", "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Len(t, entries[0].Values["body"], len(body))
	require.LessOrEqual(t, len(entries[0].Values["dead_reason"].(string)), batuta.MaxDeadLetterErrorBytes)
}
