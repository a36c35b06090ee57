package batuta

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"
)

// FunctionConfig configures a function registered with RegisterFunc.
//
// A function is a workflow with one task, the handler, so it gets
// everything the executor gives tasks: retries with backoff, a timeout per
// attempt, panics turned into failed attempts, deduplication by event ID,
// and a per-function concurrency cap. With a DeadLetter it gets a second,
// hidden task that hands a failed event to that destination.
type FunctionConfig struct {
	// Name identifies the function (the workflow name: 1-128 bytes of
	// letters, digits and . _ - :). Required.
	Name string
	// Concurrency caps the handler invocations running at once in this
	// orchestrator, like AWS Lambda's reserved concurrency: further
	// invocations wait in the Store until a slot frees. 0 means only the
	// orchestrator's worker pool bounds it. The dead-letter task, when it
	// runs, counts against the cap too.
	Concurrency int
	// Timeout bounds each attempt of the handler; its ctx is canceled when
	// it passes and the attempt fails with ErrTimeout. 0 means no limit.
	Timeout time.Duration
	// Retry says how failed attempts are retried. The zero value means the
	// RetryPolicy defaults (3 attempts). Return Permanent(err) from the
	// handler to fail at once.
	Retry RetryPolicy
	// DeadLetter is the on-failure destination: after the handler's last
	// attempt failed (or a Permanent error, a timeout on the last attempt,
	// a panic on the last attempt), the event and its error go there.
	//
	// It runs as a task of the run, after the handler, so it is as durable
	// as the Store: a crash between the failure and the hand-off resumes
	// the hand-off, and once the hand-off succeeded it is never repeated
	// (except for a crash during the hand-off itself: at least once, with a
	// stable DeadLetter.RunID to deduplicate). It is retried per
	// DeadLetterRetry; if every attempt fails, the run is failed with both
	// errors recorded in the Store and logged.
	//
	// nil: failures are not handed anywhere; they stay in the Store as
	// failed runs (ListRuns) and are logged at Warn by the log hooks.
	// Canceled runs are not failures and are not dead-lettered.
	DeadLetter DeadLetterHandler
	// DeadLetterRetry retries the hand-off to DeadLetter (each attempt is
	// bounded by 30 s). Default: 10 attempts, from 1 s up to 1 min apart.
	DeadLetterRetry RetryPolicy
	// StrictInput decodes the handler's In strictly (see EventDataStrict):
	// a field In does not have, a null body or no body at all fails the
	// invocation at once with ErrInvalidPayload, and the HTTP handler
	// answers such a request 400 before any run exists. It has no effect
	// on handlers taking Event, []byte or json.RawMessage.
	//
	// Off by default, as in encoding/json, so callers may send fields the
	// handler does not know yet; see Workflow.StrictInput.
	StrictInput bool
}

// Task names of a function's workflow.
const (
	// FunctionTask is the name of a function's handler task, the first
	// task of its runs (Run.Tasks[0]).
	FunctionTask = "handler"
	// FunctionDeadLetterTask is the name of the task that hands a failed
	// event to FunctionConfig.DeadLetter.
	FunctionDeadLetterTask = "dead-letter"
)

func (c FunctionConfig) validate() error {
	switch {
	case c.Name == "":
		return &ConfigError{Field: "Name", Reason: `required: set FunctionConfig.Name to ` + nameRule + `, e.g. Name: "resize-image"`}
	case !validName(c.Name):
		return &ConfigError{Field: "Name", Reason: fmt.Sprintf(`FunctionConfig.Name %q must be `+nameRule+`, e.g. Name: "resize-image"`, c.Name)}
	case c.Concurrency < 0:
		return &ConfigError{Field: "Concurrency", Reason: fmt.Sprintf("FunctionConfig.Concurrency must not be negative (got %d); use e.g. Concurrency: 10, or 0 for no cap", c.Concurrency)}
	case c.Timeout < 0:
		return &ConfigError{Field: "Timeout", Reason: fmt.Sprintf("FunctionConfig.Timeout must not be negative (got %s); use e.g. Timeout: 30*time.Second, or 0 for no limit", c.Timeout)}
	}
	if err := c.Retry.validate(""); err != nil {
		return err
	}
	if err := c.DeadLetterRetry.validate("DeadLetter"); err != nil {
		return err
	}
	return nil
}

