package batuta

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"time"
	"unicode/utf8"
)

// Flow control: when runs start (StartAt, StartAfter, Debounce), in which
// order (WithPriority), how many at once (Concurrency), how fast (RateLimit)
// and whether at all (Orchestrator.Pause). docs/flow.md describes each
// control and what every store guarantees.

// A SubmitOption changes how Submit, SubmitBlocking and SubmitMany start a
// run: StartAt, StartAfter, WithPriority. Later options override earlier
// ones of the same kind; StartAt and StartAfter set the same start time.
type SubmitOption struct {
	kind submitOptKind
	at   time.Time
	d    time.Duration
	p    int
}

type submitOptKind uint8

const (
	optNone submitOptKind = iota
	optStartAt
	optStartAfter
	optPriority
)

// StartAt makes the run start at t at the earliest: it is recorded at once
// (it can be found, listed, canceled and deduplicated by Event.ID like any
// run) but no task of it is claimed before t, and it holds no worker while
// it waits. A t in the past (or the zero time) means now, as River and
// asynq do: a start time computed from a row or a message that arrives late
// runs at once rather than failing.
func StartAt(t time.Time) SubmitOption { return SubmitOption{kind: optStartAt, at: t} }

// StartAfter makes the run start d after the submit (see StartAt). A
// negative d is an error (ErrInvalidConfig) at submit; 0 means now.
func StartAfter(d time.Duration) SubmitOption { return SubmitOption{kind: optStartAfter, d: d} }

// WithPriority sets the run's priority: when more tasks are ready than
// workers can take, tasks of runs with a higher priority are claimed first
// (equal priorities in the order they became ready). The default is 0;
// negative values run after the default. It must fit in 32 bits.
func WithPriority(p int) SubmitOption { return SubmitOption{kind: optPriority, p: p} }

// submitOpts is the resolved form of a list of SubmitOptions.
type submitOpts struct {
	startAt  time.Time // zero: now
	priority int
}

// resolveSubmitOptions applies opts at now.
func resolveSubmitOptions(opts []SubmitOption, now time.Time) (submitOpts, error) {
	var so submitOpts
	for i, o := range opts {
		switch o.kind {
		case optStartAt:
			so.startAt = o.at
		case optStartAfter:
			if o.d < 0 {
				return so, &ConfigError{Field: fmt.Sprintf("StartAfter (option %d)", i), Reason: fmt.Sprintf(
					"the delay must not be negative (got %s); use e.g. batuta.StartAfter(5*time.Minute), or batuta.StartAt(t) for a point in time", o.d)}
			}
			so.startAt = now.Add(o.d)
		case optPriority:
			if o.p > math.MaxInt32 || o.p < math.MinInt32 {
				return so, &ConfigError{Field: fmt.Sprintf("WithPriority (option %d)", i), Reason: fmt.Sprintf(
					"priority %d does not fit in 32 bits; use a small number such as 10 (higher runs first, default 0)", o.p)}
			}
			so.priority = o.p
		default:
			return so, &ConfigError{Field: fmt.Sprintf("SubmitOption (option %d)", i), Reason: "the zero SubmitOption; make options with batuta.StartAt, StartAfter or WithPriority"}
		}
	}
	if !so.startAt.After(now) {
		so.startAt = time.Time{} // the past means now
	}
	return so, nil
}

// Concurrency limits how many runs of a workflow (Workflow.Concurrency), or
// attempts of a task (Task.Concurrency), are in progress at once per key,
// across every orchestrator sharing the store.
//
// A workflow limit counts unfinished runs of the key: a run is admitted
// when its first task is claimed and leaves the group when it finishes,
// however it finishes. A task limit counts running attempts of the task
// with the key (claimed and not yet completed).
type Concurrency struct {
	// Key computes the group of a run from its event (for a task too: the
	// run's event). Nil puts every run in one group. The key the store
	// sees is the workflow name (and "/" and the task name, for a task
	// limit), ":" and this key; if that is longer than 255 bytes or not
	// valid UTF-8, the user key is replaced by "sha256:" and its SHA-256
	// in hex. A Key that panics fails the Submit (nothing is created).
	Key func(Event) string
	// Max is how many runs (or attempts) of one key may be in progress at
	// once (>= 1).
	Max int
	// Strategy says what happens to a run over the limit (workflow limits
	// only; a task limit always queues): ConcurrencyQueue (default) waits
	// its turn, FIFO per key with keys served round-robin;
	// ConcurrencyCancelInProgress cancels the oldest unfinished runs of
	// the key to make room; ConcurrencyCancelNewest records the new run as
	// canceled at once.
	Strategy ConcurrencyStrategy
}

