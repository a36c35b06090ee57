package batuta

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"time"
)

// A Workflow is a named DAG of tasks. Build it as a struct literal and hand
// it to Orchestrator.Register, which validates it (cycles, unknown or
// duplicate names, empty workflows, nil funcs, negative durations) and
// registers nothing if it is invalid.
//
// A Workflow is read once at Register; changing it afterwards has no effect.
type Workflow struct {
	// Name identifies the workflow: 1-128 bytes of letters, digits and
	// . _ - : (it appears in run records, HTTP paths and event IDs).
	Name string
	// Tasks are the steps. Their order is the order of Run.Tasks.
	Tasks []Task
	// Timeout bounds a whole run, from its creation. 0 means no limit.
	// When it passes, running tasks see their ctx canceled and tasks not
	// yet started fail with ErrTimeout.
	Timeout time.Duration
	// Concurrency, if not nil, limits the unfinished runs of this workflow
	// per key, across every orchestrator sharing the store (see
	// Concurrency and docs/flow.md). Nil: no limit.
	Concurrency *Concurrency
	// Debounce, if not nil, merges events of one key arriving within
	// Debounce.Window into one run (see Debounce).
	Debounce *Debounce
	// StrictInput makes EventData, in this workflow's tasks, refuse event
	// data that does not match T exactly: a field T does not have, a
	// top-level null, or no data at all (EventDataStrict does the same for
	// one call). The error matches ErrInvalidPayload and is permanent.
	//
	// It is off by default, as in encoding/json: a producer may add a field
	// (a column added to the table, a new version of the message) without
	// failing the consumers still built with the old struct. Turn it on
	// where a typo in a field name or an empty body must not pass silently
	// as the zero value.
	StrictInput bool

	// OnFailure, if not nil, is called once each time a run of this
	// workflow fails for good (RunFailed: every retry spent, a permanent
	// error, its Timeout; not a cancellation), with a snapshot of the
	// failed run: Hatchet's on-failure step. A Retry that fails again
	// calls it again (once per failure: per run ID and Run.Retries).
	//
	// It runs as a run of a hidden workflow registered along with this one
	// (FailureWorkflow(Name), task FailureTask), whose event is the failed
	// run's ID; see docs/operations.md for the guarantee: at least once per
	// failure, deduplicated by the failed run's ID and Retries, surviving a
	// crash between the failure and the hand-off. An error retries it per
	// OnFailureRetry.
	OnFailure func(ctx context.Context, run *Run) error
	// OnFailureRetry retries OnFailure (each attempt bounded by
	// OnFailureTimeout, default 1 min). Default: 10 attempts, from 1 s up
	// to 1 min apart.
	OnFailureRetry   RetryPolicy
	OnFailureTimeout time.Duration
	// DeadLetter, if not nil, receives each failed run (as OnFailure is
	// called, by the same hidden workflow, task FunctionDeadLetterTask), as
	// a DeadLetter with the run's event, Reason DeadLetterFailed, the run's
	// error, the failed task's attempts, the workflow and the run ID: hand
	// it to a queue (DeadLetterQueue) to keep it for a later redrive, as
	// FunctionConfig.DeadLetter does for functions.
	DeadLetter DeadLetterHandler
	// DeadLetterRetry retries the hand-off to DeadLetter (each attempt is
	// bounded by 30 s). Default: 10 attempts, from 1 s up to 1 min apart.
	DeadLetterRetry RetryPolicy

	// localCap caps the tasks of this workflow running at once in one
	// orchestrator (FunctionConfig.Concurrency); 0: no cap.
	localCap int
}

// A TaskFunc is the body of a task. It reads the triggering event and the
// outputs of its ancestors through in (see EventData and Output) and
// returns an output, which must be JSON-encodable so that durable stores can
// keep it, and an error. Returning Permanent(err) stops retries; Snooze(d)
// runs the task again after d without spending an attempt.
//
// ctx is canceled when the task's timeout passes, when its run is canceled
// or times out, and when the orchestrator shuts down past its grace period.
type TaskFunc func(ctx context.Context, in *Input) (any, error)

