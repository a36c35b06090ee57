package batutaamqp

import (
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

func TestAttemptOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		headers     amqp.Table
		redelivered bool
		want        int
	}{
		{name: "first delivery", want: 1},
		{name: "classic redelivery", redelivered: true, want: 2},
		{name: "quorum count", headers: amqp.Table{"x-delivery-count": int64(3)}, redelivered: true, want: 4},
		{name: "republished", headers: amqp.Table{headerAttempt: int64(3)}, want: 3},
		{name: "republished then redelivered", headers: amqp.Table{headerAttempt: int32(3), "x-delivery-count": int64(2)}, redelivered: true, want: 5},
		{name: "garbage header", headers: amqp.Table{headerAttempt: "many"}, want: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := amqp.Delivery{Headers: tc.headers, Redelivered: tc.redelivered}
			require.Equal(t, tc.want, attemptOf(&d))
		})
	}
}

func TestMessageRoundTrip(t *testing.T) {
	t.Parallel()
	sent := batuta.Message{
		ID:      "m-1",
		Body:    []byte{0, 1, 2, 0xff},
		Headers: map[string]string{"trace": "abc", "content-type": "application/json"},
		Time:    time.Date(2025, 3, 4, 5, 6, 7, 890, time.UTC),
	}
	p := toPublishing(sent, 1)
	require.Equal(t, uint8(amqp.Persistent), p.DeliveryMode)
	d := amqp.Delivery{Headers: p.Headers, MessageId: p.MessageId, Body: p.Body, Timestamp: p.Timestamp}
	// The broker adds dead-lettering history; it must not leak into Headers.
	d.Headers["x-death"] = []any{amqp.Table{"count": int64(1)}}
	d.Headers["x-first-death-queue"] = "q.delay.1000"
	d.Headers["x-delivery-count"] = int64(1)
	d.Headers["binary"] = []byte("bytes")
	d.Headers["number"] = int32(7)
	got := fromDelivery(&d)
	require.Equal(t, sent.ID, got.ID)
	require.Equal(t, sent.Body, got.Body)
	require.True(t, sent.Time.Equal(got.Time), "nanoseconds survive: %v", got.Time)
	require.Equal(t, map[string]string{"trace": "abc", "content-type": "application/json", "binary": "bytes"}, got.Headers)

	re := republishing(&d, 4)
	require.NotContains(t, re.Headers, "x-death")
	require.NotContains(t, re.Headers, "x-first-death-queue")
	require.NotContains(t, re.Headers, "x-delivery-count")
	require.Equal(t, int64(4), re.Headers[headerAttempt])
	require.Equal(t, "abc", re.Headers["trace"])
	require.Equal(t, d.Body, re.Body)
}

func TestCheckHeaders(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"", "x-batuta-attempt", "x-death", "x-first-death-reason", string(make([]byte, 256))} {
		require.ErrorIs(t, checkHeaders(map[string]string{bad: "v"}), batuta.ErrInvalidPayload, "%q", bad)
	}
	require.NoError(t, checkHeaders(map[string]string{"x-custom": "v", "type": "order.created"}))
}