// RegisterFunc registers a function-style handler under cfg.Name on o.
//
// The handler receives the triggering event's data as an In: if In is
// Event, the event itself; if []byte or json.RawMessage, the raw data;
// otherwise the data decoded from JSON (an empty payload gives In's zero
// value; malformed JSON fails the invocation at once, without retries,
// with an error matching ErrInvalidPayload). Inside the handler,
// InputFromContext gives the attempt number, run ID and the event.
//
// Its output Out is what Invoke returns; it must be JSON-encodable for
// durable stores. Start a function like any workflow: Invoke (synchronous),
// InvokeAsync or Submit, a bound trigger (Bind), or the HTTP handler.
// Register functions before Run; registering the same name twice fails.
func RegisterFunc[In, Out any](o *Orchestrator, cfg FunctionConfig, h func(ctx context.Context, in In) (Out, error)) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if h == nil {
		return &ConfigError{Field: "handler", Reason: fmt.Sprintf("required: the handler of function %q is nil; pass a func(ctx context.Context, in %v) (%v, error)",
			cfg.Name, reflect.TypeFor[In](), reflect.TypeFor[Out]())}
	}
	decode := decoderFor[In](cfg.StrictInput)
	handler := func(ctx context.Context, in *Input) (any, error) {
		v, err := decode(in)
		if err != nil {
			return nil, Permanent(err)
		}
		return h(context.WithValue(ctx, inputKey{}, in), v)
	}
	wf := &Workflow{
		Name:        cfg.Name,
		StrictInput: cfg.StrictInput,
		localCap:    cfg.Concurrency,
		Tasks: []Task{{
			Name:    FunctionTask,
			Run:     handler,
			Retry:   cfg.Retry,
			Timeout: cfg.Timeout,
		}},
	}
	if cfg.DeadLetter != nil {
		t := deadLetterTaskOf(cfg.DeadLetterRetry, deadLetterTask(o, cfg.DeadLetter))
		t.Deps, t.When = []string{FunctionTask}, OneFailed
		wf.Tasks = append(wf.Tasks, t)
	}
	if err := o.Register(wf); err != nil {
		return err
	}
	functionsOf(o).add(cfg.Name, inputCheckFor[In](cfg.StrictInput))
	return nil
}

// deadLetterTimeout bounds each attempt to hand a failure to a function's
// dead-letter destination, so a hung destination is retried, not waited on.
const deadLetterTimeout = 30 * time.Second

// deadLetterTaskOf is the task handing failures to a dead-letter
// destination (a function's, a workflow's): retried per retry (default 10
// attempts, 1 s to 1 min apart), each attempt bounded by deadLetterTimeout.
func deadLetterTaskOf(retry RetryPolicy, run TaskFunc) Task {
	if retry == (RetryPolicy{}) {
		retry = RetryPolicy{MaxAttempts: 10, InitialDelay: time.Second, MaxDelay: time.Minute}
	}
	return Task{Name: FunctionDeadLetterTask, Retry: retry, Timeout: deadLetterTimeout, Run: run}
}

// handDeadLetter is one hand-off of dl to its destination.
func handDeadLetter(ctx context.Context, h DeadLetterHandler, dl DeadLetter) error {
	if err := h.HandleDeadLetter(ctx, dl); err != nil {
		return fmt.Errorf("batuta: dead-letter destination of %s: %w", dl.Workflow, err)
	}
	return nil
}

// deadLetterTask hands the failed handler's event and error to dl.
func deadLetterTask(o *Orchestrator, dl DeadLetterHandler) TaskFunc {
	return func(ctx context.Context, in *Input) (any, error) {
		up := in.Upstream()
		if len(up) != 1 || up[0].State != TaskFailed {
			return nil, nil // canceled, not failed: nothing to hand off
		}
		attempts := 0
		if r, err := o.GetRun(ctx, in.RunID()); err == nil {
			if t := r.Task(FunctionTask); t != nil {
				attempts = t.AttemptCount()
			}
		}
		return nil, handDeadLetter(ctx, dl, DeadLetter{
			Event:    in.Event(),
			Reason:   DeadLetterFailed,
			Error:    up[0].Error,
			Attempts: attempts,
			Workflow: in.Workflow(),
			RunID:    in.RunID(),
			Time:     o.clock.Now(),
		})
	}
}

