// Package batutaprom exposes batuta's metrics to Prometheus through
// client_golang: a [Metrics] value is both the orchestrator's
// [batuta.Hooks] (runs started and finished, task attempts and their
// durations, attempts in flight, counted as they happen in this process)
// and a [prometheus.Collector] that, when scraped, asks the Store for
// [batuta.Store.WorkflowStats] (runs running, pending and waiting now, the
// age of the oldest due run, the finished runs and their duration
// percentiles over a window: the view of every process sharing the store)
// and counts the dead letters of the orchestrator's triggers, each with a
// cache so that scrapes from several Prometheus servers cost one query.
//
//	m, err := batutaprom.New(batutaprom.Config{Store: store})
//	if err != nil { ... }
//	o, err := batuta.New(batuta.Config{Store: store, Hooks: []batuta.Hooks{m}})
//	m.Observe(o) // dead letters of o's triggers
//	mux.Handle("/metrics", m.Handler())
//
// Or register m into your own registry with [Metrics.Register] (it is a
// prometheus.Collector). docs/metrics.md in the repository lists every
// metric and ships a Grafana dashboard (docs/grafana/batuta.json).
package batutaprom

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/batuta-dev/batuta"
)

// Config configures [New]. The zero value is valid: hook metrics only (no
// store statistics, no dead letters), namespace "batuta".
type Config struct {
	// Store, if set, is asked for WorkflowStats when the metrics are
	// collected (at most once per StatsCacheTTL): the batuta_workflow_*
	// gauges. Without it they are left out.
	Store batuta.Store
	// StatsWindow is the window of finished runs that the
	// batuta_workflow_window_* gauges summarise. Default 5m.
	StatsWindow time.Duration
	// StatsCacheTTL is how long a collected WorkflowStats answer (and a
	// dead-letter count) is reused by later scrapes. Default 15s; negative
	// asks the store at every scrape.
	StatsCacheTTL time.Duration
	// StatsTimeout bounds one WorkflowStats call or dead-letter count.
	// Default 5s. On error or timeout the previous values are kept,
	// batuta_stats_up is 0 and batuta_stats_errors_total grows.
	StatsTimeout time.Duration
	// BacklogTimeout bounds, at each scrape, the wait for the bound
	// triggers' backlogs (batuta.ReadBacklogs: every source asked at
	// once); a source that does not answer in time is left out of
	// batuta_trigger_backlog and batuta_trigger_lag_seconds for that
	// scrape and counted in batuta_trigger_backlog_errors_total. Default
	// 1s.
	BacklogTimeout time.Duration
	// MaxDeadLetters caps the dead letters counted per box at one scrape
	// (boxes list pages of at most batuta.MaxDeadLetterLimit): a larger
	// box reports MaxDeadLetters. Default 10000.
	MaxDeadLetters int
	// Namespace prefixes every metric name. Default "batuta".
	Namespace string
	// DurationBuckets are the bucket boundaries, in seconds, of
	// batuta_task_attempt_duration_seconds. Default (nil):
	// DefaultDurationBuckets. Must be strictly increasing.
	DurationBuckets []float64
	// ConstLabels are added to every metric (an instance or service name).
	ConstLabels prometheus.Labels
	// Clock is the orchestrator's clock (for the stats window and the age
	// of the oldest pending run). Default batuta.SystemClock.
	Clock batuta.Clock
	// Logger receives a warning when WorkflowStats or a dead-letter count
	// fails. Default slog.Default().
	Logger *slog.Logger
}

// DefaultDurationBuckets are the default attempt duration buckets in
// seconds: from 5ms, for a task that is a quick call, to an hour, for a
// batch job (batutaotel uses the same).
var DefaultDurationBuckets = []float64{
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
}