// A Task is one step of a Workflow.
type Task struct {
	// Name identifies the task within its workflow (same alphabet as
	// Workflow.Name).
	Name string
	// Deps names the tasks that must finish before this one starts.
	Deps []string
	// Run is the body. Required, except for a task that only waits (Delay
	// without a body, Signal, Child), where it must be nil. With ForEach it
	// is the body run once per item.
	Run TaskFunc
	// Retry says how failed attempts are retried. The zero value means the
	// defaults of RetryPolicy.
	Retry RetryPolicy
	// Timeout bounds each attempt. 0 means no limit (the workflow timeout
	// still applies).
	Timeout time.Duration
	// When is the join rule deciding, once every dependency finished,
	// whether the task runs, is skipped, or is marked upstream_failed. The
	// zero value is AllSucceeded. See docs/workflows.md for the full table.
	When JoinRule
	// FireEarly, with When = OneSucceeded or OneFailed, makes the task
	// ready as soon as one dependency reaches the outcome the rule looks
	// for (succeeded; failed, upstream_failed or canceled), while the other
	// dependencies may still run: Airflow's behaviour, useful for hedged
	// requests (the first answer wins) and for alerting at the first
	// failure. Its Input then shows the unfinished dependencies as pending
	// or running, with no output. If no dependency reaches that outcome the
	// task is decided once all finished, as without FireEarly. The run still
	// finishes only when every task finished.
	//
	// It is off by default: waiting for every dependency gives the task a
	// complete, deterministic view of its inputs and never races the
	// siblings that still run (their effects may not have happened yet
	// when the early task starts). Register rejects FireEarly with any
	// other rule.
	FireEarly bool
	// Concurrency, if not nil, limits the running attempts of this task
	// per key (computed from the run's event), across runs and every
	// orchestrator sharing the store. Its Strategy must be
	// ConcurrencyQueue: a task over the limit waits, holding no worker.
	Concurrency *Concurrency
	// RateLimit, if not nil, limits how fast attempts of this task (and of
	// every task sharing RateLimit.Name) start. See RateLimit.
	RateLimit *RateLimit

	// Durable waits (docs/waits.md). A waiting task holds no worker,
	// goroutine or connection: it is handed back to the store
	// (OutcomeWait) and claimed again when its time comes or it is woken.

	// StartAt, if set, computes from the task's inputs when the task may
	// start: its body runs not before that time (a durable timer). A time
	// in the past starts it at once.
	StartAt func(in *Input) (time.Time, error)
	// Delay makes the task start Delay after it became ready (its
	// dependencies finished). With Run nil the task is a pure sleep step
	// (output nil). With StartAt, the later of the two applies.
	Delay time.Duration
	// Signal, if not nil, makes the task wait for a signal
	// (Orchestrator.Signal); its output is the signal's data. Run must be
	// nil.
	Signal *SignalWait
	// Child, if not nil, makes the task run another registered workflow
	// as a child run and finish with its outcome. Run must be nil.
	Child *ChildWorkflow
	// ForEach, if not nil, runs Run once per item of a list computed at
	// run time, each item with its own retries (Retry, Timeout); the
	// task's output is the items' outputs, in order.
	ForEach *ForEach
}

// JoinRule decides what becomes of a task whose dependencies have all
// finished (or, with Task.FireEarly, one of them reached the outcome the
// rule waits for): it runs, it is skipped (TaskSkipped), or it is marked
// upstream_failed (TaskUpstreamFailed), never running. The rules and their
// outcomes follow Airflow's trigger rules exactly (trigger_rule_dep):
//
//   - a dependency that failed, was canceled, or is itself upstream_failed
//     counts as a failure, so a failure two levels up still fires a
//     OneFailed or AllFailed task and still stops a NoneFailed one;
//   - a dependency skipped because its own rule was not met counts as a
//     skip, not as a failure.
//
// A task without dependencies always runs. A skipped or upstream_failed
// task counts as finished for its own dependents. docs/workflows.md has the
// full table.
type JoinRule int