// decoderFor returns how a function's handler gets its In from the event.
func decoderFor[In any](strict bool) func(in *Input) (In, error) {
	var zero In
	switch any(zero).(type) {
	case Event:
		return func(in *Input) (In, error) { return any(in.Event()).(In), nil }
	case []byte:
		return func(in *Input) (In, error) { return any(in.Event().Data).(In), nil }
	case json.RawMessage:
		return func(in *Input) (In, error) { return any(json.RawMessage(in.Event().Data)).(In), nil }
	}
	return func(in *Input) (In, error) { return eventData[In](in, strict) }
}

type inputKey struct{}

// InputFromContext returns the Input of the function invocation (task
// attempt) running with ctx: its attempt number, run ID, event and
// idempotency key. It is valid only during that call.
func InputFromContext(ctx context.Context) (*Input, bool) {
	in, ok := ctx.Value(inputKey{}).(*Input)
	return in, ok
}

// FunctionError is the error of an invocation whose run did not succeed.
// It matches ErrTimeout when the last attempt timed out and ErrCanceled
// when the run was canceled.
type FunctionError struct {
	Function string
	RunID    string
	// State is the run's final state (failed or canceled).
	State RunState
	// Err is the handler's last error, as recorded.
	Err string
	// Attempts is how many attempts ran.
	Attempts int
	// TimedOut is set when the last attempt exceeded its timeout.
	TimedOut bool
}

func (e *FunctionError) Error() string {
	return fmt.Sprintf("batuta: function %s %s (run %s, %d attempts): %s", e.Function, e.State, e.RunID, e.Attempts, e.Err)
}

// Is makes errors.Is(err, ErrTimeout) and errors.Is(err, ErrCanceled) work.
func (e *FunctionError) Is(target error) bool {
	return (target == ErrTimeout && e.TimedOut) || (target == ErrCanceled && e.State == RunCanceled)
}

// Invoke calls the function name synchronously: it submits a run for
// payload, waits for it and returns the handler's output (the Go value with
// the in-memory store, a json.RawMessage with durable ones; InvokeAs
// converts). A run that did not succeed returns a *FunctionError.
//
// payload becomes the event: an Event or *Event is used as is (its ID is
// the idempotency key: invoking twice with one ID returns the first run's
// result), []byte and json.RawMessage are the event data, nil is no data,
// anything else is encoded as JSON; such an event has Source SourceInvoke
// and an ID Submit assigns.
//
// Invoke works before Run, like Submit: the run is recorded at once and
// executes when Run starts, and Invoke waits for it. So `go o.Run(ctx)`
// followed by Invoke has no start-up race; but an orchestrator whose Run is
// never called makes Invoke wait until ctx ends.
//
// If the orchestrator is at its in-flight cap Invoke returns ErrBusy at once
// (throttled, like a 429). If ctx ends first it returns ctx's error,
// wrapped with the run ID; the run goes on (cancel it with Cancel if
// needed). Other errors: ErrUnknownWorkflow (no function by that name),
// ErrPayloadTooLarge, ErrInvalidPayload.
func (o *Orchestrator) Invoke(ctx context.Context, name string, payload any) (any, error) {
	run, err := o.invoke(ctx, name, payload)
	if err != nil {
		return nil, err
	}
	return run.Tasks[0].Output, nil
}

// InvokeAs is Invoke with the output converted to Out, whichever store
// kept it (ErrTypeMismatch if it is not an Out).
func InvokeAs[Out any](ctx context.Context, o *Orchestrator, name string, payload any) (Out, error) {
	run, err := o.invoke(ctx, name, payload)
	if err != nil {
		var zero Out
		return zero, err
	}
	return convertOutput[Out](run.Tasks[0].Output, name)
}

// InvokeAsync starts the function name for payload (as Invoke reads it)
// and returns the run's ID once the run is accepted, without waiting. It
// works before Run (the run starts when Run does). Follow the run with Wait
// or GetRun. Options delay the invocation or set its priority, as for
// Submit (e.g. batuta.StartAfter(time.Hour)).
func (o *Orchestrator) InvokeAsync(ctx context.Context, name string, payload any, opts ...SubmitOption) (string, error) {
	if !functionsOf(o).has(name) {
		return "", o.unknownFunction(name)
	}
	ev, err := eventFor(payload)
	if err != nil {
		return "", err
	}
	return o.Submit(ctx, name, ev, opts...)
}

func (o *Orchestrator) invoke(ctx context.Context, name string, payload any) (*Run, error) {
	if !functionsOf(o).has(name) {
		return nil, o.unknownFunction(name)
	}
	ev, err := eventFor(payload)
	if err != nil {
		return nil, err
	}
	runID, err := o.Submit(ctx, name, ev)
	if err != nil {
		return nil, err
	}
	run, err := o.Wait(ctx, runID)
	if err != nil {
		return nil, fmt.Errorf("batuta: invoke %s: waiting for run %s: %w", name, runID, err)
	}
	return run, runError(name, run)
}