func (c Config) withDefaults() Config {
	if c.StatsWindow == 0 {
		c.StatsWindow = 5 * time.Minute
	}
	if c.StatsCacheTTL == 0 {
		c.StatsCacheTTL = 15 * time.Second
	}
	if c.StatsTimeout == 0 {
		c.StatsTimeout = 5 * time.Second
	}
	if c.BacklogTimeout == 0 {
		c.BacklogTimeout = time.Second
	}
	if c.MaxDeadLetters == 0 {
		c.MaxDeadLetters = 10000
	}
	if c.Namespace == "" {
		c.Namespace = "batuta"
	}
	if c.DurationBuckets == nil {
		c.DurationBuckets = DefaultDurationBuckets
	}
	if c.Clock == nil {
		c.Clock = batuta.SystemClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.StatsWindow < 0:
		return &batuta.ConfigError{Field: "StatsWindow", Reason: "must not be negative"}
	case c.StatsTimeout < 0:
		return &batuta.ConfigError{Field: "StatsTimeout", Reason: "must not be negative"}
	case c.BacklogTimeout < 0:
		return &batuta.ConfigError{Field: "BacklogTimeout", Reason: "must not be negative"}
	case c.MaxDeadLetters < 0:
		return &batuta.ConfigError{Field: "MaxDeadLetters", Reason: "must not be negative"}
	}
	for i, b := range c.DurationBuckets {
		if math.IsNaN(b) || math.IsInf(b, 0) || b < 0 {
			return &batuta.ConfigError{Field: fmt.Sprintf("DurationBuckets[%d]", i), Reason: "must be finite and not negative"}
		}
		if i > 0 && b <= c.DurationBuckets[i-1] {
			return &batuta.ConfigError{Field: fmt.Sprintf("DurationBuckets[%d]", i), Reason: "must be greater than the one before"}
		}
	}
	return nil
}

// Metrics is batuta's Prometheus instrumentation: install it as one of
// batuta.Config.Hooks and expose it with Handler or Register. Its hook
// methods are safe for concurrent use, never block and start no
// goroutines; Collect may query the store (see Config.Store). Build it
// with New; the zero Metrics is not usable.
type Metrics struct {
	cfg Config

	runsStarted  *prometheus.CounterVec
	runsFinished *prometheus.CounterVec
	attempts     *prometheus.CounterVec
	timeouts     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	inFlight     *prometheus.GaugeVec
	statsErrors  prometheus.Counter
	storeCalls   *prometheus.HistogramVec
	storeErrors  *prometheus.CounterVec
	rescues      *prometheus.CounterVec

	runsNow       *prometheus.Desc
	oldestPending *prometheus.Desc
	windowRuns    *prometheus.Desc
	windowP50     *prometheus.Desc
	windowP95     *prometheus.Desc
	deadLetters   *prometheus.Desc
	statsUp       *prometheus.Desc
	statsAge      *prometheus.Desc
	trigUp        *prometheus.Desc
	trigRestarts  *prometheus.Desc
	trigParked    *prometheus.Desc
	trigBacklog   *prometheus.Desc
	trigLag       *prometheus.Desc
	backlogErrors *prometheus.CounterVec

	mu        sync.Mutex // guards what follows; held across a refresh (one query at a time)
	boxes     func() []batuta.BoundDeadLetterBox
	bindings  func() []batuta.BindingInfo
	stats     []batuta.WorkflowStats
	statsAt   time.Time // when stats were fetched (zero: never)
	statsOK   bool
	dead      []deadCount
	refreshed time.Time // the last refresh attempt
}

type deadCount struct {
	workflow, source string
	n                int
}

var (
	_ batuta.Hooks         = (*Metrics)(nil)
	_ batuta.StoreHooks    = (*Metrics)(nil)
	_ prometheus.Collector = (*Metrics)(nil)
)

