package batutaprom_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaprom"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var quiet = slog.New(slog.DiscardHandler)

// countingStore is a real MemoryStore that counts WorkflowStats calls and
// can be told to fail them.
type countingStore struct {
	*batuta.MemoryStore
	calls atomic.Int32
	fail  atomic.Bool
}

func (s *countingStore) WorkflowStats(ctx context.Context, since, now time.Time) ([]batuta.WorkflowStats, error) {
	s.calls.Add(1)
	if s.fail.Load() {
		return nil, errors.New("database unreachable")
	}
	return s.MemoryStore.WorkflowStats(ctx, since, now)
}

// orchestrator returns an orchestrator on store with m as its hooks and
// the workflow "orders": validate, then charge, which fails for good when
// the event's subject is "declined".
func orchestrator(t *testing.T, store batuta.Store, m *batutaprom.Metrics) *batuta.Orchestrator {
	t.Helper()
	o, err := batuta.New(batuta.Config{Store: store, Hooks: []batuta.Hooks{m}, Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "orders", Tasks: []batuta.Task{
		{Name: "validate", Run: func(context.Context, *batuta.Input) (any, error) { return "ok", nil }},
		{Name: "charge", Deps: []string{"validate"}, Run: func(_ context.Context, in *batuta.Input) (any, error) {
			if in.Event().Subject == "declined" {
				return nil, batuta.Permanent(errors.New("card declined"))
			}
			return "receipt", nil
		}},
	}}))
	return o
}

// start runs o until the test ends.
func start(t *testing.T, o *batuta.Orchestrator) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

func TestHooksCountRunsAndAttempts(t *testing.T) {
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	m, err := batutaprom.New(batutaprom.Config{Store: store, Logger: quiet})
	require.NoError(t, err)
	o := orchestrator(t, store, m)
	start(t, o)
	ctx := context.Background()
	for _, subject := range []string{"ok", "ok", "declined"} {
		id, err := o.Submit(ctx, "orders", batuta.Event{Subject: subject})
		require.NoError(t, err)
		_, err = o.Wait(ctx, id)
		require.NoError(t, err)
	}
	// The hooks run after the store recorded the end (Wait may return
	// first): wait for them.
	hooksSettled(t, m, 3, 6)

	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, m.Register(reg))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP batuta_runs_started_total Runs accepted by this process (submitted or fired by a trigger), by workflow.
