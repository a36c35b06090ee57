package batutaprom_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaprom"
)

// stuckSource is a trigger whose backlog never comes before ctx ends.
type stuckSource struct{ batuta.TriggerFunc }

func (stuckSource) Backlog(ctx context.Context) (batuta.Backlog, error) {
	<-ctx.Done()
	return batuta.Backlog{}, ctx.Err()
}

// TestTriggerBacklogAndLag: the backlog of a queue trigger's source is
// read at each scrape (pending, in flight, the oldest's wait); a source
// that does not answer within BacklogTimeout is left out and counted as
// an error, without holding up the scrape.
func TestTriggerBacklogAndLag(t *testing.T) {
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	m, err := batutaprom.New(batutaprom.Config{BacklogTimeout: 100 * time.Millisecond, Logger: quiet})
	require.NoError(t, err)
	o := orchestrator(t, store, m) // not running: the trigger takes nothing
	q, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	require.NoError(t, err)
	defer q.Close()
	dlq, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	require.NoError(t, err)
	defer dlq.Close()
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, DeadLetter: batuta.DeadLetterQueue(dlq), Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Bind("orders", trig))
	stuck := stuckSource{func(ctx context.Context, _ batuta.FireFunc) error { <-ctx.Done(); return nil }}
	require.NoError(t, o.Bind("orders", stuck))
	m.Observe(o)

	ctx := context.Background()
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "a", Time: time.Now().Add(-time.Minute)}))
	require.NoError(t, q.Publish(ctx, batuta.Message{ID: "b"}))
	ds, err := q.Receive(ctx, 1)
	require.NoError(t, err)

	require.Equal(t, 1.0, testutil.ToFloat64(gauge(m, "trigger_backlog", "orders", batuta.TriggerKindQueue, "pending")))
	require.Equal(t, 1.0, testutil.ToFloat64(gauge(m, "trigger_backlog", "orders", batuta.TriggerKindQueue, "in_flight")))
	lag := testutil.ToFloat64(gauge(m, "trigger_lag_seconds", "orders", batuta.TriggerKindQueue))
	require.GreaterOrEqual(t, lag, 60.0)
	require.Less(t, lag, 3600.0)
	kind := "batutaprom_test.stuckSource"
	require.Zero(t, testutil.CollectAndCount(gauge(m, "trigger_backlog", "orders", kind, "pending")), "left out")
	require.GreaterOrEqual(t, testutil.ToFloat64(gauge(m, "trigger_backlog_errors_total", "orders", kind)), 1.0)

	require.NoError(t, q.Ack(ctx, ds[0]))
	ds, err = q.Receive(ctx, 1)
	require.NoError(t, err)
	require.NoError(t, q.Ack(ctx, ds[0]))
	require.Zero(t, testutil.ToFloat64(gauge(m, "trigger_backlog", "orders", batuta.TriggerKindQueue, "pending")))
	require.Zero(t, testutil.ToFloat64(gauge(m, "trigger_lag_seconds", "orders", batuta.TriggerKindQueue)), "nothing waits")
}
