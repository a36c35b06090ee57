package batutanats_test

import (
	"context"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutanats"
	"github.com/stretchr/testify/require"
)

// TestBacklog: the queue tells its consumer's backlog from the real
// JetStream: undelivered messages as Pending, delivered and unacked ones
// as InFlight, and the stored time of the oldest.
func TestBacklog(t *testing.T) {
	t.Parallel()
	js := requireNATS(t)
	q := open(t, batutanats.Config{Stream: uniqueStream(t, js)})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	bl, err := q.Backlog(ctx)
	require.NoError(t, err)
	require.Equal(t, batuta.Backlog{OldestKnown: true}, bl, "empty")

	before := time.Now().Add(-time.Second)
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
	require.GreaterOrEqual(t, bl.InFlight, int64(1), "the held delivery (and any pulled ahead)")
	require.Equal(t, int64(3), bl.Pending+bl.InFlight)
	require.True(t, oldest.Equal(bl.Oldest), "the oldest is in flight now: %v, want %v", bl.Oldest, oldest)

	require.NoError(t, q.Ack(ctx, ds[0]))
	bl, err = q.Backlog(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), bl.Pending+bl.InFlight)
	require.True(t, bl.Oldest.After(oldest) || bl.Oldest.Equal(oldest), "b is the oldest now")
}