# TYPE batuta_runs_started_total counter
batuta_runs_started_total{workflow="orders"} 3
# HELP batuta_runs_finished_total Runs that reached a terminal state in this process, by workflow and final state (succeeded, failed, canceled).
# TYPE batuta_runs_finished_total counter
batuta_runs_finished_total{state="failed",workflow="orders"} 1
batuta_runs_finished_total{state="succeeded",workflow="orders"} 2
# HELP batuta_task_attempts_total Task attempts run by this process, by workflow, task and outcome (succeeded, failed, retry, snooze, release, defer, wait, canceled).
# TYPE batuta_task_attempts_total counter
batuta_task_attempts_total{outcome="failed",task="charge",workflow="orders"} 1
batuta_task_attempts_total{outcome="succeeded",task="charge",workflow="orders"} 2
batuta_task_attempts_total{outcome="succeeded",task="validate",workflow="orders"} 3
# HELP batuta_task_attempts_in_flight Task attempts running in this process now, by workflow.
# TYPE batuta_task_attempts_in_flight gauge
batuta_task_attempts_in_flight{workflow="orders"} 0
# HELP batuta_workflow_window_finished_runs Runs finished within the stats window (Config.StatsWindow), by workflow and final state. From Store.WorkflowStats.
# TYPE batuta_workflow_window_finished_runs gauge
batuta_workflow_window_finished_runs{state="canceled",workflow="orders"} 0
batuta_workflow_window_finished_runs{state="failed",workflow="orders"} 1
batuta_workflow_window_finished_runs{state="succeeded",workflow="orders"} 2
# HELP batuta_workflow_runs Unfinished runs in the store now, by workflow and state: running (a task claimed or finished), pending (due, none started) and waiting (start time in the future, or every unfinished task waiting). From Store.WorkflowStats.
# TYPE batuta_workflow_runs gauge
batuta_workflow_runs{state="pending",workflow="orders"} 0
batuta_workflow_runs{state="running",workflow="orders"} 0
batuta_workflow_runs{state="waiting",workflow="orders"} 0
# HELP batuta_stats_up 1 if the last WorkflowStats query (and dead-letter count) made for a scrape succeeded, else 0.
# TYPE batuta_stats_up gauge
batuta_stats_up 1
`), "batuta_runs_started_total", "batuta_runs_finished_total", "batuta_task_attempts_total", "batuta_task_attempts_in_flight",
		"batuta_workflow_window_finished_runs", "batuta_workflow_runs", "batuta_stats_up"))

	// One duration observation per attempt, in the task's series.
	n, err := testutil.GatherAndCount(reg, "batuta_task_attempt_duration_seconds")
	require.NoError(t, err)
	require.Equal(t, 2, n, "one histogram per (workflow, task)")
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "batuta_task_attempt_duration_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			task := mt.GetLabel()[0].GetValue() // labels sorted: task, workflow
			require.Equal(t, map[string]uint64{"validate": 3, "charge": 3}[task], mt.GetHistogram().GetSampleCount(), task)
		}
	}
	problems, err := testutil.CollectAndLint(m)
	require.NoError(t, err)
	require.Empty(t, problems, "promlint")
}

func TestStoreStatsOnScrapeWithCache(t *testing.T) {
	// Runs the orchestrator has not started (it is not running): pending
	// now, and one delayed by an hour: waiting. The gauges come from the
	// store, queried at most once per StatsCacheTTL.
	store := &countingStore{MemoryStore: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}
	clock := &fakeClock{t: time.Now()}
	m, err := batutaprom.New(batutaprom.Config{Store: store, Clock: clock, StatsCacheTTL: time.Minute, Logger: quiet})
	require.NoError(t, err)
	o := orchestrator(t, store, m)
	ctx := context.Background()
	for range 2 {
		_, err := o.Submit(ctx, "orders", batuta.Event{})
		require.NoError(t, err)
	}
	_, err = o.Submit(ctx, "orders", batuta.Event{}, batuta.StartAfter(time.Hour))
	require.NoError(t, err)

	clock.add(30 * time.Second) // the oldest pending run is about 30s old (created just after the clock's start)
	require.Equal(t, 2.0, testutil.ToFloat64(gauge(m, "workflow_runs", "orders", "pending")))
	require.Equal(t, 1.0, testutil.ToFloat64(gauge(m, "workflow_runs", "orders", "waiting")))
	age := testutil.ToFloat64(gauge(m, "workflow_oldest_pending_age_seconds", "orders"))
	require.GreaterOrEqual(t, age, 29.0)
	require.Less(t, age, 3600.0)
	calls := store.calls.Load()
	require.Positive(t, calls)

	// Within the TTL: the cache answers.
	_, err = o.Submit(ctx, "orders", batuta.Event{})
	require.NoError(t, err)
	require.Equal(t, 2.0, testutil.ToFloat64(gauge(m, "workflow_runs", "orders", "pending")))
	require.Equal(t, calls, store.calls.Load())

	// Past it: asked again.
	clock.add(time.Minute)
	require.Equal(t, 3.0, testutil.ToFloat64(gauge(m, "workflow_runs", "orders", "pending")))
	require.Greater(t, store.calls.Load(), calls)

	// A failing store: the previous values stay, stats_up is 0, the error
	// is counted, and the hook metrics are still served.
	store.fail.Store(true)
	clock.add(time.Minute)
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, m.Register(reg))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP batuta_stats_up 1 if the last WorkflowStats query (and dead-letter count) made for a scrape succeeded, else 0.
# TYPE batuta_stats_up gauge
batuta_stats_up 0
# HELP batuta_stats_errors_total Failed WorkflowStats queries or dead-letter counts made for a scrape.
# TYPE batuta_stats_errors_total counter
batuta_stats_errors_total 1
# HELP batuta_runs_started_total Runs accepted by this process (submitted or fired by a trigger), by workflow.
# TYPE batuta_runs_started_total counter
batuta_runs_started_total{workflow="orders"} 4
`), "batuta_stats_up", "batuta_stats_errors_total", "batuta_runs_started_total"))
	require.Equal(t, 3.0, testutil.ToFloat64(gauge(m, "workflow_runs", "orders", "pending")), "kept from the last success")
	require.GreaterOrEqual(t, testutil.ToFloat64(gauge(m, "stats_age_seconds")), 60.0)
}

