package batutaamqp

import (
	"context"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// TestBacklog: the queue tells its ready messages, and those waiting for
// a Nack delay in the wait queues it declared, from the real broker.
func TestBacklog(t *testing.T) {
	admin := adminConn(t)
	q := openQueue(t, brokerURL(), testConfig(t, admin))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	bl, err := q.Backlog(ctx)
	require.NoError(t, err)
	require.Equal(t, batuta.Backlog{InFlight: -1}, bl)

	publishIDs(t, ctx, q, "m", 3)
	bl, err = q.Backlog(ctx)
	require.NoError(t, err)
	require.Equal(t, batuta.Backlog{Pending: 3, InFlight: -1}, bl)
	require.False(t, bl.OldestKnown)

	// One delivered and nacked for an hour: waiting in a wait queue.
	// The other two may sit in the consumer's prefetch (unacked): not
	// counted by RabbitMQ.
	d := receiveN(t, ctx, q, 1)[0]
	require.NoError(t, q.Nack(ctx, d, time.Hour))
	bl, err = q.Backlog(ctx)
	require.NoError(t, err)
	require.GreaterOrEqual(t, bl.Pending, int64(1), "the delayed message")
	require.LessOrEqual(t, bl.Pending, int64(3))
}