// The join rules. "Failed" below means failed, canceled or upstream_failed.
const (
	// AllSucceeded runs the task when every dependency succeeded (default).
	// Any failed dependency makes it upstream_failed; otherwise any
	// skipped dependency makes it skipped.
	AllSucceeded JoinRule = iota
	// AllDone runs the task whatever its dependencies' outcome: cleanup.
	AllDone
	// OneSucceeded runs the task when at least one dependency succeeded.
	// If none did, it is skipped when every dependency was skipped, else
	// upstream_failed.
	OneSucceeded
	// OneFailed runs the task when at least one dependency failed: alerts
	// and compensation. Otherwise it is skipped.
	OneFailed
	// AllFailed runs the task when every dependency failed. Any succeeded
	// or skipped dependency makes it skipped.
	AllFailed
	// NoneFailed runs the task when no dependency failed (succeeded or
	// skipped). Any failed dependency makes it upstream_failed.
	NoneFailed
)

var joinRuleNames = [...]string{"all_succeeded", "all_done", "one_succeeded", "one_failed", "all_failed", "none_failed"}

func (r JoinRule) String() string {
	if r >= 0 && int(r) < len(joinRuleNames) {
		return joinRuleNames[r]
	}
	return fmt.Sprintf("JoinRule(%d)", int(r))
}

// joinDecision is what a join rule makes of a claimed task.
type joinDecision uint8

const (
	joinRun            joinDecision = iota // run the task
	joinSkip                               // finish it as TaskSkipped
	joinUpstreamFailed                     // finish it as TaskUpstreamFailed
)

// decide applies the rule to the dependencies' states as seen at claim time
// and returns the decision with, unless the task runs, the reason recorded
// on it. It follows Airflow's trigger_rule_dep (flag_upstream_failed):
// failures are checked before skips. Unfinished dependencies (pending,
// running) are only seen by a FireEarly task, which the store made ready
// because one dependency already matched; they count as nothing.
func (r JoinRule) decide(ups []UpstreamResult) (joinDecision, string) {
	if len(ups) == 0 || r == AllDone {
		return joinRun, ""
	}
	var ok, failed, skipped, done int
	firstFailed := -1
	for i := range ups {
		st := ups[i].State
		switch {
		case st == TaskSucceeded:
			ok++
		case st.CountsAsFailure():
			failed++
			if firstFailed < 0 {
				firstFailed = i
			}
		case st == TaskSkipped:
			skipped++
		}
		if st.Finished() {
			done++
		}
	}
	upstreamFailed := func() (joinDecision, string) {
		u := &ups[firstFailed]
		return joinUpstreamFailed, fmt.Sprintf("join rule %s: dependency %s is %s", r, u.Name, u.State)
	}
	notMet := func() (joinDecision, string) { return joinSkip, "join rule " + r.String() + " not met" }
	switch r {
	case AllSucceeded:
		switch {
		case failed > 0:
			return upstreamFailed()
		case ok < len(ups):
			return notMet()
		}
		return joinRun, ""
	case OneSucceeded:
		switch {
		case ok > 0:
			return joinRun, ""
		case skipped == len(ups):
			return notMet()
		case failed > 0 && done == len(ups):
			return upstreamFailed()
		}
		return notMet()
	case OneFailed:
		if failed > 0 {
			return joinRun, ""
		}
		return notMet()
	case AllFailed:
		if failed == len(ups) {
			return joinRun, ""
		}
		return notMet()
	case NoneFailed:
		switch {
		case failed > 0:
			return upstreamFailed()
		case done < len(ups):
			return notMet()
		}
		return joinRun, ""
	}
	return notMet()
}

// fireOn returns the TaskSpec.FireOn of a task: the dependency outcome that
// makes it ready early, or "" to wait for every dependency.
func fireOn(t *Task) TaskState {
	if !t.FireEarly {
		return ""
	}
	if t.When == OneFailed {
		return TaskFailed
	}
	return TaskSucceeded
}

