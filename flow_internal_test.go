package batuta

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// TestFlowKey: keys are prefix:user while short and valid, else hashed,
// and always at most maxFlowKey bytes of valid UTF-8.
func TestFlowKey(t *testing.T) {
	require.Equal(t, "orders:cust-1", flowKey("orders", "cust-1"))
	require.Equal(t, "orders/charge:", flowKey("orders/charge", ""))
	long := strings.Repeat("k", 300)
	k := flowKey("orders", long)
	require.True(t, strings.HasPrefix(k, "orders:sha256:"), k)
	require.Len(t, k, len("orders:sha256:")+64)
	require.NotEqual(t, k, flowKey("orders", long+"x"))
	require.True(t, strings.HasPrefix(flowKey("w", "bad\xff"), "w:sha256:"))
	require.True(t, strings.HasPrefix(flowKey("w", "nul\x00"), "w:sha256:"))
	longPrefix := strings.Repeat("w", 128) + "/" + strings.Repeat("t", 128)
	k = flowKey(longPrefix, "x")
	require.True(t, strings.HasPrefix(k, "sha256:"), k)
	for _, k := range []string{flowKey("orders", long), k, flowKey(strings.Repeat("é", 100), "ü")} {
		require.LessOrEqual(t, len(k), maxFlowKey)
		require.True(t, utf8.ValidString(k))
	}
}

// TestQueueSubmitOptions: the queue trigger's metadata, and malformed values.
func TestQueueSubmitOptions(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	resolve := func(t *testing.T, d Delivery) submitOpts {
		t.Helper()
		opts, err := queueSubmitOptions(d)
		require.NoError(t, err)
		so, err := resolveSubmitOptions(opts, now)
		require.NoError(t, err)
		return so
	}
	d := func(sent time.Time, h map[string]string) Delivery {
		return Delivery{Message: Message{ID: "m", Time: sent, Headers: h}}
	}
	require.Equal(t, submitOpts{}, resolve(t, d(now, nil)))
	require.Equal(t, now.Add(90*time.Second), resolve(t, d(now, map[string]string{HeaderDelay: "90s"})).startAt)
	require.Equal(t, now.Add(1500*time.Millisecond), resolve(t, d(now, map[string]string{HeaderDelay: "1500"})).startAt)
	// Counted from the publish time: a redelivery is not delayed again.
	require.Equal(t, now.Add(30*time.Second), resolve(t, d(now.Add(-30*time.Second), map[string]string{HeaderDelay: "1m"})).startAt)
	require.Equal(t, now.Add(time.Minute), resolve(t, d(time.Time{}, map[string]string{HeaderDelay: "1m"})).startAt)
	at := now.Add(time.Hour)
	so := resolve(t, d(now, map[string]string{HeaderDelay: "1s", HeaderStartAt: at.Format(time.RFC3339), HeaderPriority: "-7"}))
	require.Equal(t, submitOpts{startAt: at, priority: -7}, so)
	require.True(t, resolve(t, d(now, map[string]string{HeaderStartAt: "2000-01-01T00:00:00Z"})).startAt.IsZero(), "the past means now")

	for h, v := range map[string]string{
		HeaderDelay: "soon", HeaderStartAt: "tomorrow", HeaderPriority: "high",
	} {
		_, err := queueSubmitOptions(d(now, map[string]string{h: v}))
		require.ErrorContains(t, err, "header "+h+": \""+v+"\"")
	}
	_, err := queueSubmitOptions(d(now, map[string]string{HeaderDelay: "-5s"}))
	require.ErrorContains(t, err, "is negative")
	_, err = queueSubmitOptions(d(now, map[string]string{HeaderPriority: "99999999999"}))
	require.ErrorContains(t, err, "not a 32-bit integer")
}

// TestResolveSubmitOptions: later options win; the past means now.
func TestResolveSubmitOptions(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	so, err := resolveSubmitOptions([]SubmitOption{StartAt(now.Add(time.Hour)), StartAfter(time.Minute), WithPriority(3)}, now)
	require.NoError(t, err)
	require.Equal(t, submitOpts{startAt: now.Add(time.Minute), priority: 3}, so)
	so, err = resolveSubmitOptions([]SubmitOption{StartAt(now.Add(-time.Hour))}, now)
	require.NoError(t, err)
	require.True(t, so.startAt.IsZero())
	so, err = resolveSubmitOptions([]SubmitOption{StartAfter(0), StartAt(now)}, now)
	require.NoError(t, err)
	require.True(t, so.startAt.IsZero())
}
