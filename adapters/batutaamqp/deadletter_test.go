package batutaamqp

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// TestDeadLettersLongErrorFits: an error string longer than a frame
// (RabbitMQ's frame_max, 128 KiB: the content header must fit in one
// frame) must not make the dead letter unpublishable; the error header is
// cut to batuta.MaxDeadLetterErrorBytes.
func TestDeadLettersLongErrorFits(t *testing.T) {
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	q := openQueue(t, brokerURL(), cfg)
	dlq := openQueue(t, brokerURL(), Config{Queue: cfg.Queue + ".dead", Passive: true, Logger: quietLogger()})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	long := strings.Repeat("a failure that echoes its input ", 10000) // 320 KB
	hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
	defer hcancel()
	require.NoError(t, q.DeadLetters().HandleDeadLetter(hctx, batuta.DeadLetter{
		Event:  batuta.Event{ID: "e-long", Data: []byte(`{"x":1}`)},
		Reason: batuta.DeadLetterFailed, Error: long, Attempts: 3,
	}))
	dead := receiveN(t, ctx, dlq, 1)[0]
	require.Equal(t, "e-long", dead.ID)
	require.Equal(t, []byte(`{"x":1}`), dead.Body)
	e := dead.Headers[batuta.HeaderDeadLetterError]
	require.LessOrEqual(t, len(e), batuta.MaxDeadLetterErrorBytes)
	require.True(t, strings.HasPrefix(long, strings.TrimSuffix(e, "...")))
	require.NoError(t, dlq.Ack(ctx, dead))
}