// New returns Metrics configured by cfg, or a *batuta.ConfigError naming a
// bad field.
func New(cfg Config) (*Metrics, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	ns, cl := cfg.Namespace, cfg.ConstLabels
	m := &Metrics{cfg: cfg}
	m.runsStarted = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "runs_started_total", ConstLabels: cl,
		Help: "Runs accepted by this process (submitted or fired by a trigger), by workflow."}, []string{"workflow"})
	m.runsFinished = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "runs_finished_total", ConstLabels: cl,
		Help: "Runs that reached a terminal state in this process, by workflow and final state (succeeded, failed, canceled)."}, []string{"workflow", "state"})
	m.attempts = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "task_attempts_total", ConstLabels: cl,
		Help: "Task attempts run by this process, by workflow, task and outcome (succeeded, failed, retry, snooze, release, defer, wait, canceled)."}, []string{"workflow", "task", "outcome"})
	m.timeouts = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "task_attempt_timeouts_total", ConstLabels: cl,
		Help: "Task attempts that exceeded their timeout, by workflow and task."}, []string{"workflow", "task"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "task_attempt_duration_seconds", ConstLabels: cl,
		Help: "Duration of task attempts in this process, by workflow and task.", Buckets: cfg.DurationBuckets}, []string{"workflow", "task"})
	m.inFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "task_attempts_in_flight", ConstLabels: cl,
		Help: "Task attempts running in this process now, by workflow."}, []string{"workflow"})
	m.statsErrors = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "stats_errors_total", ConstLabels: cl,
		Help: "Failed WorkflowStats queries or dead-letter counts made for a scrape."})
	m.storeCalls = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "store_call_duration_seconds", ConstLabels: cl,
		Help:    "Duration of this process's executor calls to the Store, by op: claim (a claim round), complete (a batch of completions), rescue (a rescuer pass).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}, []string{"op"})
	m.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "store_call_errors_total", ConstLabels: cl,
		Help: "Executor calls to the Store that returned an error, by op."}, []string{"op"})
	m.rescues = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "rescues_total", ConstLabels: cl,
		Help: "Tasks whose lease expired (their worker died or stalled) found by this process's rescuer, by outcome: rescued (ready again) or failed (over MaxRescues)."}, []string{"outcome"})
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, cl)
	}
	m.runsNow = desc("workflow_runs", "Unfinished runs in the store now, by workflow and state: running (a task claimed or finished), pending (due, none started) and waiting (start time in the future, or every unfinished task waiting). From Store.WorkflowStats.", "workflow", "state")
	m.oldestPending = desc("workflow_oldest_pending_age_seconds", "Age of the oldest due pending run of the workflow (0 if none): how far behind the workers are. From Store.WorkflowStats.", "workflow")
	m.windowRuns = desc("workflow_window_finished_runs", "Runs finished within the stats window (Config.StatsWindow), by workflow and final state. From Store.WorkflowStats.", "workflow", "state")
	m.windowP50 = desc("workflow_window_run_duration_p50_seconds", "Median duration, creation to finish, of the runs finished within the stats window, by workflow (0 if none). From Store.WorkflowStats.", "workflow")
	m.windowP95 = desc("workflow_window_run_duration_p95_seconds", "95th percentile of the duration, creation to finish, of the runs finished within the stats window, by workflow (0 if none). From Store.WorkflowStats.", "workflow")
	m.deadLetters = desc("dead_letters", "Dead letters kept by the triggers' dead-letter boxes (outbox dead rows, a queue trigger's dead-letter queue), by workflow and box; capped at Config.MaxDeadLetters.", "workflow", "source")
	m.statsUp = desc("stats_up", "1 if the last WorkflowStats query (and dead-letter count) made for a scrape succeeded, else 0.")
	m.statsAge = desc("stats_age_seconds", "Age of the store statistics reported (they are cached for Config.StatsCacheTTL).")
	m.trigUp = desc("trigger_up", "1 if the bound trigger runs in this process and has not failed in the last minute, else 0 (Orchestrator.Bindings), by workflow and kind.", "workflow", "kind")
	m.trigRestarts = desc("trigger_restarts", "How often the bound trigger returned early (an error or a panic) and was restarted, by workflow and kind.", "workflow", "kind")
	m.trigParked = desc("trigger_parked_messages", "Messages a queue trigger holds back after its dead-letter destination failed (its local backlog), by workflow and kind; only for triggers that tell.", "workflow", "kind")
	m.trigBacklog = desc("trigger_backlog", "Events waiting at the bound trigger's source, by workflow, kind and state: pending (not taken by a consumer) and in_flight (taken, not settled; left out when the source does not tell). Read at each scrape from the sources that tell (batuta.BacklogReporter), within Config.BacklogTimeout.", "workflow", "kind", "state")
	m.trigLag = desc("trigger_lag_seconds", "How long the oldest event waiting at the bound trigger's source has waited (0 if none), by workflow and kind; only for sources that tell when their events came.", "workflow", "kind")
	m.backlogErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "trigger_backlog_errors_total", ConstLabels: cl,
		Help: "Backlog reads of a bound trigger's source that failed or did not answer within Config.BacklogTimeout, by workflow and kind."}, []string{"workflow", "kind"})
	m.rescues.WithLabelValues("rescued")
	m.rescues.WithLabelValues("failed")
	return m, nil
}

