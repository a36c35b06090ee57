package batutaredis_test

import (
	"context"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/stretchr/testify/require"
)

// TestBacklog: the queue tells its group's backlog from the real Redis:
// undelivered and delayed entries as Pending, delivered and unacked ones
// as InFlight, and the time of the oldest.
func TestBacklog(t *testing.T) {
	t.Parallel()
	admin := requireRedis(t)
	q := open(t, batutaredis.Config{Stream: uniqueStream(t, admin)})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var _ batuta.BacklogReporter = q

	bl, err := q.Backlog(ctx)
	require.NoError(t, err)
	require.Equal(t, batuta.Backlog{OldestKnown: true}, bl, "empty")

	before := time.Now().Add(-time.Second) // the server's clock may lag ours a little
	for _, id := range []string{"a", "b", "c"} {
		require.NoError(t, q.Publish(ctx, batuta.Message{ID: id}))
	}
	after := time.Now().Add(time.Second)
	bl, err = q.Backlog(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(3), bl.Pending)
	require.Zero(t, bl.InFlight)
	require.True(t, bl.Oldest.After(before) && bl.Oldest.Before(after), "oldest %v", bl.Oldest)
	oldest := bl.Oldest

	ds, err := q.Receive(ctx, 1)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	bl, err = q.Backlog(ctx)
	require.NoError(t, err)
	require.GreaterOrEqual(t, bl.InFlight, int64(1), "the held delivery (and any read ahead)")
	require.Equal(t, int64(3), bl.Pending+bl.InFlight)
	require.Equal(t, oldest, bl.Oldest, "the oldest is in flight now")

	require.NoError(t, q.Nack(ctx, ds[0], time.Hour))
	for range 2 {
		d, err := q.Receive(ctx, 1)
		require.NoError(t, err)
		require.NoError(t, q.Ack(ctx, d[0]))
	}
	bl, err = q.Backlog(ctx)
	require.NoError(t, err)
	require.Equal(t, batuta.Backlog{Pending: 1, OldestKnown: true}, bl, "the delayed entry waits; its time is not looked at")
}