// RetryPolicy says how a task's failed attempts are retried: exponential
// backoff with full jitter (the delay before attempt n+1 is uniform in
// [0, min(MaxDelay, InitialDelay*Multiplier^(n-1))]), as AWS recommends.
// Zero fields take the defaults below.
type RetryPolicy struct {
	// MaxAttempts is the total number of attempts, the first included.
	// Default 3. Set 1 for no retries.
	MaxAttempts int
	// InitialDelay is the backoff cap before the second attempt. Default 1s.
	InitialDelay time.Duration
	// Multiplier is the backoff rate. Default 2. Must be >= 1 if set.
	Multiplier float64
	// MaxDelay caps a single backoff. Default 5m.
	MaxDelay time.Duration
	// NoJitter waits the full backoff instead of a random part of it.
	NoJitter bool
}

// Retry policy defaults.
const (
	DefaultMaxAttempts  = 3
	DefaultInitialDelay = time.Second
	DefaultMultiplier   = 2.0
	DefaultMaxDelay     = 5 * time.Minute
)

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.InitialDelay == 0 {
		p.InitialDelay = DefaultInitialDelay
	}
	if p.Multiplier == 0 {
		p.Multiplier = DefaultMultiplier
	}
	if p.MaxDelay == 0 {
		p.MaxDelay = DefaultMaxDelay
	}
	return p
}

func (p RetryPolicy) validate(prefix string) error {
	switch {
	case p.MaxAttempts < 0:
		return &ConfigError{Field: prefix + "Retry.MaxAttempts", Reason: fmt.Sprintf(
			"must not be negative (got %d); use e.g. MaxAttempts: 5, 1 for no retries, or 0 for the default (%d)", p.MaxAttempts, DefaultMaxAttempts)}
	case p.InitialDelay < 0:
		return &ConfigError{Field: prefix + "Retry.InitialDelay", Reason: fmt.Sprintf(
			"must not be negative (got %s); use e.g. InitialDelay: 500*time.Millisecond, or 0 for the default (%s)", p.InitialDelay, DefaultInitialDelay)}
	case p.Multiplier < 0 || (p.Multiplier > 0 && p.Multiplier < 1) || math.IsNaN(p.Multiplier) || math.IsInf(p.Multiplier, 0):
		return &ConfigError{Field: prefix + "Retry.Multiplier", Reason: fmt.Sprintf(
			"must be >= 1 (got %v); use e.g. Multiplier: 1.5, 1 for a constant delay, or 0 for the default (%v)", p.Multiplier, DefaultMultiplier)}
	case p.MaxDelay < 0:
		return &ConfigError{Field: prefix + "Retry.MaxDelay", Reason: fmt.Sprintf(
			"must not be negative (got %s); use e.g. MaxDelay: time.Minute, or 0 for the default (%s)", p.MaxDelay, DefaultMaxDelay)}
	}
	return nil
}

// Backoff returns the delay before the attempt after attempt number n
// (n >= 1), jittered unless NoJitter. The policy must have its defaults
// applied (a zero policy uses the package defaults).
func (p RetryPolicy) Backoff(n int) time.Duration {
	p = p.withDefaults()
	if n < 1 {
		n = 1
	}
	d := float64(p.InitialDelay) * math.Pow(p.Multiplier, float64(n-1))
	if d > float64(p.MaxDelay) || math.IsInf(d, 0) || math.IsNaN(d) {
		d = float64(p.MaxDelay)
	}
	if p.NoJitter || d <= 0 {
		return time.Duration(d)
	}
	return time.Duration(rand.Int64N(int64(d) + 1))
}

// compiled forms, built by Register.

type compiledWorkflow struct {
	name     string
	timeout  time.Duration
	localCap int           // per-process cap on running tasks (FunctionConfig.Concurrency)
	flow     *compiledFlow // nil without flow control
	tasks    []compiledTask
	specs    []TaskSpec
	index    map[string]int
	// failures names the hidden workflow running OnFailure and
	// DeadLetter (onfailure.go); empty without them.
	failures string
	// deadLetter is Workflow.DeadLetter (for DeadLetterBoxes).
	deadLetter DeadLetterHandler
}