// Observe makes the collector count the dead letters of o's triggers
// (batuta.Orchestrator.DeadLetterBoxes, read at each refresh, so triggers
// bound later count too). Call it once the orchestrator exists: Metrics is
// created first, to be one of its Hooks.
func (m *Metrics) Observe(o *batuta.Orchestrator) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.boxes = o.DeadLetterBoxes
	m.bindings = o.Bindings
}

// ObserveDeadLetters makes the collector count the dead letters of boxes
// (an outbox trigger, say, that no orchestrator of this process binds).
func (m *Metrics) ObserveDeadLetters(boxes ...batuta.BoundDeadLetterBox) {
	m.mu.Lock()
	defer m.mu.Unlock()
	prev := m.boxes
	m.boxes = func() []batuta.BoundDeadLetterBox {
		var out []batuta.BoundDeadLetterBox
		if prev != nil {
			out = prev()
		}
		return append(out, boxes...)
	}
}

// Handler returns an http.Handler serving these metrics, with the Go
// runtime and process collectors, in the Prometheus exposition formats.
// Each call builds its own registry.
func (m *Metrics) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogErrorLog{m.cfg.Logger}})
}

// Register registers m into reg (prometheus.DefaultRegisterer, or your
// registry).
func (m *Metrics) Register(reg prometheus.Registerer) error {
	if err := reg.Register(m); err != nil {
		return fmt.Errorf("batutaprom: register: %w", err)
	}
	return nil
}

// slogErrorLog adapts a slog.Logger to promhttp's ErrorLog.
type slogErrorLog struct{ l *slog.Logger }

func (e slogErrorLog) Println(v ...any) { e.l.Warn("batutaprom: serving metrics: " + fmt.Sprint(v...)) }

// RunStarted counts the run in batuta_runs_started_total.
func (m *Metrics) RunStarted(_ context.Context, r batuta.RunInfo) {
	m.runsStarted.WithLabelValues(r.Workflow).Inc()
}

// RunFinished counts the run in batuta_runs_finished_total.
func (m *Metrics) RunFinished(_ context.Context, r batuta.RunInfo) {
	m.runsFinished.WithLabelValues(r.Workflow, string(r.State)).Inc()
}

// AttemptStarted counts the attempt in flight; it returns ctx.
func (m *Metrics) AttemptStarted(ctx context.Context, a batuta.AttemptInfo) context.Context {
	m.inFlight.WithLabelValues(a.Workflow).Inc()
	return ctx
}

// AttemptFinished counts the attempt by outcome and observes its
// duration.
func (m *Metrics) AttemptFinished(_ context.Context, a batuta.AttemptInfo) {
	m.inFlight.WithLabelValues(a.Workflow).Dec()
	m.attempts.WithLabelValues(a.Workflow, a.Task, string(a.Outcome)).Inc()
	if a.TimedOut {
		m.timeouts.WithLabelValues(a.Workflow, a.Task).Inc()
	}
	if !a.Started.IsZero() && !a.Finished.Before(a.Started) {
		m.duration.WithLabelValues(a.Workflow, a.Task).Observe(a.Finished.Sub(a.Started).Seconds())
	}
}