func TestDeadLettersCounted(t *testing.T) {
	// The queue trigger's dead-letter queue is a DeadLetterBox: its
	// messages are counted on scrape, by workflow and box.
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	m, err := batutaprom.New(batutaprom.Config{Store: store, StatsCacheTTL: -1, Logger: quiet})
	require.NoError(t, err)
	o := orchestrator(t, store, m)
	q, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	require.NoError(t, err)
	defer q.Close()
	dlq, err := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	require.NoError(t, err)
	defer dlq.Close()
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, DeadLetter: batuta.DeadLetterQueue(dlq), Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Bind("orders", trig))
	m.Observe(o)
	boxes := o.DeadLetterBoxes()
	require.Len(t, boxes, 1)
	source := boxes[0].DeadLetterSource()

	ctx := context.Background()
	for i := range 3 {
		require.NoError(t, dlq.Publish(ctx, batuta.Message{ID: "dead-" + string(rune('a'+i)), Body: []byte(`{}`)}))
	}
	require.Equal(t, 3.0, testutil.ToFloat64(gauge(m, "dead_letters", "orders", source)))
	items, err := boxes[0].DeadLetters(ctx, batuta.DeadLetterQuery{})
	require.NoError(t, err)
	n, err := boxes[0].Delete(ctx, items[0].ID)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, 2.0, testutil.ToFloat64(gauge(m, "dead_letters", "orders", source)))

	// The cap.
	m2, err := batutaprom.New(batutaprom.Config{MaxDeadLetters: 1, Logger: quiet})
	require.NoError(t, err)
	m2.ObserveDeadLetters(boxes...)
	require.Equal(t, 1.0, testutil.ToFloat64(gauge(m2, "dead_letters", "orders", source)))
}

func TestHandlerServesMetrics(t *testing.T) {
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	m, err := batutaprom.New(batutaprom.Config{Store: store, Logger: quiet})
	require.NoError(t, err)
	o := orchestrator(t, store, m)
	start(t, o)
	ctx := context.Background()
	id, err := o.Submit(ctx, "orders", batuta.Event{})
	require.NoError(t, err)
	_, err = o.Wait(ctx, id)
	require.NoError(t, err)
	hooksSettled(t, m, 1, 2)

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	for _, want := range []string{
		`batuta_runs_finished_total{state="succeeded",workflow="orders"} 1`,
		`batuta_task_attempt_duration_seconds_bucket{task="charge",workflow="orders",le="+Inf"} 1`,
		`batuta_workflow_window_run_duration_p95_seconds{workflow="orders"}`,
		"go_goroutines ", "process_start_time_seconds ",
	} {
		require.Contains(t, string(body), want)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg   batutaprom.Config
		field string
	}{
		{batutaprom.Config{StatsWindow: -1}, "StatsWindow"},
		{batutaprom.Config{StatsTimeout: -1}, "StatsTimeout"},
		{batutaprom.Config{MaxDeadLetters: -1}, "MaxDeadLetters"},
		{batutaprom.Config{DurationBuckets: []float64{1, 1}}, "DurationBuckets[1]"},
		{batutaprom.Config{DurationBuckets: []float64{-1}}, "DurationBuckets[0]"},
	} {
		_, err := batutaprom.New(tc.cfg)
		var ce *batuta.ConfigError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, tc.field, ce.Field)
		require.ErrorIs(t, err, batuta.ErrInvalidConfig)
	}
	m, err := batutaprom.New(batutaprom.Config{})
	require.NoError(t, err)
	require.NoError(t, m.Register(prometheus.NewRegistry()))
	reg := prometheus.NewRegistry()
	require.NoError(t, m.Register(reg))
	require.Error(t, m.Register(reg), "registering twice in one registry is refused")
}

