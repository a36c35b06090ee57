package batutapg

import (
	"context"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// TestLivePeers: members of a group see each other through their liveness
// rows, groups are apart, a member that leaves is gone, bad names change
// nothing.
func TestLivePeers(t *testing.T) {
	ctx := testCtx(t)
	pool := storeTestPool(t, 4)
	schema := "batuta_peer_" + storeSuffix()
	s1 := newTestStore(t, pool, Config{Schema: schema, Logger: quiet()})
	s2, err := New(ctx, pool, Config{Schema: schema, Logger: quiet(), ManualMigrate: true})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s2.Close()) })

	p, err := s1.LivePeers(ctx, "g", "a")
	require.NoError(t, err)
	require.Equal(t, []string{"a"}, p)
	p, err = s2.LivePeers(ctx, "g", "b")
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b"}, p)
	p, err = s1.LivePeers(ctx, "other", "c")
	require.NoError(t, err)
	require.Equal(t, []string{"c"}, p, "groups are apart")
	p, err = s1.LivePeers(ctx, "g", "a")
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b"}, p)

	require.NoError(t, s2.LeavePeers(ctx, "g", "b"))
	p, err = s1.LivePeers(ctx, "g", "a")
	require.NoError(t, err)
	require.Equal(t, []string{"a"}, p)

	for _, bad := range [][2]string{{"", "a"}, {"g", ""}, {"g/x", "a"}, {"g", "a/b"}, {"g", "a\x00"}} {
		_, err := s1.LivePeers(ctx, bad[0], bad[1])
		require.ErrorIs(t, err, batuta.ErrInvalidConfig, "%q", bad)
		require.ErrorIs(t, s1.LeavePeers(ctx, bad[0], bad[1]), batuta.ErrInvalidConfig, "%q", bad)
	}
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM `+quoteIdent(schema)+`.instances WHERE owner LIKE 'batuta.peer/%'`).Scan(&n))
	require.Equal(t, 2, n, "bad names wrote nothing")

	off := newTestStore(t, pool, Config{Logger: quiet(), LivenessInterval: -1})
	_, err = off.LivePeers(ctx, "g", "a")
	require.Error(t, err, "no liveness beat, no peers")
}

// TestCronFleetPreferredInstanceGone: three instances bind the same
// schedule; the peer list also holds a member that never fires (its row
// is renewed, its process does not run the schedule). Its ticks still run,
// through the others' fallback, and every tick runs exactly once.
func TestCronFleetPreferredInstanceGone(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-instance cron test skipped in -short mode")
	}
	ctx := testCtx(t)
	base := storeTestPool(t, 4)
	schema := "batuta_cf_" + storeSuffix()
	dropSchemaAtCleanup(t, base, schema)
	require.NoError(t, MigrateSchema(ctx, base, schema))

	var mu sync.Mutex
	runs := map[string]int{}
	ticks := map[string]time.Time{}
	var orchs []*batuta.Orchestrator
	nodes := []string{"n0", "n1", "n2"}
	for _, node := range nodes {
		st, err := New(ctx, storeTestPool(t, 4), Config{Schema: schema, Logger: quiet(), ManualMigrate: true})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, st.Close()) })
		o, err := batuta.New(batuta.Config{Store: st, NodeID: node, Logger: quiet(), NoLogHooks: true})
		require.NoError(t, err)
		require.NoError(t, o.Register(&batuta.Workflow{Name: "wf", Tasks: []batuta.Task{{Name: "t", Run: func(_ context.Context, in *batuta.Input) (any, error) {
			mu.Lock()
			defer mu.Unlock()
			runs[in.Event().ID]++
			ticks[in.Event().ID] = in.Event().Time
			return nil, nil
		}}}}))
		tr, err := batuta.NewCron(batuta.CronConfig{Name: "s", Spec: "@every 200ms", Logger: quiet()})
		require.NoError(t, err)
		require.NoError(t, o.Bind("wf", tr))
		orchs = append(orchs, o)
	}
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, o := range orchs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			require.NoError(t, o.Run(rctx))
		}()
	}
	defer func() {
		cancel()
		wg.Wait()
	}()
	// The group the instances joined; a ghost joins it, alive for an hour.
	var group string
	require.Eventually(t, func() bool {
		var owners []string
		rows, err := base.Query(ctx, `SELECT owner FROM `+quoteIdent(schema)+`.instances WHERE owner LIKE 'batuta.peer/%'`)
		if err != nil {
			return false
		}
		for rows.Next() {
			var o string
			if rows.Scan(&o) == nil {
				owners = append(owners, o)
			}
		}
		rows.Close()
		if len(owners) != 3 {
			return false
		}
		group = strings.Split(owners[0], "/")[1]
		return true
	}, 30*time.Second, 10*time.Millisecond)
	_, err := base.Exec(ctx, `INSERT INTO `+quoteIdent(schema)+`.instances (owner, seen_at) VALUES ($1, now() + interval '1 hour')`,
		peerPrefix+group+"/ghost")
	require.NoError(t, err)
	peers := []string{"ghost", "n0", "n1", "n2"}

	ghostRan := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, tk := range ticks {
			if preferredPeer(peers, "s", tk) == "ghost" {
				n++
			}
		}
		return n
	}
	// The instances see the ghost within a refresh (a second); then its
	// ticks must run through the fallback.
	require.Eventually(t, func() bool { return ghostRan() >= 5 }, 60*time.Second, 10*time.Millisecond)
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	for id, n := range runs {
		require.Equal(t, 1, n, "tick %s ran %d times", id, n)
	}
}

// preferredPeer mirrors batuta's choice of the instance that fires a tick
// at once (highest FNV-1a hash of peer, schedule, tick), to tell which
// ticks the ghost was to fire.
func preferredPeer(peers []string, schedule string, tick time.Time) string {
	best, bestH := "", uint64(0)
	for _, p := range peers {
		f := fnv.New64a()
		f.Write([]byte(p + "\x00" + schedule + "\x00" + strconv.FormatInt(tick.UnixNano(), 10)))
		if h := f.Sum64(); best == "" || h > bestH {
			best, bestH = p, h
		}
	}
	return best
}