// StoreCall implements batuta.StoreHooks: it observes the call's duration
// in batuta_store_call_duration_seconds and counts an error in
// batuta_store_call_errors_total.
func (m *Metrics) StoreCall(op batuta.StoreOp, took time.Duration, _ int, err error) {
	m.storeCalls.WithLabelValues(string(op)).Observe(took.Seconds())
	if err != nil {
		m.storeErrors.WithLabelValues(string(op)).Inc()
	}
}

// Rescued implements batuta.StoreHooks: batuta_rescues_total.
func (m *Metrics) Rescued(rescued, failed int) {
	m.rescues.WithLabelValues("rescued").Add(float64(rescued))
	m.rescues.WithLabelValues("failed").Add(float64(failed))
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.runsStarted.Describe(ch)
	m.runsFinished.Describe(ch)
	m.attempts.Describe(ch)
	m.timeouts.Describe(ch)
	m.duration.Describe(ch)
	m.inFlight.Describe(ch)
	m.statsErrors.Describe(ch)
	m.storeCalls.Describe(ch)
	m.storeErrors.Describe(ch)
	m.rescues.Describe(ch)
	m.backlogErrors.Describe(ch)
	for _, d := range []*prometheus.Desc{m.runsNow, m.oldestPending, m.windowRuns, m.windowP50, m.windowP95, m.deadLetters, m.statsUp, m.statsAge,
		m.trigUp, m.trigRestarts, m.trigParked, m.trigBacklog, m.trigLag} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the hook metrics, then the
// store statistics and dead-letter counts, refreshed if older than
// Config.StatsCacheTTL.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.runsStarted.Collect(ch)
	m.runsFinished.Collect(ch)
	m.attempts.Collect(ch)
	m.timeouts.Collect(ch)
	m.duration.Collect(ch)
	m.inFlight.Collect(ch)
	m.storeCalls.Collect(ch)
	m.storeErrors.Collect(ch)
	m.rescues.Collect(ch)

	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Clock.Now()
	if m.bindings != nil {
		bs := m.bindings()
		m.collectTriggers(ch, bs, now)
		m.collectBacklogs(ch, bs)
	}
	m.backlogErrors.Collect(ch)
	if m.refreshed.IsZero() || m.cfg.StatsCacheTTL < 0 || now.Sub(m.refreshed) >= m.cfg.StatsCacheTTL {
		m.refresh(now)
	}
	m.statsErrors.Collect(ch)
	if m.cfg.Store != nil || m.boxes != nil {
		up := 0.0
		if m.statsOK {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(m.statsUp, prometheus.GaugeValue, up)
	}
	if !m.statsAt.IsZero() {
		ch <- prometheus.MustNewConstMetric(m.statsAge, prometheus.GaugeValue, now.Sub(m.statsAt).Seconds())
	}
	for _, s := range m.stats {
		w := s.Workflow
		ch <- prometheus.MustNewConstMetric(m.runsNow, prometheus.GaugeValue, float64(s.Running), w, "running")
		ch <- prometheus.MustNewConstMetric(m.runsNow, prometheus.GaugeValue, float64(s.Pending), w, "pending")
		ch <- prometheus.MustNewConstMetric(m.runsNow, prometheus.GaugeValue, float64(s.Waiting), w, "waiting")
		age := 0.0
		if !s.OldestPending.IsZero() {
			age = max(0, m.statsAt.Sub(s.OldestPending).Seconds())
		}
		ch <- prometheus.MustNewConstMetric(m.oldestPending, prometheus.GaugeValue, age, w)
		ch <- prometheus.MustNewConstMetric(m.windowRuns, prometheus.GaugeValue, float64(s.Succeeded), w, "succeeded")
		ch <- prometheus.MustNewConstMetric(m.windowRuns, prometheus.GaugeValue, float64(s.Failed), w, "failed")
		ch <- prometheus.MustNewConstMetric(m.windowRuns, prometheus.GaugeValue, float64(s.Canceled), w, "canceled")
		ch <- prometheus.MustNewConstMetric(m.windowP50, prometheus.GaugeValue, s.DurationP50.Seconds(), w)
		ch <- prometheus.MustNewConstMetric(m.windowP95, prometheus.GaugeValue, s.DurationP95.Seconds(), w)
	}
	for _, d := range m.dead {
		ch <- prometheus.MustNewConstMetric(m.deadLetters, prometheus.GaugeValue, float64(d.n), d.workflow, d.source)
	}
}

// collectTriggers reports the bound triggers (read at every scrape: it is
// this process's memory, no query), one series per workflow and kind: up
// only if every such trigger is healthy, restarts and parked messages
// summed.
func (m *Metrics) collectTriggers(ch chan<- prometheus.Metric, bs []batuta.BindingInfo, now time.Time) {
	type key struct{ workflow, kind string }
	type agg struct {
		up, told         bool
		restarts, parked int64
	}
	var keys []key
	seen := map[key]*agg{}
	for _, b := range bs {
		k := key{b.Workflow, b.Kind}
		a := seen[k]
		if a == nil {
			a = &agg{up: true}
			seen[k] = a
			keys = append(keys, k)
		}
		a.up = a.up && b.Healthy(now)
		a.restarts += int64(b.Restarts)
		if b.Parked >= 0 {
			a.told = true
			a.parked += b.Parked
		}
	}
	for _, k := range keys {
		a := seen[k]
		up := 0.0
		if a.up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(m.trigUp, prometheus.GaugeValue, up, k.workflow, k.kind)
		ch <- prometheus.MustNewConstMetric(m.trigRestarts, prometheus.GaugeValue, float64(a.restarts), k.workflow, k.kind)
		if a.told {
			ch <- prometheus.MustNewConstMetric(m.trigParked, prometheus.GaugeValue, float64(a.parked), k.workflow, k.kind)
		}
	}
}

// refresh queries the store and counts the dead letters; m.mu is held. A
// failure keeps the previous values.
func (m *Metrics) refresh(now time.Time) {
	m.refreshed = now
	ok := true
	if m.cfg.Store != nil {
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.StatsTimeout)
		stats, err := m.cfg.Store.WorkflowStats(ctx, now.Add(-m.cfg.StatsWindow), now)
		cancel()
		if err != nil {
			ok = false
			m.statsErrors.Inc()
			m.cfg.Logger.Warn("batutaprom: WorkflowStats failed; keeping the previous values", slog.Any("error", err))
		} else {
			m.stats, m.statsAt = stats, now
		}
	}
	if m.boxes != nil {
		var counts []deadCount
		boxOK := true
		for _, b := range m.boxes() {
			n, err := m.countDead(b.DeadLetterBox)
			if err != nil {
				boxOK = false
				m.statsErrors.Inc()
				m.cfg.Logger.Warn("batutaprom: counting dead letters failed; keeping the previous values",
					slog.String("source", b.DeadLetterSource()), slog.Any("error", err))
				break
			}
			counts = append(counts, deadCount{workflow: b.Workflow, source: b.DeadLetterSource(), n: n})
		}
		if boxOK {
			m.dead = counts
		}
		ok = ok && boxOK
	}
	m.statsOK = ok
}

// countDead counts the dead letters of box, up to MaxDeadLetters: with
// batuta.DeadLetterCounter if the box is one, else by paging through it.
func (m *Metrics) countDead(box batuta.DeadLetterBox) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.StatsTimeout)
	defer cancel()
	if c, ok := box.(batuta.DeadLetterCounter); ok {
		n, err := c.CountDeadLetters(ctx)
		if err != nil {
			return 0, err
		}
		return min(n, m.cfg.MaxDeadLetters), nil
	}
	n, after := 0, ""
	for n < m.cfg.MaxDeadLetters {
		limit := min(batuta.MaxDeadLetterLimit, m.cfg.MaxDeadLetters-n)
		page, err := box.DeadLetters(ctx, batuta.DeadLetterQuery{After: after, Limit: limit})
		if err != nil {
			return 0, err
		}
		n += len(page)
		if len(page) < limit || page[len(page)-1].ID == after {
			break
		}
		after = page[len(page)-1].ID
	}
	return min(n, m.cfg.MaxDeadLetters), nil
}