// hooksSettled waits (with a deadline) until the hooks counted runs
// finished runs and attempts finished attempts, none in flight.
func hooksSettled(t *testing.T, m *batutaprom.Metrics, runs, attempts int) {
	t.Helper()
	sum := func(name string) float64 {
		reg := prometheus.NewRegistry()
		require.NoError(t, reg.Register(m))
		mfs, err := reg.Gather()
		require.NoError(t, err)
		total := 0.0
		for _, mf := range mfs {
			if mf.GetName() == name {
				for _, mt := range mf.GetMetric() {
					total += mt.GetCounter().GetValue() + mt.GetGauge().GetValue()
				}
			}
		}
		return total
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, a, f := sum("batuta_runs_finished_total"), sum("batuta_task_attempts_total"), sum("batuta_task_attempts_in_flight")
		if r == float64(runs) && a == float64(attempts) && f == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("hooks did not settle: %v runs finished (want %d), %v attempts (want %d), %v in flight", r, runs, a, attempts, f)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
}

// gauge collects the one series of the named metric with these label
// values (in the metric's label order), as a Collector for testutil.
func gauge(m *batutaprom.Metrics, name string, values ...string) prometheus.Collector {
	return filtered{m, "batuta_" + name, values}
}

type filtered struct {
	m      *batutaprom.Metrics
	name   string
	values []string
}

func (f filtered) Describe(ch chan<- *prometheus.Desc) { f.m.Describe(ch) }

func (f filtered) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric, 1024)
	go func() { f.m.Collect(all); close(all) }()
	for mt := range all {
		if !strings.Contains(mt.Desc().String(), `fqName: "`+f.name+`"`) {
			continue
		}
		var dm dtoMetric
		if err := mt.Write(&dm.Metric); err != nil {
			continue
		}
		if dm.has(f.values) {
			ch <- mt
		}
	}
}

// fakeClock is a batuta.Clock that moves only when told.
type fakeClock struct {
	mu atomic.Int64
	t  time.Time
}

func (c *fakeClock) Now() time.Time { return c.t.Add(time.Duration(c.mu.Load())) }

func (c *fakeClock) add(d time.Duration) { c.mu.Add(int64(d)) }

func (c *fakeClock) NewTimer(d time.Duration) batuta.Timer { return batuta.SystemClock{}.NewTimer(d) }

// dtoMetric is a collected metric, to match its label values.
type dtoMetric struct{ Metric dto.Metric }

// has reports whether the metric's label values are exactly values, in
// any order.
func (d *dtoMetric) has(values []string) bool {
	labels := d.Metric.GetLabel()
	if len(labels) != len(values) {
		return false
	}
	left := map[string]int{}
	for _, v := range values {
		left[v]++
	}
	for _, l := range labels {
		if left[l.GetValue()] == 0 {
			return false
		}
		left[l.GetValue()]--
	}
	return true
}

// TestGrafanaDashboardUsesOnlyExportedMetrics holds docs/grafana/batuta.json
// to the collector: it parses, and every batuta_* series its queries read
// is one Metrics describes (histograms with their _bucket, _sum, _count).
func TestGrafanaDashboardUsesOnlyExportedMetrics(t *testing.T) {
	b, err := os.ReadFile("../../docs/grafana/batuta.json")
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(b, &dash))

	m, err := batutaprom.New(batutaprom.Config{})
	require.NoError(t, err)
	known := map[string]bool{}
	descs := make(chan *prometheus.Desc, 64)
	m.Describe(descs)
	close(descs)
	name := regexp.MustCompile(`fqName: "([a-z0-9_]+)"`)
	for d := range descs {
		n := name.FindStringSubmatch(d.String())[1]
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			known[n+suffix] = true
		}
	}
	series := regexp.MustCompile(`\bbatuta_[a-z0-9_]+`)
	queries := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			queries++
			for _, s := range series.FindAllString(tg.Expr, -1) {
				require.Truef(t, known[s], "panel %q reads %s, which batutaprom does not export", p.Title, s)
			}
		}
	}
	require.Greater(t, queries, 10)
}