type compiledTask struct {
	// What the executor reads for every attempt first, together: a
	// worker running tasks of a large workflow in no particular order
	// (a layered DAG) then misses the cache once or twice per task, not
	// three times.
	name    string
	fn      TaskFunc
	timeout time.Duration
	when    JoinRule
	rate    *RateLimit
	sub     *subTask      // Task.Child or Task.ForEach (child.go)
	wait    *compiledWait // Task.StartAt, Delay or Signal (wait.go); nil if none

	retry  RetryPolicy
	deps   []string // names, in declaration order
	strict bool     // Workflow.StrictInput
	conc   *Concurrency

	wf  *compiledWorkflow
	pos int // index in wf.tasks and wf.specs

	// reach caches isAncestor's answers: a task reads few names, so this
	// stays small, and nothing is computed for tasks that read only their
	// direct dependencies.
	reachMu sync.Mutex
	reach   map[int]bool
}

// isAncestor reports whether the task at position j of the workflow is an
// ancestor (a transitive dependency) of ct.
func (ct *compiledTask) isAncestor(j int) bool {
	ct.reachMu.Lock()
	v, ok := ct.reach[j]
	ct.reachMu.Unlock()
	if ok {
		return v
	}
	ct.walkAncestors(func(i int) bool { v = i == j; return !v })
	ct.reachMu.Lock()
	if ct.reach == nil {
		ct.reach = make(map[int]bool)
	}
	ct.reach[j] = v
	ct.reachMu.Unlock()
	return v
}

// ancestorNames returns the names of ct's ancestors in the order of
// Workflow.Tasks (for error messages).
func (ct *compiledTask) ancestorNames() []string {
	seen := make([]bool, len(ct.wf.specs))
	ct.walkAncestors(func(i int) bool { seen[i] = true; return true })
	var names []string
	for i, ok := range seen {
		if ok {
			names = append(names, ct.wf.specs[i].Name)
		}
	}
	return names
}

// walkAncestors calls visit once for each ancestor of ct, depth first,
// until visit returns false.
func (ct *compiledTask) walkAncestors(visit func(i int) bool) {
	specs := ct.wf.specs
	seen := make([]bool, len(specs))
	stack := append([]int(nil), specs[ct.pos].Deps...)
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[n] {
			continue
		}
		seen[n] = true
		if !visit(n) {
			return
		}
		stack = append(stack, specs[n].Deps...)
	}
}

// nameRule is what validName accepts, for error messages.
const nameRule = "1-128 bytes of letters, digits, '.', '_', '-', ':'"

// quoteList renders names as "a", "b", "c", at most max of them, then
// "(and N more)", so an error message stays readable for big workflows.
func quoteList(names []string, max int) string {
	var b strings.Builder
	for i, n := range names {
		if i == max {
			fmt.Fprintf(&b, " (and %d more)", len(names)-max)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", n)
	}
	return b.String()
}

// validName reports whether s is a valid workflow or task name.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == ':') {
			return false
		}
	}
	return true
}

// WorkflowError reports why a workflow failed validation. It matches
// ErrInvalidWorkflow with errors.Is.
type WorkflowError struct {
	Workflow string
	Task     string // the culprit task, if any
	Reason   string
	// Cycle lists the task names of a dependency cycle in flow order (each
	// runs after the one before it), the first repeated last.
	Cycle []string
}

func (e *WorkflowError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "batuta: invalid workflow %q", e.Workflow)
	if e.Task != "" {
		fmt.Fprintf(&b, ": task %q", e.Task)
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	if len(e.Cycle) > 0 {
		b.WriteString(": ")
		b.WriteString(strings.Join(e.Cycle, " -> "))
		if len(e.Cycle) == 2 {
			fmt.Fprintf(&b, "; remove %q from its own Task.Deps", e.Cycle[0])
		} else {
			b.WriteString("; Task.Deps must not loop: remove one of these dependencies")
		}
	}
	return b.String()
}

// Is makes errors.Is(err, ErrInvalidWorkflow) true.
func (e *WorkflowError) Is(target error) bool { return target == ErrInvalidWorkflow }

