package batuta

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// peerStore is a MemoryStore shared by the orchestrators of a test that
// lists a fixed set of live peers, possibly with members that do not run.
type peerStore struct {
	*MemoryStore
	peers []string

	mu     sync.Mutex
	groups map[string]string // member -> group it joined
	left   []string
}

func (s *peerStore) LivePeers(_ context.Context, group, member string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.groups[member] = group
	return s.peers, nil
}

func (s *peerStore) LeavePeers(_ context.Context, group, member string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.left = append(s.left, member+"@"+group)
	return nil
}

// TestCronFleetPreferredInstanceGone: two orchestrators bind the same
// schedule; the store lists a third, "ghost", as alive, which never fires.
// The ghost's ticks still run, through the others' fallback, and every tick
// runs exactly once.
func TestCronFleetPreferredInstanceGone(t *testing.T) {
	st := &peerStore{MemoryStore: NewMemoryStore(MemoryStoreConfig{}), peers: []string{"a", "b", "ghost"}, groups: map[string]string{}}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	var mu sync.Mutex
	runs := map[string]int{}        // event ID -> task runs
	ticks := map[string]time.Time{} // event ID -> tick
	var orchs []*Orchestrator
	for _, node := range []string{"a", "b"} {
		o, err := New(Config{Store: st, Logger: logger, NodeID: node})
		require.NoError(t, err)
		require.NoError(t, o.Register(&Workflow{Name: "wf", Tasks: []Task{{Name: "t", Run: func(_ context.Context, in *Input) (any, error) {
			mu.Lock()
			defer mu.Unlock()
			runs[in.Event().ID]++
			ticks[in.Event().ID] = in.Event().Time
			return nil, nil
		}}}}))
		tr, err := NewCron(CronConfig{Name: "s", Spec: "@every 100ms", Logger: logger, Overlap: OverlapPolicy{Action: OverlapAllow}})
		require.NoError(t, err)
		require.NoError(t, o.Bind("wf", tr))
		orchs = append(orchs, o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, o := range orchs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			require.NoError(t, o.Run(ctx))
		}()
	}
	byPeer := func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		n := map[string]int{}
		for _, tick := range ticks {
			n[preferredPeer(st.peers, "s", tick)]++
		}
		return n
	}
	require.Eventually(t, func() bool {
		n := byPeer()
		return n["a"] >= 3 && n["b"] >= 3 && n["ghost"] >= 3
	}, 60*time.Second, 10*time.Millisecond, "ticks of every preferred peer run")
	cancel()
	wg.Wait()

	mu.Lock()
	for id, n := range runs {
		require.Equal(t, 1, n, "tick %s ran %d times", id, n)
	}
	mu.Unlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	require.Equal(t, st.groups["a"], st.groups["b"], "same bindings, same group")
	require.NotEmpty(t, st.groups["a"])
	require.ElementsMatch(t, []string{"a@" + st.groups["a"], "b@" + st.groups["b"]}, st.left, "each leaves its group when Run ends")
}

// TestCronFireDelay: the preferred instance fires at once, the others
// after a quarter of the period (at most cronFallbackMax); without a
// trusted peer list, everyone fires at once.
func TestCronFireDelay(t *testing.T) {
	o, err := New(Config{NodeID: "a", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	tick := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	next := tick.Add(4 * time.Second)
	require.Zero(t, o.cronFireDelay("s", tick, next), "no peer list: at once")
	o.fleet.peers, o.fleet.self, o.fleet.fetched = []string{"a", "b"}, true, time.Now()
	var mine, theirs int
	for i := 0; i < 50; i++ {
		tk := tick.Add(time.Duration(i) * time.Second)
		d := o.cronFireDelay("s", tk, tk.Add(4*time.Second))
		if preferredPeer(o.fleet.peers, "s", tk) == "a" {
			require.Zero(t, d)
			mine++
		} else {
			require.Equal(t, time.Second, d)
			theirs++
		}
	}
	require.Positive(t, mine)
	require.Positive(t, theirs)
	for i := 0; ; i++ {
		tk := tick.Add(time.Duration(i) * time.Second)
		if preferredPeer(o.fleet.peers, "s", tk) != "a" {
			require.Equal(t, cronFallbackMax, o.cronFireDelay("s", tk, tk.Add(time.Hour)), "capped")
			break
		}
	}
	o.fleet.fetched = time.Now().Add(-time.Minute)
	require.Zero(t, o.cronFireDelay("s", tick, next), "stale peer list: at once")
	o.fleet.fetched, o.fleet.self = time.Now(), false
	require.Zero(t, o.cronFireDelay("s", tick, next), "not in the list yet: at once")
}

// TestCronGroupFollowsBindings: the group name is computed once per set of
// bindings: the same while none is added, a new one after a cron binding
// is added, the same again for another orchestrator with the same set.
func TestCronGroupFollowsBindings(t *testing.T) {
	mk := func(specs ...string) *Orchestrator {
		o, err := New(Config{Store: NewMemoryStore(MemoryStoreConfig{}), Logger: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		require.NoError(t, o.Register(&Workflow{Name: "wf", Tasks: []Task{{Name: "a", Run: func(context.Context, *Input) (any, error) { return nil, nil }}}}))
		for i, spec := range specs {
			tr, err := NewCron(CronConfig{Name: fmt.Sprintf("s%d", i), Spec: spec})
			require.NoError(t, err)
			require.NoError(t, o.Bind("wf", tr))
		}
		return o
	}
	o := mk("*/5 * * * * *")
	g1 := o.cronGroup()
	require.NotEmpty(t, g1)
	require.Equal(t, g1, o.cronGroup(), "asked again, same bindings")
	o.fleet.mu.Lock()
	require.Equal(t, 1, o.fleet.groupOf, "kept for the next ask")
	o.fleet.mu.Unlock()
	tr, err := NewCron(CronConfig{Name: "s1", Spec: "0 * * * * *"})
	require.NoError(t, err)
	require.NoError(t, o.Bind("wf", tr))
	g2 := o.cronGroup()
	require.NotEqual(t, g1, g2, "a binding added")
	require.Equal(t, g2, mk("*/5 * * * * *", "0 * * * * *").cronGroup(), "the same set elsewhere")
	require.Empty(t, mk().cronGroup(), "no cron binding, no group")
}
