package batuta

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Config configures an Orchestrator. The zero value is valid: an in-memory
// store, slog.Default(), and the defaults documented on each field.
type Config struct {
	// Store keeps runs. Default: NewMemoryStore(MemoryStoreConfig{}), which
	// does not survive the process.
	Store Store
	// Logger receives the orchestrator's logs. Default slog.Default().
	Logger *slog.Logger
	// Hooks observe runs and attempts, in order, after the built-in log
	// hooks.
	Hooks []Hooks
	// NoLogHooks turns off the built-in hooks that log runs and attempts.
	NoLogHooks bool
	// Clock tells time. Default SystemClock{}. Tests pass a fake.
	Clock Clock
	// Workers is the number of tasks run at once. Default 100 with a
	// durable store (as River's MaxWorkers), max(16, 4*GOMAXPROCS) with
	// the memory store. A durable store's worker waits for its
	// completion's commit before it takes its next task, and the commits
	// of concurrent workers are batched: with 16 workers, 10,000 timers
	// due in one second fired over 2.5 s on PostgreSQL here, with 100 in
	// 1.4 s (BENCHMARKS.md). Lower it for tasks that are CPU-bound or
	// hold scarce resources, or use a Concurrency limit.
	Workers int
	// ClaimBatch is the most tasks claimed from the store at once.
	// Default Workers.
	ClaimBatch int
	// MaxInFlightRuns caps unfinished runs: past it, Submit and trigger
	// fires return ErrBusy (SubmitBlocking waits). Default 10,000;
	// negative means no cap.
	MaxInFlightRuns int
	// MaxPayloadBytes caps event data (plus metadata) and, with a durable
	// store, each task's JSON-encoded output. Default 256 KiB.
	MaxPayloadBytes int
	// ShutdownGrace is how long running tasks may keep running after Run's
	// ctx ends before their ctx is canceled. Default 10s.
	ShutdownGrace time.Duration
	// ShutdownKill is how long Run waits after canceling tasks for them to
	// return; tasks still running then (ignoring their ctx) are abandoned
	// and named in the log, and Run returns. Default 2s.
	ShutdownKill time.Duration
	// LeaseDuration is how long a claimed task is leased before another
	// worker may rescue it; leases are renewed every LeaseDuration/3 while
	// the task runs. Default 30s.
	LeaseDuration time.Duration
	// MaxRescues is how often a task may lose its worker (lease expired)
	// before it fails for good. Default 3.
	MaxRescues int
	// PollInterval is how often idle workers look for work they were not
	// told about (retries due, runs created by other processes). Default
	// 1s; stores that notify (WorkNotifier) make most polls unnecessary.
	// With a store that publishes run ends (RunWatcher), Wait's fallback
	// poll starts at 5 PollIntervals.
	PollInterval time.Duration
	// NodeID names this orchestrator in leases and logs. Default a random
	// UUID.
	NodeID string
	// Retention is how long finished runs (and with them their dedupe
	// keys) are kept; a pruner deletes older ones in small batches every
	// RetentionInterval. Default 7 days; negative keeps them forever. The
	// in-memory store also applies its own MemoryStoreConfig bounds.
	Retention time.Duration
	// RetentionCount, if > 0, also keeps at most this many finished runs.
	RetentionCount int
	// RetentionInterval is how often the pruner runs. Default 1 minute.
	RetentionInterval time.Duration
}

// durableWorkers is the default Workers with a durable store.
const durableWorkers = 100

