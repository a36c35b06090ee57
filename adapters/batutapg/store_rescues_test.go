package batutapg

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// rescueHooks is a StoreHooks that counts the rescues reported to it.
type rescueHooks struct {
	batuta.NopHooks
	rescued, failed atomic.Int64
}

func (*rescueHooks) StoreCall(batuta.StoreOp, time.Duration, int, error) {}

func (c *rescueHooks) Rescued(rescued, failed int) {
	c.rescued.Add(int64(rescued))
	c.failed.Add(int64(failed))
}

// TestLivenessRescuesReachStoreHooks: a task of an instance whose liveness
// row went stale, rescued by the liveness loop (no executor rescuer runs:
// the orchestrator is not started), is reported to the orchestrator's
// StoreHooks.Rescued (batutaprom's batuta_rescues_total). Before,
// only RescueExpired's rescues were counted.
func TestLivenessRescuesReachStoreHooks(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{DisableListen: true, LivenessInterval: 50 * time.Millisecond, LivenessTimeout: time.Second})
	counter := &rescueHooks{}
	_, err := batuta.New(batuta.Config{Store: s, Hooks: []batuta.Hooks{counter}, NoLogHooks: true, Logger: quiet()})
	require.NoError(t, err)

	ctx := testCtx(t)
	now := time.Now()
	_, _, err = s.CreateRun(ctx, newRunFor("wf", "e1", now))
	require.NoError(t, err)
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "gone", Limit: 1, Now: now, LeaseUntil: now.Add(time.Hour)})
	require.NoError(t, err)
	require.Len(t, cs, 1)
	// The owner "gone" dies: this store stops renewing its row, which is
	// an hour old.
	s.live.mu.Lock()
	delete(s.live.owners, "gone")
	s.live.mu.Unlock()
	_, err = pool.Exec(ctx, `UPDATE `+quoteIdent(s.Schema())+`.instances SET seen_at = clock_timestamp() - interval '1 hour' WHERE owner = 'gone'`)
	require.NoError(t, err)

	require.Eventually(t, func() bool { return counter.rescued.Load() == 1 }, 30*time.Second, 10*time.Millisecond,
		"the liveness loop's rescue was not reported")
	var rescues int
	require.NoError(t, pool.QueryRow(ctx, `SELECT rescues FROM `+quoteIdent(s.Schema())+`.tasks WHERE run_id = $1`, cs[0].RunID).Scan(&rescues))
	require.Equal(t, 1, rescues)
	require.Zero(t, counter.failed.Load())
	require.Equal(t, int64(1), counter.rescued.Load(), "counted once")
}