// runError returns the *FunctionError of a function run that did not
// succeed, or nil.
func runError(name string, run *Run) error {
	if run.State == RunSucceeded {
		return nil
	}
	t := &run.Tasks[0]
	fe := &FunctionError{Function: name, RunID: run.ID, State: run.State, Err: t.Error, Attempts: t.AttemptCount()}
	if fe.Err == "" {
		fe.Err = run.Error
	}
	if n := len(t.Attempts); n > 0 {
		last := t.Attempts[n-1]
		// Stores keep errors as text: ErrTimeout shows as its message.
		fe.TimedOut = last.Outcome == OutcomeTimedOut || strings.Contains(last.Error, ErrTimeout.Error())
	}
	return fe
}

// eventFor turns an Invoke payload into an event.
func eventFor(payload any) (Event, error) {
	switch p := payload.(type) {
	case nil:
		return Event{Source: SourceInvoke}, nil
	case Event:
		return p, nil
	case *Event:
		if p == nil {
			return Event{Source: SourceInvoke}, nil
		}
		return *p, nil
	case []byte:
		return Event{Source: SourceInvoke, Data: p}, nil
	case json.RawMessage:
		return Event{Source: SourceInvoke, Data: p}, nil
	}
	data, err := json.Marshal(payload)
	if err != nil {
		return Event{}, fmt.Errorf("%w: payload: %w", ErrInvalidPayload, err)
	}
	return Event{Source: SourceInvoke, Data: data}, nil
}

// unknownFunction is the ErrUnknownWorkflow of Invoke for a name that is
// not a function, listing those that are.
func (o *Orchestrator) unknownFunction(name string) error {
	names := functionsOf(o).list()
	if len(names) == 0 {
		return fmt.Errorf("%w: no function named %q: no function is registered; register it first with batuta.RegisterFunc(o, batuta.FunctionConfig{Name: %q}, handler)", ErrUnknownWorkflow, name, name)
	}
	hint := ""
	if _, err := o.workflow(name); err == nil {
		hint = fmt.Sprintf("; %q is a workflow, not a function: start it with o.Submit", name)
	}
	return fmt.Errorf("%w: no function named %q; registered functions: %s%s", ErrUnknownWorkflow, name, quoteList(names, maxListed), hint)
}

// IsFunction reports whether name was registered with RegisterFunc on o.
func (o *Orchestrator) IsFunction(name string) bool { return functionsOf(o).has(name) }

// checkFunctionInput decodes data as the handler of the function name
// would, without running it, so that a front door can refuse input of the
// wrong shape before a run exists. It returns nil for data the handler
// accepts, for handlers taking Event, []byte or json.RawMessage, and for
// names that are not functions; otherwise the decode error (from
// encoding/json, matching ErrInvalidPayload). A function with StrictInput
// checks strictly, so no data at all is refused too.
func (o *Orchestrator) checkFunctionInput(name string, data []byte) error {
	check := functionsOf(o).check(name)
	if check == nil {
		return nil
	}
	if err := check(data); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidPayload, err)
	}
	return nil
}

// inputCheckFor returns how to check event data against a handler's In
// the way decoderFor decodes it, or nil when any data is accepted.
func inputCheckFor[In any](strict bool) func(data []byte) error {
	var zero In
	switch any(zero).(type) {
	case Event, []byte, json.RawMessage:
		return nil
	}
	return func(data []byte) error {
		var v In
		return decodeJSON(data, &v, strict)
	}
}

// functionSet records which workflows of an orchestrator are functions,
// and how each checks its input.
type functionSet struct {
	mu     sync.RWMutex
	names  map[string]bool
	checks map[string]func([]byte) error
}

func (s *functionSet) add(name string, check func([]byte) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names[name] = true
	if check != nil {
		if s.checks == nil {
			s.checks = map[string]func([]byte) error{}
		}
		s.checks[name] = check
	}
}

func (s *functionSet) check(name string) func([]byte) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.checks[name]
}

// list returns the names of the functions, sorted.
func (s *functionSet) list() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	names := make([]string, 0, len(s.names))
	for n := range s.names {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (s *functionSet) has(name string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.names[name]
}

func functionsOf(o *Orchestrator) *functionSet { return &o.functions }