func compileWorkflow(wf *Workflow) (*compiledWorkflow, error) {
	if wf == nil {
		return nil, &WorkflowError{Reason: `nil workflow; pass one, e.g. o.Register(&batuta.Workflow{Name: "orders", Tasks: []batuta.Task{{Name: "charge", Run: charge}}})`}
	}
	bad := func(task, reason string) error {
		return &WorkflowError{Workflow: wf.Name, Task: task, Reason: reason}
	}
	switch {
	case wf.Name == "":
		return nil, bad("", `Workflow.Name is empty; set it to `+nameRule+`, e.g. Name: "orders"`)
	case !validName(wf.Name):
		return nil, bad("", `Workflow.Name: name must be `+nameRule+`, e.g. Name: "orders"`)
	case len(wf.Tasks) == 0:
		return nil, bad("", `Workflow.Tasks is empty: no tasks; add at least one, e.g. Tasks: []batuta.Task{{Name: "charge", Run: charge}}`)
	case wf.Timeout < 0:
		return nil, bad("", fmt.Sprintf("Workflow.Timeout must not be negative (got %s); use e.g. Timeout: 10*time.Minute, or 0 for no limit", wf.Timeout))
	case wf.OnFailureTimeout < 0:
		return nil, bad("", fmt.Sprintf("Workflow.OnFailureTimeout must not be negative (got %s); use e.g. OnFailureTimeout: time.Minute, or 0 for the default", wf.OnFailureTimeout))
	case (wf.OnFailure != nil || wf.DeadLetter != nil) && len(FailureWorkflow(wf.Name)) > 128:
		return nil, bad("", fmt.Sprintf("Workflow.Name is %d bytes: with OnFailure or DeadLetter it must be at most %d bytes (the hidden workflow %s... adds a prefix)", len(wf.Name), 128-len(FailureWorkflow("")), FailureWorkflow("")))
	case wf.localCap < 0:
		return nil, bad("", fmt.Sprintf("FunctionConfig.Concurrency must not be negative (got %d); use e.g. Concurrency: 10, or 0 for no cap", wf.localCap))
	}
	cw := &compiledWorkflow{
		name:     wf.Name,
		timeout:  wf.Timeout,
		localCap: wf.localCap,
		tasks:    make([]compiledTask, len(wf.Tasks)),
		specs:    make([]TaskSpec, len(wf.Tasks)),
		index:    make(map[string]int, len(wf.Tasks)),
	}
	for i, t := range wf.Tasks {
		switch {
		case t.Name == "":
			return nil, bad("", fmt.Sprintf(`Workflow.Tasks[%d]: Task.Name is empty; set it to `+nameRule+`, e.g. Name: "charge"`, i))
		case !validName(t.Name):
			return nil, bad(t.Name, `Task.Name: name must be `+nameRule+`, e.g. Name: "charge"`)
		}
		if j, dup := cw.index[t.Name]; dup {
			return nil, bad(t.Name, fmt.Sprintf("duplicate task name: Workflow.Tasks[%d] and [%d] are both named %q; give each Task.Name its own value", j, i, t.Name))
		}
		cw.index[t.Name] = i
		switch {
		case t.Run == nil && t.Child == nil && !waitsOnly(&t):
			return nil, bad(t.Name, "nil Run func: Task.Run is nil; set it to a func(ctx context.Context, in *batuta.Input) (any, error)")
		case t.Timeout < 0:
			return nil, bad(t.Name, fmt.Sprintf("Task.Timeout must not be negative (got %s); use e.g. Timeout: 30*time.Second, or 0 for no limit", t.Timeout))
		case t.When < AllSucceeded || t.When > NoneFailed:
			return nil, bad(t.Name, fmt.Sprintf("Task.When: unknown join rule %d; use one of batuta.AllSucceeded (the default), AllDone, OneSucceeded, OneFailed, AllFailed, NoneFailed", int(t.When)))
		case t.FireEarly && t.When != OneSucceeded && t.When != OneFailed:
			return nil, bad(t.Name, "Task.FireEarly needs Task.When = batuta.OneSucceeded or batuta.OneFailed, not "+t.When.String()+"; set When: batuta.OneSucceeded, or drop FireEarly")
		}
		if err := t.Retry.validate("Task."); err != nil {
			var ce *ConfigError
			errors.As(err, &ce)
			return nil, bad(t.Name, ce.Field+" "+ce.Reason)
		}
		if t.Concurrency != nil {
			if why := validateConcurrency("Task.Concurrency", t.Concurrency, true); why != "" {
				return nil, bad(t.Name, why)
			}
		}
		if t.RateLimit != nil {
			if why := validateRateLimit(t.RateLimit); why != "" {
				return nil, bad(t.Name, why)
			}
		}
		wait, why := compileWait(&t)
		if why != "" {
			return nil, bad(t.Name, why)
		}
		cw.tasks[i] = compiledTask{
			wait:    wait,
			name:    t.Name,
			fn:      t.Run,
			retry:   t.Retry.withDefaults(),
			timeout: t.Timeout,
			when:    t.When,
			deps:    append([]string(nil), t.Deps...),
			strict:  wf.StrictInput,
			conc:    cloneConcurrency(t.Concurrency),
			rate:    cloneRateLimit(t.RateLimit),
			wf:      cw,
			pos:     i,
		}
		if err := compileSubTask(wf, &wf.Tasks[i], &cw.tasks[i]); err != nil {
			return nil, err
		}
	}
	for i, t := range wf.Tasks {
		seen := make(map[string]bool, len(t.Deps))
		deps := make([]int, 0, len(t.Deps))
		for _, d := range t.Deps {
			j, ok := cw.index[d]
			switch {
			case !ok:
				names := make([]string, 0, len(wf.Tasks)-1)
				for _, o := range wf.Tasks {
					if o.Name != t.Name {
						names = append(names, o.Name)
					}
				}
				hint := "this workflow has no other task; add one to Workflow.Tasks or remove it from Deps"
				if len(names) > 0 {
					hint = "name one of " + quoteList(names, 20)
				}
				return nil, bad(t.Name, fmt.Sprintf("Task.Deps: unknown dependency %q: no task of this workflow has that name; %s", d, hint))
			case j == i:
				return nil, &WorkflowError{Workflow: wf.Name, Task: t.Name, Reason: "depends on itself", Cycle: []string{t.Name, t.Name}}
			case seen[d]:
				return nil, bad(t.Name, fmt.Sprintf("Task.Deps: dependency %q listed twice; list each dependency once", d))
			}
			seen[d] = true
			deps = append(deps, j)
		}
		cw.specs[i] = TaskSpec{Name: t.Name, Deps: deps, FireOn: fireOn(&wf.Tasks[i]), Signal: signalName(&wf.Tasks[i])}
	}
	if cyc := findCycle(cw.specs); cyc != nil {
		return nil, &WorkflowError{Workflow: wf.Name, Task: cyc[0], Reason: "dependency cycle", Cycle: cyc}
	}
	if err := compileFlow(wf, cw); err != nil {
		return nil, err
	}
	return cw, nil
}

// findCycle returns the names along a dependency cycle, or nil. It walks
// iteratively, so deep chains do not grow the goroutine stack.
func findCycle(specs []TaskSpec) []string {
	const (
		white = iota
		grey
		black
	)
	color := make([]uint8, len(specs))
	parent := make([]int, len(specs))
	type frame struct{ node, next int }
	for start := range specs {
		if color[start] != white {
			continue
		}
		stack := []frame{{start, 0}}
		color[start] = grey
		parent[start] = -1
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			deps := specs[top.node].Deps
			if top.next == len(deps) {
				color[top.node] = black
				stack = stack[:len(stack)-1]
				continue
			}
			d := deps[top.next]
			top.next++
			switch color[d] {
			case white:
				color[d] = grey
				parent[d] = top.node
				stack = append(stack, frame{d, 0})
			case grey:
				// top.node depends on d, which is on the stack: the cycle
				// runs d -> ... -> top.node -> d in dependency direction.
				cyc := []string{specs[d].Name}
				for n := top.node; n != d; n = parent[n] {
					cyc = append(cyc, specs[n].Name)
				}
				// In flow order: "a -> b" means b depends on a.
				return append(cyc, specs[d].Name)
			}
		}
	}
	return nil
}