// RateLimit limits how fast attempts of a task start: at most Limit per Per
// for tasks sharing Name (and, with Key, the key), across every
// orchestrator sharing the store. A task over its limit is handed back to
// the store until its slot comes (it holds no worker and spends no
// attempt), so the limit bounds starts, not completions.
//
// It is a generic cell rate algorithm (GCRA, see RateSpec): start slots
// are spaced Per/Limit apart, and up to Burst of them may be back to back
// after an idle spell; in any window of length Per at most Limit+Burst-1
// slots are granted. Each attempt takes one slot and never starts before
// it; it starts later than its slot only if no worker (or CPU) was free at
// that moment, so observed starts can bunch by that lateness. Slots are
// reserved in order, so waiting tasks are served roughly first come,
// first served.
type RateLimit struct {
	// Name names the limited resource (e.g. "payment-api"); tasks of any
	// workflow with the same Name share the limit, and must then declare
	// the same Limit, Per and Burst. Same alphabet as Workflow.Name.
	Name string
	// Key, if not nil, splits the limit per key (e.g. per customer):
	// Name+":"+key is one limit (hashed as for Concurrency.Key beyond
	// 255 bytes). It runs before each attempt; a Key that panics fails the
	// task.
	Key func(*Input) string
	// Limit is how many starts each Per allows (>= 1).
	Limit int
	// Per is the period (> 0).
	Per time.Duration
	// Burst is how many starts may go back to back (0 means 1: evenly
	// spaced starts).
	Burst int
}

// Debounce merges a burst of events into one run: an event arriving while
// a run of its key is still waiting to start does not start another run;
// the waiting run takes the new event (its data, and its ID as the dedupe
// key) and waits Window more, but starts at most MaxWait after the first
// event of the burst. So a run starts once its key was quiet for Window,
// with the last event's data.
type Debounce struct {
	// Key computes the group from the event; nil: one group for the
	// workflow. Bounded as Concurrency.Key is (without the prefix).
	Key func(Event) string
	// Window is how long the run waits after the latest event (> 0).
	Window time.Duration
	// MaxWait bounds the wait from the burst's first event (>= Window).
	// 0 means 10*Window.
	MaxWait time.Duration
}

// maxFlowKey is the longest key a store accepts (ConcurrencySpec.Key,
// DebounceSpec.Key, RateSpec.Key).
const maxFlowKey = 255

// flowKey composes prefix+":"+user, bounded to maxFlowKey bytes of valid
// UTF-8 without NUL: a longer or invalid user key is replaced by its
// SHA-256 (and the whole key is hashed if the prefix alone is too long).
func flowKey(prefix, user string) string {
	if len(prefix)+1+len(user) <= maxFlowKey && validKeyText(user) {
		return prefix + ":" + user
	}
	sum := sha256.Sum256([]byte(user))
	h := "sha256:" + hex.EncodeToString(sum[:])
	if len(prefix)+1+len(h) <= maxFlowKey {
		return prefix + ":" + h
	}
	all := sha256.Sum256([]byte(prefix + ":" + user))
	return "sha256:" + hex.EncodeToString(all[:])
}

func validKeyText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return false
		}
	}
	return true
}

// callKey calls a user key function, turning a panic into an error.
func callKey[T any](fn func(T) string, v T) (key string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = newPanicError(p)
		}
	}()
	return fn(v), nil
}

// A BindOption changes how Bind submits a trigger's events.
type BindOption struct {
	submitWith func(Event) ([]SubmitOption, error)
}

// SubmitWith computes submit options for each event the trigger fires:
// e.g. a database trigger's start time from a column of the row
// (batuta.StartAt(row.SendAt)), or a priority from the message. The
// options come after those the trigger sets itself (the queue trigger's
// batuta-delay, batuta-start-at and batuta-priority metadata), so they
// win. An error from fn fails the fire with an error matching
// ErrInvalidPayload (a queue trigger dead-letters such a message).
func SubmitWith(fn func(Event) ([]SubmitOption, error)) BindOption {
	return BindOption{submitWith: fn}
}

