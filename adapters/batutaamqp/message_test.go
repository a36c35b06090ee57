package batutaamqp

import (
	"strings"
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
	require.Equal(t, amqp.Persistent, p.DeliveryMode)
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

// TestStampID: the ID rule of Config.IDHeader. message-id wins; then the
// IDHeader; then, with ContentID, a hash of the body and headers that is
// the same for equal content and differs when the body or a hashed header
// differs; else a random ID, reported as such.
func TestStampID(t *testing.T) {
	t.Parallel()
	def := Config{Queue: "q"}.withDefaults()
	content := def
	content.ContentID = true
	listed := content
	listed.ContentIDHeaders = []string{"type"}
	noHeader := content
	noHeader.IDHeader = noIDHeader

	stamp := func(cfg Config, d amqp.Delivery) (string, bool) {
		random := stampID(&cfg, &d)
		return fromDelivery(&d).ID, random
	}
	body := []byte(`{"id":7}`)
	hdr := func(kv ...any) amqp.Table {
		h := amqp.Table{}
		for i := 0; i < len(kv); i += 2 {
			h[kv[i].(string)] = kv[i+1]
		}
		return h
	}

	id, random := stamp(content, amqp.Delivery{MessageId: "m-1", Headers: hdr(DefaultIDHeader, "h-1"), Body: body})
	require.Equal(t, "m-1", id, "message-id wins")
	require.False(t, random)
	id, _ = stamp(content, amqp.Delivery{Headers: hdr(DefaultIDHeader, "h-1"), Body: body})
	require.Equal(t, "h-1", id, "then the IDHeader")
	id, _ = stamp(content, amqp.Delivery{Headers: hdr(DefaultIDHeader, []byte("h-2")), Body: body})
	require.Equal(t, "h-2", id, "a byte-string header counts")
	custom := def
	custom.IDHeader = "Nats-Msg-Id"
	id, _ = stamp(custom, amqp.Delivery{Headers: hdr("Nats-Msg-Id", "n-1", DefaultIDHeader, "h-1"), Body: body})
	require.Equal(t, "n-1", id, "a configured IDHeader replaces the default one")

	a, random := stamp(content, amqp.Delivery{Headers: hdr("type", "order.created", "trace", "t1"), Body: body})
	require.False(t, random)
	require.Regexp(t, `^sha256:[0-9a-f]{64}$`, a)
	b, _ := stamp(content, amqp.Delivery{Headers: hdr("trace", "t1", "type", "order.created",
		"x-delivery-count", int64(3), headerAttempt, int64(2), "x-death", []any{}), Body: body})
	require.Equal(t, a, b, "broker and adapter headers are not hashed: a redelivery keeps the ID")
	c, _ := stamp(content, amqp.Delivery{Headers: hdr("type", "order.created", "trace", "t2"), Body: body})
	require.NotEqual(t, a, c, "every user header is hashed by default")
	d, _ := stamp(content, amqp.Delivery{Headers: hdr("type", "order.created", "trace", "t1"), Body: []byte(`{"id":8}`)})
	require.NotEqual(t, a, d, "the body is hashed")
	e, _ := stamp(content, amqp.Delivery{Headers: hdr("type", "order.created", "trace", "t1", DefaultIDHeader, ""), Body: body})
	require.NotEqual(t, a, e, "an empty IDHeader is no ID, and it is a header like any other")

	l1, _ := stamp(listed, amqp.Delivery{Headers: hdr("type", "order.created", "trace", "t1"), Body: body})
	l2, _ := stamp(listed, amqp.Delivery{Headers: hdr("type", "order.created", "trace", "t2"), Body: body})
	require.Equal(t, l1, l2, "unlisted headers are not hashed")
	l3, _ := stamp(listed, amqp.Delivery{Headers: hdr("type", "order.paid"), Body: body})
	require.NotEqual(t, l1, l3, "listed headers are hashed")
	l4, _ := stamp(listed, amqp.Delivery{Body: body})
	l5, _ := stamp(listed, amqp.Delivery{Headers: hdr("type", ""), Body: body})
	require.NotEqual(t, l4, l5, "an absent header differs from an empty one")
	// Length prefixes: moving bytes between body and header changes the ID.
	p1, _ := stamp(listed, amqp.Delivery{Headers: hdr("type", "ab"), Body: []byte("x")})
	p2, _ := stamp(listed, amqp.Delivery{Headers: hdr("type", "b"), Body: []byte("xa")})
	require.NotEqual(t, p1, p2)

	id, _ = stamp(noHeader, amqp.Delivery{Headers: hdr(DefaultIDHeader, "h-1"), Body: body})
	require.True(t, strings.HasPrefix(id, contentIDPrefix), "IDHeader \"-\" consults no header: %s", id)

	r1, random := stamp(def, amqp.Delivery{Body: body})
	require.True(t, random)
	r2, _ := stamp(def, amqp.Delivery{Body: body})
	require.NotEqual(t, r1, r2, "without ContentID an ID-less message gets a random ID")

	// The stamped ID travels with every copy the adapter republishes.
	raw := amqp.Delivery{Headers: hdr("type", "order.created"), Body: body}
	stampID(&content, &raw)
	require.NotEmpty(t, raw.MessageId)
	require.Equal(t, raw.MessageId, republishing(&raw, 2).MessageId)
}

func TestIDHeaderValidate(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"x-batuta-id", "x-death", "x-delivery-count"} {
		_, err := Open(t.Context(), "amqp://guest:guest@127.0.0.1:1/", Config{Queue: "q", IDHeader: bad})
		var ce *batuta.ConfigError
		require.ErrorAs(t, err, &ce, "%q", bad)
		require.Equal(t, "IDHeader", ce.Field)
	}
}