func (c Config) withDefaults() Config {
	if c.Store == nil {
		c.Store = NewMemoryStore(MemoryStoreConfig{})
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	if c.Workers == 0 {
		c.Workers = max(16, 4*runtime.GOMAXPROCS(0))
		if c.Store != nil && c.Store.Durable() {
			c.Workers = max(durableWorkers, c.Workers)
		}
	}
	if c.ClaimBatch == 0 {
		c.ClaimBatch = c.Workers
	}
	if c.MaxInFlightRuns == 0 {
		c.MaxInFlightRuns = 10000
	}
	if c.MaxPayloadBytes == 0 {
		c.MaxPayloadBytes = 256 << 10
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 10 * time.Second
	}
	if c.ShutdownKill == 0 {
		c.ShutdownKill = 2 * time.Second
	}
	if c.LeaseDuration == 0 {
		c.LeaseDuration = 30 * time.Second
	}
	if c.MaxRescues == 0 {
		c.MaxRescues = 3
	}
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.NodeID == "" {
		c.NodeID = uuid.NewString()
	}
	if c.Retention == 0 {
		c.Retention = 7 * 24 * time.Hour
	}
	if c.RetentionInterval == 0 {
		c.RetentionInterval = time.Minute
	}
	return c
}

func (c Config) validate() error {
	neg := func(field string, v any, example string) error {
		return &ConfigError{field, fmt.Sprintf("must not be negative (got %v); use e.g. %s: %s, or 0 for the default", v, field, example)}
	}
	switch {
	case c.Workers < 0:
		return neg("Workers", c.Workers, "32")
	case c.ClaimBatch < 0:
		return neg("ClaimBatch", c.ClaimBatch, "64")
	case c.MaxPayloadBytes < 0:
		return neg("MaxPayloadBytes", c.MaxPayloadBytes, "1 << 20")
	case c.ShutdownGrace < 0:
		return neg("ShutdownGrace", c.ShutdownGrace, "30*time.Second")
	case c.ShutdownKill < 0:
		return neg("ShutdownKill", c.ShutdownKill, "5*time.Second")
	case c.LeaseDuration < 0:
		return neg("LeaseDuration", c.LeaseDuration, "time.Minute")
	case c.MaxRescues < 0:
		return neg("MaxRescues", c.MaxRescues, "5")
	case c.PollInterval < 0:
		return neg("PollInterval", c.PollInterval, "500*time.Millisecond")
	case c.RetentionCount < 0:
		return neg("RetentionCount", c.RetentionCount, "100000")
	case c.RetentionInterval < 0:
		return neg("RetentionInterval", c.RetentionInterval, "5*time.Minute")
	}
	for i, h := range c.Hooks {
		if h == nil {
			return &ConfigError{fmt.Sprintf("Hooks[%d]", i), "is nil; remove it, or pass a Hooks value such as batuta.LogHooks(logger)"}
		}
	}
	return nil
}

// An Orchestrator owns the workflow registry, the triggers, the scheduler,
// the worker pool and the Store. Create it with New, Register workflows,
// Bind triggers, then call Run, which blocks until its ctx ends and shuts
// down gracefully. Submit, Wait, Cancel and GetRun may be called from any
// goroutine, before or during Run (runs submitted before Run start when it
// starts).
type Orchestrator struct {
	cfg   Config
	store Store
	log   *slog.Logger
	hooks []Hooks
	// storeHooks are the Hooks that are also StoreHooks.
	storeHooks []StoreHooks
	clock      Clock

	mu        sync.RWMutex
	workflows map[string]*compiledWorkflow
	wfNames   []string            // sorted; replaced, never mutated, on Register
	uncapped  []string            // workflows without a Concurrency cap
	capped    []*compiledWorkflow // workflows with one
	bindings  []*binding
	running   bool
	trigCtx   context.Context // set while Run runs
	trigWG    *sync.WaitGroup

	waitMu  sync.Mutex
	waiters map[string]*waiter
	freed   chan struct{} // closed and replaced whenever a run finishes (SubmitBlocking)
	resumed chan struct{} // closed and replaced whenever this process resumes a workflow

	// pausedMu guards a short-lived copy of the store's paused workflows
	// for cron ticks (see pausedCached); held across the store call, so
	// the ticks of one instant share one read.
	pausedMu sync.Mutex
	pausedWs []string
	pausedAt time.Time // zero: no copy

	rateMu sync.Mutex
	rates  map[string]*RateLimit // RateLimit by Name across registered workflows

	ex atomic.Pointer[executor]

	functions functionSet // workflows registered by RegisterFunc

	fleet     cronFleet   // the instances sharing this one's cron ticks (cron_fleet.go)
	fireBatch fireBatcher // cron fires of one instant combined (cron_batch.go)
}

// waiter wakes the Wait calls of one run; n counts them, so the entry goes
// when the last one returns, finished or not.
type waiter struct {
	ch chan struct{}
	n  int
}

type binding struct {
	workflow   string
	trigger    Trigger
	started    bool
	submitWith func(Event) ([]SubmitOption, error) // SubmitWith; nil if none
	status     bindingStatus                       // for Bindings (introspect.go)
}

// New returns an Orchestrator configured by cfg, or a *ConfigError.
func New(cfg Config) (*Orchestrator, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	o := &Orchestrator{
		cfg:       cfg,
		store:     cfg.Store,
		log:       cfg.Logger,
		clock:     cfg.Clock,
		workflows: make(map[string]*compiledWorkflow),
		waiters:   make(map[string]*waiter),
		freed:     make(chan struct{}),
		resumed:   make(chan struct{}),
		rates:     make(map[string]*RateLimit),
		functions: functionSet{names: map[string]bool{}},
	}
	if !cfg.NoLogHooks {
		o.hooks = append(o.hooks, LogHooks(cfg.Logger))
	}
	o.hooks = append(o.hooks, cfg.Hooks...)
	for _, h := range cfg.Hooks {
		if sh, ok := h.(StoreHooks); ok {
			o.storeHooks = append(o.storeHooks, sh)
		}
	}
	if rr, ok := cfg.Store.(RescueReporter); ok && len(o.storeHooks) > 0 {
		hs := o.storeHooks
		rr.ReportRescues(func(rescued, failed int) {
			for _, h := range hs {
				h.Rescued(rescued, failed)
			}
		})
	}
	return o, nil
}

// Store returns the orchestrator's Store.
func (o *Orchestrator) Store() Store { return o.store }

// Register validates wf and adds it to the registry. An invalid workflow is
// a *WorkflowError (matching ErrInvalidWorkflow) naming the culprit, and
// nothing is registered. Registering a name twice is an error.
func (o *Orchestrator) Register(wf *Workflow) error {
	cw, err := compileWorkflow(wf)
	if err != nil {
		return err
	}
	// With its hidden workflows, all or nothing: the item workflows of its
	// ForEach tasks (child.go) and the one that runs its OnFailure and
	// DeadLetter (onfailure.go).
	all := append([]*compiledWorkflow{cw}, cw.hiddenWorkflows()...)
	if hw := o.failureWorkflow(wf); hw != nil {
		fw, err := compileWorkflow(hw)
		if err != nil {
			return err
		}
		cw.failures, cw.deadLetter = fw.name, wf.DeadLetter
		all = append(all, fw)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, w := range all {
		if _, dup := o.workflows[w.name]; dup {
			switch {
			case w == cw:
				return &WorkflowError{Workflow: cw.name, Reason: "already registered: Register each workflow once, and give another workflow its own Workflow.Name"}
			case w.name == cw.failures:
				return &WorkflowError{Workflow: w.name, Reason: fmt.Sprintf("already registered: it is the hidden workflow of %s's OnFailure/DeadLetter; do not register a workflow under that name", cw.name)}
			default:
				return &WorkflowError{Workflow: cw.name, Reason: fmt.Sprintf("the hidden item workflow %q of a ForEach task is already registered as a workflow; rename that workflow, or the task", w.name)}
			}
		}
	}
	o.rateMu.Lock()
	for _, w := range all {
		if w.flow == nil || !w.flow.hasRate {
			continue
		}
		for name, r := range w.flow.rateNames {
			if other, ok := o.rates[name]; ok && !sameRate(other, r) {
				o.rateMu.Unlock()
				return &WorkflowError{Workflow: cw.name, Reason: fmt.Sprintf("Task.RateLimit %q: Limit %d per %s (burst %d) differs from %d per %s (burst %d) declared by another registered workflow under the same Name; tasks sharing a Name share one limit: give them the same numbers, or another Name",
					name, r.Limit, r.Per, r.Burst, other.Limit, other.Per, other.Burst)}
			}
		}
	}
	for _, w := range all {
		if w.flow != nil {
			for name, r := range w.flow.rateNames {
				o.rates[name] = r
			}
		}
	}
	o.rateMu.Unlock()
	names := append([]string(nil), o.wfNames...)
	for _, w := range all {
		o.workflows[w.name] = w
		names = append(names, w.name)
	}
	sort.Strings(names)
	var uncapped []string
	var capped []*compiledWorkflow
	for _, n := range names {
		if w := o.workflows[n]; w.localCap > 0 {
			capped = append(capped, w)
		} else {
			uncapped = append(uncapped, n)
		}
	}
	o.wfNames, o.uncapped, o.capped = names, uncapped, capped
	return nil
}

func (o *Orchestrator) workflow(name string) (*compiledWorkflow, error) {
	o.mu.RLock()
	cw := o.workflows[name]
	o.mu.RUnlock()
	if cw == nil {
		return nil, o.unknownWorkflow(name, "Submit")
	}
	return cw, nil
}

func (o *Orchestrator) registered(name string) bool {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.workflows[name] != nil
}

// maxListed bounds the names an error message lists.
const maxListed = 20

// unknownWorkflow is the ErrUnknownWorkflow of call (Submit, Bind, ...)
// for name: it lists the registered workflows (at most maxListed) and says
// how to register one.
func (o *Orchestrator) unknownWorkflow(name, call string) error {
	o.mu.RLock()
	names := o.wfNames
	o.mu.RUnlock()
	if len(names) == 0 {
		return fmt.Errorf("%w: %q (%s): no workflow is registered yet; call o.Register(&batuta.Workflow{Name: %q, Tasks: ...}) before %s",
			ErrUnknownWorkflow, name, call, name, call)
	}
	return fmt.Errorf("%w: %q (%s); registered: %s; check the name, or call o.Register(&batuta.Workflow{Name: %q, Tasks: ...}) before %s",
		ErrUnknownWorkflow, name, call, quoteList(names, maxListed), name, call)
}

// Bind makes t start runs of the named workflow: each event t fires is
// submitted as a run. t runs while the orchestrator runs (from Run, or at
// once if Run is already running); if t returns early it is restarted with
// backoff and the error is logged. Options: SubmitWith computes submit
// options (a start time, a priority) per event.
func (o *Orchestrator) Bind(workflow string, t Trigger, opts ...BindOption) error {
	if t == nil {
		return fmt.Errorf(`batuta: Bind(%q, nil): the trigger is nil; pass one, e.g. a trigger made by batuta.NewCron(batuta.CronConfig{Spec: "*/5 * * * *"}) or batuta.NewQueueTrigger`, workflow)
	}
	if !o.registered(workflow) {
		return o.unknownWorkflow(workflow, "Bind")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	b := &binding{workflow: workflow, trigger: t}
	for _, opt := range opts {
		if opt.submitWith != nil {
			b.submitWith = opt.submitWith
		}
	}
	o.bindings = append(o.bindings, b)
	if o.running {
		o.startBindingLocked(b)
	}
	return nil
}

// Submit starts a run of workflow for ev and returns the run's ID once the
// run is recorded in the Store. If a run of workflow already exists for
// ev.ID, Submit returns its ID and starts nothing. An empty ev.ID gets a
// random one; a zero ev.Time gets the clock's now. Options delay the run
// (StartAt, StartAfter) or set its priority (WithPriority); with a
// Workflow.Debounce the event may be merged into a waiting run, whose ID
// Submit then returns.
//
// Errors: ErrUnknownWorkflow, *PayloadTooLargeError (ErrPayloadTooLarge),
// ErrInvalidPayload for event fields a store could not keep (or a
// Concurrency or Debounce key function that panicked), ErrInvalidConfig
// for a bad option, ErrBusy when MaxInFlightRuns runs are unfinished, or
// the Store's error. Nothing is stored when Submit fails.
func (o *Orchestrator) Submit(ctx context.Context, workflow string, ev Event, opts ...SubmitOption) (string, error) {
	id, _, err := o.submit(ctx, workflow, ev, opts)
	return id, err
}

// SubmitBlocking is Submit, but when the orchestrator is busy it waits for
// runs to finish (or ctx to end) instead of returning ErrBusy.
func (o *Orchestrator) SubmitBlocking(ctx context.Context, workflow string, ev Event, opts ...SubmitOption) (string, error) {
	for {
		o.waitMu.Lock()
		freed := o.freed
		o.waitMu.Unlock()
		id, _, err := o.submit(ctx, workflow, ev, opts)
		if !errors.Is(err, ErrBusy) {
			return id, err
		}
		t := time.NewTimer(o.cfg.PollInterval)
		select {
		case <-freed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return "", ctx.Err()
		}
		t.Stop()
	}
}

// SubmitMany submits one run of workflow per event, with the same options
// for all, in one Store call (one transaction for a durable store),
// and returns the run IDs in the order of evs (an existing run's ID for a
// duplicate Event.ID). Every event is checked first; any error means no
// run was recorded. MaxInFlightRuns is checked once for the whole batch,
// against the unfinished runs before it (so a batch may go past it);
// ErrBusy refuses the whole batch.
func (o *Orchestrator) SubmitMany(ctx context.Context, workflow string, evs []Event, opts ...SubmitOption) ([]string, error) {
	cw, err := o.workflow(workflow)
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 {
		return nil, nil
	}
	now := o.clock.Now()
	so, err := resolveSubmitOptions(opts, now)
	if err != nil {
		return nil, fmt.Errorf("batuta: submit %s: %w", workflow, err)
	}
	nrs := make([]NewRun, len(evs))
	for i := range evs {
		if err := o.newRun(&nrs[i], cw, evs[i], so, now); err != nil {
			return nil, fmt.Errorf("batuta: submit %s: event %d: %w", workflow, i, err)
		}
	}
	res, err := o.store.CreateRuns(ctx, nrs)
	if err != nil {
		return nil, fmt.Errorf("batuta: submit %s: %w", workflow, err)
	}
	if len(res) != len(nrs) {
		return nil, fmt.Errorf("batuta: submit %s: the store answered %d results for %d runs", workflow, len(res), len(nrs))
	}
	ids := make([]string, len(res))
	for i := range res {
		ids[i] = res[i].ID
		o.created(ctx, &nrs[i], res[i], now)
	}
	return ids, nil
}

// newRun fills nr with a run of cw for ev at now.
func (o *Orchestrator) newRun(nr *NewRun, cw *compiledWorkflow, ev Event, so submitOpts, now time.Time) error {
	if err := o.checkEvent(&ev); err != nil {
		return err
	}
	if ev.Time.IsZero() {
		ev.Time = now
	}
	rid, err := uuid.NewV7()
	if err != nil {
		return fmt.Errorf("batuta: run id: %w", err)
	}
	if ev.ID == "" {
		ev.ID = rid.String()
	}
	*nr = NewRun{
		ID: rid.String(), Workflow: cw.name, Event: ev, Tasks: cw.specs, CreatedAt: now,
		MaxActive: max(o.cfg.MaxInFlightRuns, 0),
	}
	if cw.timeout > 0 {
		nr.Deadline = now.Add(cw.timeout)
	}
	return cw.newRunFlow(nr, so)
}

func (o *Orchestrator) submit(ctx context.Context, workflow string, ev Event, opts []SubmitOption) (string, bool, error) {
	return o.submitWith(ctx, workflow, ev, opts, nil)
}

// submitWith is submit with create, if not nil, recording a run of a
// workflow without flow controls instead of the store's CreateRun (the
// combiner of cron fires, cron_batch.go). A workflow with flow controls
// always goes through CreateRuns, whose answer says what a concurrency
// strategy or a debounce did.
func (o *Orchestrator) submitWith(ctx context.Context, workflow string, ev Event, opts []SubmitOption, create func(context.Context, NewRun) (string, bool, error)) (string, bool, error) {
	cw, err := o.workflow(workflow)
	if err != nil {
		return "", false, err
	}
	now := o.clock.Now()
	var so submitOpts
	if len(opts) > 0 {
		if so, err = resolveSubmitOptions(opts, now); err != nil {
			return "", false, fmt.Errorf("batuta: submit %s: %w", workflow, err)
		}
	}
	var nr NewRun
	if err := o.newRun(&nr, cw, ev, so, now); err != nil {
		return "", false, err
	}
	var res CreateResult
	claimed, done := 0, false
	if ex := o.ex.Load(); ex != nil && ex.creator != nil && cw.flow == nil && create == nil && nr.StartAt.IsZero() {
		// A free worker of this process starts the run's first task,
		// claimed in the transaction that records the run.
		var rs []CreateResult
		if rs, claimed, done, err = ex.createAndClaim(ctx, []NewRun{nr}, now); done && err == nil {
			res = rs[0]
		}
	}
	switch {
	case done:
	case cw.flow == nil && create != nil:
		res.ID, res.Created, err = create(ctx, nr)
	case cw.flow == nil:
		res.ID, res.Created, err = o.store.CreateRun(ctx, nr)
	default:
		// CreateRuns tells what a concurrency strategy or a debounce did.
		var rs []CreateResult
		if rs, err = o.store.CreateRuns(ctx, []NewRun{nr}); err == nil {
			if len(rs) != 1 {
				err = fmt.Errorf("the store answered %d results for 1 run", len(rs))
			} else {
				res = rs[0]
			}
		}
	}
	if err != nil {
		return "", false, fmt.Errorf("batuta: submit %s: %w", workflow, err)
	}
	o.createdClaimed(ctx, &nr, res, now, claimed > 0 && roots(nr.Tasks) == 1)
	return res.ID, res.Created, nil
}

// created acts on the store's answer to one new run: wakes the executor
// (at once, and at the run's start time), runs the hooks, and publishes
// the end of runs that a concurrency strategy canceled.
func (o *Orchestrator) created(ctx context.Context, nr *NewRun, res CreateResult, now time.Time) {
	o.createdClaimed(ctx, nr, res, now, false)
}

// roots counts the tasks of a run that depend on no other.
func roots(ts []TaskSpec) int {
	n := 0
	for i := range ts {
		if len(ts[i].Deps) == 0 {
			n++
		}
	}
	return n
}

// createdClaimed is created; claimed says that the run's only root task was
// probably claimed with its creation, so the dispatcher is not woken for
// it (the store wakes it if the claim took another task).
func (o *Orchestrator) createdClaimed(ctx context.Context, nr *NewRun, res CreateResult, now time.Time, claimed bool) {
	ex := o.ex.Load()
	if res.Created {
		if ex != nil {
			if !nr.StartAt.IsZero() {
				ex.addDue(nr.StartAt)
			} else if nr.Debounce != nil {
				ex.addDue(now.Add(nr.Debounce.Window))
			}
			if !claimed {
				ex.poke()
			}
		}
		for _, h := range o.hooks {
			h.RunStarted(ctx, RunInfo{RunID: res.ID, Workflow: nr.Workflow, EventID: nr.Event.ID, State: RunPending, Time: now})
		}
	} else if res.Debounced && ex != nil {
		// The merged run's start moved (to now+Window at most): ask the
		// store when it comes due rather than guess.
		ex.addDue(now.Add(nr.Debounce.Window))
		ex.refreshDue()
	}
	for _, id := range res.Canceled {
		if ex != nil && ex.cancelRun(id) {
			continue // the canceled attempts' workers publish the end
		}
		if r, err := o.store.GetRun(ctx, id); err == nil && r.Finished() {
			o.runFinished(ctx, id, r.Workflow, r.State)
		}
	}
	if res.Rejected {
		o.runFinished(ctx, res.ID, nr.Workflow, RunCanceled)
	}
}

// checkEvent enforces the payload cap and refuses strings a database text
// column would choke on (NUL bytes, invalid UTF-8).
func (o *Orchestrator) checkEvent(ev *Event) error {
	size := len(ev.Data)
	for k, v := range ev.Metadata {
		size += len(k) + len(v)
		if err := checkText("Event.Metadata key", k); err != nil {
			return err
		}
		if err := checkText("Event.Metadata["+strconvQuote(k)+"]", v); err != nil {
			return err
		}
	}
	if size > o.cfg.MaxPayloadBytes {
		return &PayloadTooLargeError{What: "event data", Size: size, Limit: o.cfg.MaxPayloadBytes}
	}
	for _, f := range []struct{ name, v string }{{"ID", ev.ID}, {"Source", ev.Source}, {"Type", ev.Type}, {"Subject", ev.Subject}} {
		if len(f.v) > 1024 {
			return fmt.Errorf("%w: Event.%s is %d bytes, over 1024; use a shorter value (an ID such as \"order-42\", not the payload: that goes in Event.Data)", ErrInvalidPayload, f.name, len(f.v))
		}
		if err := checkText("Event."+f.name, f.v); err != nil {
			return err
		}
	}
	return nil
}

// strconvQuote quotes a metadata key for a message, clipped.
func strconvQuote(k string) string {
	if len(k) > 64 {
		k = k[:64] + "..."
	}
	return strconv.Quote(k)
}

func checkText(what, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8; put binary data in Event.Data (e.g. base64 in JSON)", ErrInvalidPayload, what)
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return fmt.Errorf("%w: %s contains a NUL byte; put binary data in Event.Data (e.g. base64 in JSON)", ErrInvalidPayload, what)
		}
	}
	return nil
}

// GetRun returns a snapshot of the run. ErrRunNotFound if there is none.
func (o *Orchestrator) GetRun(ctx context.Context, runID string) (*Run, error) {
	return o.store.GetRun(ctx, runID)
}

// ListRuns returns runs matching f, newest first.
func (o *Orchestrator) ListRuns(ctx context.Context, f RunFilter) ([]*Run, error) {
	return o.store.ListRuns(ctx, f)
}

// Wait blocks until the run finished or ctx ends, and returns its final
// snapshot. Runs finished by this orchestrator wake Wait at once, and so do
// runs finished elsewhere when the Store publishes run completions (a
// RunWatcher: the in-memory store, for every orchestrator sharing it, and
// PostgreSQL, through LISTEN/NOTIFY, for every instance): Wait then reads
// the run once before waiting and once after, and polls only as a
// fallback (in case a publication was lost): after 5 PollIntervals at
// first, backing off to 30.
// With other stores, or while the store's listener is down, it polls,
// from 20ms backing off to 1s.
func (o *Orchestrator) Wait(ctx context.Context, runID string) (*Run, error) {
	return o.await(ctx, runID, true)
}

// await is Wait. Without snapshot, when the store publishes run
// completions, it reads nothing: it returns (nil, nil) as soon as the run
// is known to have finished, and reads the run only when its fallback poll
// comes due (the cron trigger follows its runs this way).
func (o *Orchestrator) await(ctx context.Context, runID string, snapshot bool) (*Run, error) {
	o.waitMu.Lock()
	w := o.waiters[runID]
	if w == nil {
		w = &waiter{ch: make(chan struct{})}
		o.waiters[runID] = w
	}
	w.n++
	ch := w.ch
	o.waitMu.Unlock()
	defer func() {
		o.waitMu.Lock()
		if w.n--; w.n == 0 && o.waiters[runID] == w {
			delete(o.waiters, runID)
		}
		o.waitMu.Unlock()
	}()
	var published <-chan struct{}
	watching := false
	if rw, ok := o.store.(RunWatcher); ok {
		fin, stop, ok := rw.WatchRun(runID)
		if stop != nil {
			defer stop()
		}
		published, watching = fin, ok && fin != nil
	}
	poll, maxPoll := 20*time.Millisecond, time.Second
	if watching {
		poll, maxPoll = 5*o.cfg.PollInterval, 30*o.cfg.PollInterval
	}
	read := snapshot || !watching
	for {
		if read {
			r, err := o.store.GetRun(ctx, runID)
			if err != nil {
				return nil, err
			}
			if r.Finished() {
				return r, nil
			}
		}
		read = true
		t := time.NewTimer(poll)
		select {
		case <-ch:
			if !snapshot {
				t.Stop()
				return nil, nil
			}
		case <-published:
			if !snapshot {
				t.Stop()
				return nil, nil
			}
			published = nil // read it below; the poll is the fallback
		case <-t.C:
			poll = min(poll*2, maxPoll)
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		t.Stop()
	}
}

// runFinished wakes Wait callers and SubmitBlocking, and starts the
// failure handling of a failed run (onfailure.go).
func (o *Orchestrator) runFinished(ctx context.Context, runID, workflow string, st RunState) {
	if st == RunFailed {
		o.failed(ctx, runID, workflow)
	}
	o.waitMu.Lock()
	if w := o.waiters[runID]; w != nil {
		close(w.ch)
		delete(o.waiters, runID)
	}
	close(o.freed)
	o.freed = make(chan struct{})
	o.waitMu.Unlock()
	for _, h := range o.hooks {
		h.RunFinished(ctx, RunInfo{RunID: runID, Workflow: workflow, State: st, Time: o.clock.Now()})
	}
}

// Cancel cancels a run: tasks not started are canceled, running tasks see
// their ctx canceled (on other instances, at their next lease renewal). It
// returns ErrRunNotFound for an unknown run and nil for a finished one.
func (o *Orchestrator) Cancel(ctx context.Context, runID string) error {
	changed, err := o.store.CancelRun(ctx, runID, "canceled", o.clock.Now())
	if err != nil {
		return fmt.Errorf("batuta: cancel %s: %w", runID, err)
	}
	if !changed {
		return nil
	}
	if ex := o.ex.Load(); ex != nil && ex.cancelRun(runID) {
		return nil // the canceled attempts' workers publish the end
	}
	if r, err := o.store.GetRun(ctx, runID); err == nil && r.Finished() {
		o.runFinished(ctx, runID, r.Workflow, r.State)
	}
	return nil
}

// Run runs the orchestrator until ctx ends: it starts the bound triggers and
// the workers, resumes unfinished runs found in the Store, and executes
// tasks. When ctx ends it stops the triggers first, lets running tasks
// finish for ShutdownGrace, then cancels them (their claims go back to the
// store without spending an attempt), waits ShutdownKill more, and returns
// nil. No goroutine started by Run outlives it, except tasks that ignore
// their ctx, which are named in the log.
//
// Run may be called again after it returned; calling it while it runs is
// an error.
func (o *Orchestrator) Run(ctx context.Context) error {
	o.mu.Lock()
	if o.running {
		o.mu.Unlock()
		return errors.New("batuta: Run called while running")
	}
	o.running = true
	ex := newExecutor(o)
	o.ex.Store(ex)
	trigCtx, stopTriggers := context.WithCancel(context.WithoutCancel(ctx))
	o.trigCtx = trigCtx
	o.trigWG = &sync.WaitGroup{}
	for _, b := range o.bindings {
		b.started = false
		o.startBindingLocked(b)
	}
	trigWG := o.trigWG
	o.mu.Unlock()

	ex.start()
	<-ctx.Done()

	// 1. Intake stops.
	o.mu.Lock()
	stopTriggers()
	o.mu.Unlock()
	trigWG.Wait()
	// 2. Workers drain, then are canceled, then abandoned.
	ex.shutdown()

	o.mu.Lock()
	o.running = false
	o.trigCtx = nil
	o.mu.Unlock()
	o.ex.Store(nil)
	return nil
}

// startBindingLocked starts b's trigger on o.trigCtx, which lives from Run
// to the start of its shutdown, whatever ctx the caller (Run, Bind) has.
func (o *Orchestrator) startBindingLocked(b *binding) {
	if b.started {
		return
	}
	b.started = true
	ctx, wg := o.trigCtx, o.trigWG
	wg.Add(1)
	go func() {
		defer wg.Done()
		o.superviseTrigger(ctx, b)
	}()
}

// superviseTrigger runs a trigger, restarting it with backoff when it
// returns early.
func (o *Orchestrator) superviseTrigger(ctx context.Context, b *binding) {
	fire := func(ctx context.Context, ev Event) error {
		_, err := o.fire(ctx, b, ev)
		return err
	}
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		var err error
		b.status.started()
		func() {
			defer func() {
				if p := recover(); p != nil {
					err = newPanicError(p)
				}
			}()
			if tt, ok := b.trigger.(TrackingTrigger); ok {
				err = tt.RunTracking(ctx, &runsView{o: o, workflow: b.workflow, b: b})
			} else {
				err = b.trigger.Run(ctx, fire)
			}
		}()
		if ctx.Err() != nil {
			b.status.stopped(nil, time.Time{})
			return
		}
		if err == nil {
			err = errors.New("returned nil before the orchestrator stopped")
		}
		b.status.stopped(err, o.clock.Now())
		if time.Since(start) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		o.log.Error("batuta: trigger stopped; restarting", "workflow", b.workflow,
			"trigger", fmt.Sprintf("%T", b.trigger), "error", err, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// fire submits an event a trigger fired for binding b (nil: none), with
// the options the trigger set (WithSubmitOptions) and then SubmitWith's.
func (o *Orchestrator) fire(ctx context.Context, b *binding, ev Event) (string, error) {
	opts, err := fireOptions(ctx, b, ev)
	if err != nil {
		return "", err
	}
	id, _, err := o.submit(ctx, b.workflow, ev, opts)
	return id, err
}

// fireOptions returns the submit options of an event fired for binding b:
// the trigger's (WithSubmitOptions), then SubmitWith's.
func fireOptions(ctx context.Context, b *binding, ev Event) ([]SubmitOption, error) {
	opts, _ := ctx.Value(submitOptsKey{}).([]SubmitOption)
	if b.submitWith != nil {
		more, err := callSubmitWith(b.submitWith, ev)
		if err != nil {
			return nil, fmt.Errorf("batuta: submit %s: %w: SubmitWith: %w", b.workflow, ErrInvalidPayload, err)
		}
		opts = append(opts[:len(opts):len(opts)], more...)
	}
	return opts, nil
}

func callSubmitWith(fn func(Event) ([]SubmitOption, error), ev Event) (opts []SubmitOption, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = newPanicError(p)
		}
	}()
	return fn(ev)
}

// submitOptsKey carries a trigger's submit options in the ctx it passes to
// its FireFunc (see WithSubmitOptions).
type submitOptsKey struct{}

// WithSubmitOptions returns a ctx that makes the orchestrator's FireFunc
// (and Runs.Fire) submit the event with opts: for a Trigger that computes a
// start time or a priority per event (the queue trigger does it from
// message metadata). Options from Bind's SubmitWith come after these and
// win. A FireFunc that does not come from an orchestrator ignores them.
func WithSubmitOptions(ctx context.Context, opts ...SubmitOption) context.Context {
	if len(opts) == 0 {
		return ctx
	}
	return context.WithValue(ctx, submitOptsKey{}, opts)
}

// runsView is the Runs a TrackingTrigger gets.
type runsView struct {
	o        *Orchestrator
	workflow string
	b        *binding
}

func (r *runsView) Workflow() string { return r.workflow }
func (r *runsView) Fire(ctx context.Context, ev Event) (string, error) {
	b := r.b
	if b == nil {
		b = &binding{workflow: r.workflow}
	}
	return r.o.fire(ctx, b, ev)
}

// pauseState reports whether the workflow is paused now (in the store, for
// every process), with a channel closed when this process resumes a
// workflow (taken before reading the store, so no resume is missed).
func (r *runsView) pauseState(ctx context.Context) (bool, <-chan struct{}, error) {
	r.o.waitMu.Lock()
	ch := r.o.resumed
	r.o.waitMu.Unlock()
	ws, err := r.o.pausedCached(ctx)
	if err != nil {
		return false, ch, err
	}
	_, paused := slices.BinarySearch(ws, r.workflow)
	return paused, ch, nil
}

// pollInterval is how often a paused cron schedule asks the store whether
// it was resumed elsewhere.
func (r *runsView) pollInterval() time.Duration                       { return r.o.cfg.PollInterval }
func (r *runsView) Get(ctx context.Context, id string) (*Run, error)  { return r.o.GetRun(ctx, id) }
func (r *runsView) Wait(ctx context.Context, id string) (*Run, error) { return r.o.Wait(ctx, id) }

// awaitFinished returns once run id finished, reading the run only if the
// store does not publish run completions (see Orchestrator.await).
func (r *runsView) awaitFinished(ctx context.Context, id string) error {
	_, err := r.o.await(ctx, id, false)
	return err
}
func (r *runsView) Cancel(ctx context.Context, id string) error { return r.o.Cancel(ctx, id) }
func (r *runsView) Durable() bool                               { return r.o.store.Durable() }
func (r *runsView) Clock() Clock                                { return r.o.clock }
func (r *runsView) LastTick(ctx context.Context, s string) (time.Time, error) {
	return r.o.store.LastTick(ctx, s)
}
func (r *runsView) RecordTick(ctx context.Context, s string, t time.Time) (bool, error) {
	return r.o.store.RecordTick(ctx, s, t)
}

// Pause pauses a workflow for every orchestrator sharing the store: no new
// task of it starts (attempts running now finish), while Submit and
// triggers keep accepting runs, which wait; cron schedules bound to it
// fire no tick while it is paused and apply their missed-tick policy on
// resume, as after downtime. Pausing is durable with a durable store.
// ErrUnknownWorkflow if the workflow is not registered here.
func (o *Orchestrator) Pause(ctx context.Context, workflow string) error {
	if !o.registered(workflow) {
		return o.unknownWorkflow(workflow, "Pause")
	}
	if _, err := o.store.SetPaused(ctx, workflow, true); err != nil {
		return fmt.Errorf("batuta: pause %s: %w", workflow, err)
	}
	o.forgetPaused()
	return nil
}

// Resume resumes a paused workflow (a no-op if it is not paused): its
// waiting tasks start again, on every orchestrator sharing the store.
// ErrUnknownWorkflow if the workflow is not registered here.
func (o *Orchestrator) Resume(ctx context.Context, workflow string) error {
	if !o.registered(workflow) {
		return o.unknownWorkflow(workflow, "Resume")
	}
	if _, err := o.store.SetPaused(ctx, workflow, false); err != nil {
		return fmt.Errorf("batuta: resume %s: %w", workflow, err)
	}
	o.forgetPaused()
	if ex := o.ex.Load(); ex != nil {
		ex.refreshDue()
		ex.poke()
	}
	o.waitMu.Lock()
	close(o.resumed)
	o.resumed = make(chan struct{})
	o.waitMu.Unlock()
	return nil
}

// pausedTTL is how long a cron tick trusts the copy of the paused
// workflows read by an earlier tick. A cron fleet asks on every tick of
// every schedule; without the copy, 200 schedules firing at one instant
// cost 200 reads per instance. A pause made by another process therefore
// reaches this process's cron ticks within pausedTTL (its task claims see
// it at once, in the store); one made here, at once.
const pausedTTL = 500 * time.Millisecond

// pausedCached returns the paused workflows, sorted, from a copy at most
// pausedTTL old.
func (o *Orchestrator) pausedCached(ctx context.Context) ([]string, error) {
	o.pausedMu.Lock()
	defer o.pausedMu.Unlock()
	if !o.pausedAt.IsZero() && time.Since(o.pausedAt) < pausedTTL {
		return o.pausedWs, nil
	}
	ws, err := o.store.PausedWorkflows(ctx)
	if err != nil {
		return nil, err
	}
	o.pausedWs, o.pausedAt = ws, time.Now()
	return ws, nil
}

// forgetPaused drops the copy after a Pause or Resume made here.
func (o *Orchestrator) forgetPaused() {
	o.pausedMu.Lock()
	o.pausedAt = time.Time{}
	o.pausedMu.Unlock()
}

// Paused lists the paused workflows, sorted (every workflow paused in the
// store, including those this orchestrator does not register).
func (o *Orchestrator) Paused(ctx context.Context) ([]string, error) {
	ws, err := o.store.PausedWorkflows(ctx)
	if err != nil {
		return nil, fmt.Errorf("batuta: paused workflows: %w", err)
	}
	return ws, nil
}

// Runs returns the Runs view of a workflow, as a TrackingTrigger gets it;
// useful to drive a trigger by hand in tests.
func (o *Orchestrator) Runs(workflow string) (Runs, error) {
	if !o.registered(workflow) {
		return nil, o.unknownWorkflow(workflow, "Runs")
	}
	return &runsView{o: o, workflow: workflow}, nil
}
