package batutaprom_test

import (
	"context"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaprom"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// gathered returns the value of the series name{labels} (a histogram's
// sample count), and whether it was there.
func gathered(t *testing.T, m *batutaprom.Metrics, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, m.Register(reg))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, s := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range s.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			switch {
			case s.Histogram != nil:
				return float64(s.GetHistogram().GetSampleCount()), true
			case s.Counter != nil:
				return s.GetCounter().GetValue(), true
			default:
				return s.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

// TestStoreCallsRescuesAndTriggers: the executor's store calls, a rescue of
// a task whose worker died, and the bound triggers' health show in the
// metrics.
func TestStoreCallsRescuesAndTriggers(t *testing.T) {
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	m, err := batutaprom.New(batutaprom.Config{Store: store, Logger: quiet})
	require.NoError(t, err)
	o, err := batuta.New(batuta.Config{Store: store, Hooks: []batuta.Hooks{m}, Logger: quiet, LeaseDuration: 100 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "nightly", Tasks: []batuta.Task{
		{Name: "export", Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil }},
	}}))
	cron, err := batuta.NewCron(batuta.CronConfig{Name: "nightly", Spec: "0 3 * * *"})
	require.NoError(t, err)
	require.NoError(t, o.Bind("nightly", cron))
	m.Observe(o)

	// A run whose task was claimed by a worker that died.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	lost, err := o.Submit(ctx, "nightly", batuta.Event{})
	require.NoError(t, err)
	now := time.Now()
	cs, err := store.ClaimTasks(ctx, batuta.ClaimParams{Owner: "dead", Workflows: []string{"nightly"}, Limit: 1, Now: now, LeaseUntil: now.Add(50 * time.Millisecond)})
	require.NoError(t, err)
	require.Len(t, cs, 1)

	start(t, o)
	r, err := o.Wait(ctx, lost)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	for range 3 {
		id, err := o.Submit(ctx, "nightly", batuta.Event{})
		require.NoError(t, err)
		_, err = o.Wait(ctx, id)
		require.NoError(t, err)
	}

	// The rescuer reports after the store call returns: the rescued task
	// may have run by then. Wait for the report.
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(prometheusCounter(t, m, "batuta_rescues_total", "rescued")) != 1 {
		require.True(t, time.Now().Before(deadline), "batuta_rescues_total{outcome=rescued} never 1")
		time.Sleep(5 * time.Millisecond)
	}
	// A call is observed after it returns, and Wait can return (the
	// store publishes the run's end) before the last one is: wait for it.
	var n float64
	var ok bool
	for {
		n, ok = gathered(t, m, "batuta_store_call_duration_seconds", map[string]string{"op": "complete"})
		if ok && n >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	require.True(t, ok, "no complete series")
	require.GreaterOrEqual(t, n, 4.0, "every task recorded through an observed call")
	n, ok = gathered(t, m, "batuta_store_call_duration_seconds", map[string]string{"op": "rescue"})
	require.True(t, ok)
	require.GreaterOrEqual(t, n, 1.0)
	// The cron trigger runs: up, once the orchestrator started it.
	deadline = time.Now().Add(10 * time.Second)
	for {
		up, ok := gathered(t, m, "batuta_trigger_up", map[string]string{"workflow": "nightly", "kind": batuta.TriggerKindCron})
		if ok && up == 1 {
			break
		}
		require.True(t, time.Now().Before(deadline), "trigger_up = %v (present %v)", up, ok)
		time.Sleep(10 * time.Millisecond)
	}
	restarts, ok := gathered(t, m, "batuta_trigger_restarts", map[string]string{"workflow": "nightly"})
	require.True(t, ok)
	require.Equal(t, 0.0, restarts)
}

// prometheusCounter reads one batuta_rescues_total series as a collector
// testutil.ToFloat64 accepts.
func prometheusCounter(t *testing.T, m *batutaprom.Metrics, name, outcome string) prometheus.Collector {
	t.Helper()
	v, ok := gathered(t, m, name, map[string]string{"outcome": outcome})
	require.True(t, ok, "%s{outcome=%q} missing", name, outcome)
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	c.Add(v)
	return c
}