// compiledFlow is the flow-control part of a compiled workflow; nil for a
// workflow that uses none, so plain workflows pay nothing.
type compiledFlow struct {
	conc      *Concurrency // workflow level
	concKey   string       // precomputed ConcurrencySpec.Key when conc.Key is nil
	debounce  *Debounce
	maxWait   time.Duration
	taskConc  bool // some task has a Concurrency with a Key func: specs are built per run
	hasRate   bool
	rateNames map[string]*RateLimit
}

// validateConcurrency checks a Concurrency for field (e.g.
// "Workflow.Concurrency"); task limits must queue.
func validateConcurrency(field string, c *Concurrency, task bool) string {
	switch {
	case c.Max < 1:
		return fmt.Sprintf("%s.Max must be at least 1 (got %d); use e.g. Max: 1 for one at a time per key, or leave %s nil for no limit", field, c.Max, field)
	case c.Strategy > ConcurrencyCancelNewest:
		return fmt.Sprintf("%s.Strategy: unknown strategy %s; use batuta.ConcurrencyQueue (the default), ConcurrencyCancelInProgress or ConcurrencyCancelNewest", field, c.Strategy)
	case task && c.Strategy != ConcurrencyQueue:
		return fmt.Sprintf("%s.Strategy must be batuta.ConcurrencyQueue for a task (got %s): a task over its limit waits; cancel strategies apply to whole runs, in Workflow.Concurrency", field, c.Strategy)
	}
	return ""
}

func validateRateLimit(r *RateLimit) string {
	switch {
	case r.Name == "":
		return `Task.RateLimit.Name is empty; name the limited resource, e.g. Name: "payment-api" (tasks sharing a Name share the limit)`
	case !validName(r.Name):
		return "Task.RateLimit.Name must be " + nameRule + `, e.g. Name: "payment-api"`
	case r.Limit < 1:
		return fmt.Sprintf("Task.RateLimit.Limit must be at least 1 (got %d); use e.g. Limit: 10, Per: time.Second", r.Limit)
	case r.Per <= 0:
		return fmt.Sprintf("Task.RateLimit.Per must be positive (got %s); use e.g. Per: time.Second", r.Per)
	case r.Burst < 0:
		return fmt.Sprintf("Task.RateLimit.Burst must not be negative (got %d); use e.g. Burst: 5, or 0 for evenly spaced starts", r.Burst)
	case r.Per/time.Duration(r.Limit) <= 0:
		return fmt.Sprintf("Task.RateLimit: Limit %d per %s is finer than a nanosecond; use a longer Per", r.Limit, r.Per)
	}
	return ""
}

func validateDebounce(d *Debounce) string {
	switch {
	case d.Window <= 0:
		return fmt.Sprintf("Workflow.Debounce.Window must be positive (got %s); use e.g. Window: 2*time.Second, or leave Debounce nil", d.Window)
	case d.MaxWait < 0:
		return fmt.Sprintf("Workflow.Debounce.MaxWait must not be negative (got %s); use e.g. MaxWait: time.Minute, or 0 for 10*Window", d.MaxWait)
	case d.MaxWait > 0 && d.Window > d.MaxWait:
		return fmt.Sprintf("Workflow.Debounce.Window (%s) is longer than MaxWait (%s); MaxWait bounds the whole wait, so it must be at least Window", d.Window, d.MaxWait)
	}
	return ""
}

// rateSpec returns the store's RateSpec for r with key.
func rateSpec(r *RateLimit, key string) RateSpec {
	return RateSpec{Key: key, Limit: r.Limit, Per: r.Per, Burst: max(r.Burst, 1)}
}

func cloneConcurrency(c *Concurrency) *Concurrency {
	if c == nil {
		return nil
	}
	cc := *c
	return &cc
}

func cloneRateLimit(r *RateLimit) *RateLimit {
	if r == nil {
		return nil
	}
	rr := *r
	return &rr
}

// compileFlow validates and compiles the flow controls of wf into cw.flow
// (left nil when wf uses none). Task-level fields are already validated.
func compileFlow(wf *Workflow, cw *compiledWorkflow) error {
	bad := func(task, reason string) error {
		return &WorkflowError{Workflow: wf.Name, Task: task, Reason: reason}
	}
	f := &compiledFlow{}
	used := false
	if c := wf.Concurrency; c != nil {
		if why := validateConcurrency("Workflow.Concurrency", c, false); why != "" {
			return bad("", why)
		}
		f.conc = cloneConcurrency(c)
		if c.Key == nil {
			f.concKey = flowKey(wf.Name, "")
		}
		used = true
	}
	if d := wf.Debounce; d != nil {
		if why := validateDebounce(d); why != "" {
			return bad("", why)
		}
		dd := *d
		f.debounce = &dd
		f.maxWait = d.MaxWait
		if f.maxWait == 0 {
			f.maxWait = 10 * d.Window
		}
		used = true
	}
	for i := range cw.tasks {
		ct := &cw.tasks[i]
		if ct.conc != nil {
			used = true
			if ct.conc.Key == nil {
				cw.specs[i].Concurrency = &ConcurrencySpec{Key: flowKey(wf.Name+"/"+ct.name, ""), Max: ct.conc.Max}
			} else {
				f.taskConc = true
			}
		}
		if r := ct.rate; r != nil {
			used = true
			f.hasRate = true
			if f.rateNames == nil {
				f.rateNames = map[string]*RateLimit{}
			}
			if other, ok := f.rateNames[r.Name]; ok && !sameRate(other, r) {
				return bad(ct.name, fmt.Sprintf("Task.RateLimit %q: Limit %d per %s (burst %d) differs from another task's %d per %s (burst %d) under the same Name; tasks sharing a Name share one limit: give them the same numbers, or another Name",
					r.Name, r.Limit, r.Per, r.Burst, other.Limit, other.Per, other.Burst))
			}
			f.rateNames[r.Name] = r
		}
	}
	if used {
		cw.flow = f
	}
	return nil
}

func sameRate(a, b *RateLimit) bool {
	return a.Limit == b.Limit && a.Per == b.Per && max(a.Burst, 1) == max(b.Burst, 1)
}

// newRunFlow fills the flow-control fields of nr (a run of cw for ev) from
// cw's controls and the submit options. It calls the user's key functions;
// a panic is an error and nothing is changed.
func (cw *compiledWorkflow) newRunFlow(nr *NewRun, so submitOpts) error {
	nr.StartAt, nr.Priority = so.startAt, so.priority
	f := cw.flow
	if f == nil {
		return nil
	}
	ev := nr.Event
	keyErr := func(field string, err error) error {
		return fmt.Errorf("%w: %s panicked on event %q of workflow %s (nothing was submitted): %w", ErrInvalidPayload, field, ev.ID, cw.name, err)
	}
	if c := f.conc; c != nil {
		key := f.concKey
		if c.Key != nil {
			k, err := callKey(c.Key, ev)
			if err != nil {
				return keyErr("Workflow.Concurrency.Key", err)
			}
			key = flowKey(cw.name, k)
		}
		nr.Concurrency = &ConcurrencySpec{Key: key, Max: c.Max, Strategy: c.Strategy}
	}
	if d := f.debounce; d != nil {
		k := ""
		if d.Key != nil {
			var err error
			if k, err = callKey(d.Key, ev); err != nil {
				return keyErr("Workflow.Debounce.Key", err)
			}
		}
		if len(k) > maxFlowKey || !validKeyText(k) {
			sum := sha256.Sum256([]byte(k))
			k = "sha256:" + hex.EncodeToString(sum[:])
		}
		nr.Debounce = &DebounceSpec{Key: k, Window: d.Window, MaxWait: f.maxWait}
	}
	if f.taskConc {
		specs := append([]TaskSpec(nil), cw.specs...)
		for i := range cw.tasks {
			ct := &cw.tasks[i]
			if ct.conc == nil || ct.conc.Key == nil {
				continue
			}
			k, err := callKey(ct.conc.Key, ev)
			if err != nil {
				return keyErr("Task.Concurrency.Key of task "+ct.name, err)
			}
			specs[i].Concurrency = &ConcurrencySpec{Key: flowKey(cw.name+"/"+ct.name, k), Max: ct.conc.Max}
		}
		nr.Tasks = specs
	}
	return nil
}
