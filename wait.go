package batuta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// This file holds durable waits: timers (Task.StartAt, Task.Delay) and
// signals (Task.Signal, Orchestrator.Signal, SignalWhere, BindSignal). A
// waiting task is handed back to the store with OutcomeWait: it holds no
// worker, goroutine or connection, and the store makes it due again when
// its time comes (the executor sleeps until Store.NextDue) or a signal
// wakes it. docs/waits.md has the user's guide.

// SignalWait makes a task wait for a signal (Task.Signal).
type SignalWait struct {
	// Name is the signal's name (same alphabet as task names).
	Name string
	// Timeout bounds the wait, from when the task starts waiting (0: no
	// limit). What happens then is OnTimeout.
	Timeout time.Duration
	// OnTimeout says how the task ends when Timeout passes.
	OnTimeout TimeoutAction
	// Default is the task's output when it times out with TimeoutSucceed.
	// It must be JSON-encodable (durable stores keep it as JSON).
	Default any
}

// TimeoutAction says how a wait that timed out ends.
type TimeoutAction uint8

// The timeout actions.
const (
	// TimeoutFail (the default): the task fails with ErrTimeout.
	TimeoutFail TimeoutAction = iota
	// TimeoutSucceed: the task succeeds with SignalWait.Default.
	TimeoutSucceed
)

// WaitForTimer is the TaskRun.WaitingFor of a task waiting on its timer
// (Task.StartAt, Task.Delay).
const WaitForTimer = "timer"

// WaitForSignal returns the TaskRun.WaitingFor of a task waiting for the
// named signal: "signal <name>".
func WaitForSignal(name string) string { return "signal " + name }

// MetadataSignalRunID is the event metadata key that names the run a
// signal trigger's event signals (BindSignal); without it, the event's
// Subject selects the runs.
const MetadataSignalRunID = "batuta-signal-run-id"

// compiledWait is the wait part of a compiled task.
type compiledWait struct {
	startAt func(in *Input) (time.Time, error)
	delay   time.Duration
	// signal, if not nil, is a copy of Task.Signal; defJSON its Default
	// encoded (the output of a TimeoutSucceed with a durable store).
	signal  *SignalWait
	defJSON json.RawMessage
}

// waitsOnly reports whether t is a task whose Run may be nil: a pure
// timer (StartAt or Delay) or a signal wait.
func waitsOnly(t *Task) bool {
	return t.StartAt != nil || t.Delay != 0 || t.Signal != nil
}

// signalName is the TaskSpec.Signal of t.
func signalName(t *Task) string {
	if t.Signal == nil {
		return ""
	}
	return t.Signal.Name
}

// compileWait validates t's wait fields and returns their compiled form
// (nil if t does not wait), or the reason t is invalid.
func compileWait(t *Task) (*compiledWait, string) {
	if t.Delay < 0 {
		return nil, fmt.Sprintf("Task.Delay must not be negative (got %s); use e.g. Delay: time.Hour, or 0 for no delay", t.Delay)
	}
	if t.StartAt == nil && t.Delay == 0 && t.Signal == nil {
		return nil, ""
	}
	if t.Signal == nil && (t.Child != nil || t.ForEach != nil) {
		return nil, "Task.StartAt and Task.Delay cannot be combined with Task.Child or Task.ForEach; put the timer in a task this one depends on (a Delay with no Run is a sleep step)"
	}
	w := &compiledWait{startAt: t.StartAt, delay: t.Delay}
	if s := t.Signal; s != nil {
		switch {
		case t.Run != nil:
			return nil, "Task.Signal: a signal task's output is the signal's data, so Task.Run must be nil; put the work in a task that depends on this one"
		case t.StartAt != nil || t.Delay != 0:
			return nil, "Task.Signal cannot be combined with Task.StartAt or Task.Delay; put the timer in a task this one depends on"
		case t.Child != nil || t.ForEach != nil:
			return nil, "Task.Signal cannot be combined with Task.Child or Task.ForEach; give each its own task"
		case s.Name == "":
			return nil, `Task.Signal.Name is empty; set it to ` + nameRule + `, e.g. Name: "shipped"`
		case !validName(s.Name):
			return nil, `Task.Signal.Name: name must be ` + nameRule + `, e.g. Name: "shipped"`
		case s.Timeout < 0:
			return nil, fmt.Sprintf("Task.Signal.Timeout must not be negative (got %s); use e.g. Timeout: 72*time.Hour, or 0 for no limit", s.Timeout)
		case s.OnTimeout != TimeoutFail && s.OnTimeout != TimeoutSucceed:
			return nil, fmt.Sprintf("Task.Signal.OnTimeout: unknown action %d; use batuta.TimeoutFail (the default) or batuta.TimeoutSucceed", s.OnTimeout)
		case s.OnTimeout == TimeoutSucceed && s.Timeout == 0:
			return nil, "Task.Signal.OnTimeout is TimeoutSucceed but Timeout is 0 (no limit), so it never applies; set Timeout, e.g. Timeout: 72*time.Hour"
		case s.Default != nil && s.OnTimeout != TimeoutSucceed:
			return nil, "Task.Signal.Default is set but OnTimeout is not TimeoutSucceed, so it is never used; set OnTimeout: batuta.TimeoutSucceed, or drop Default"
		}
		b, err := json.Marshal(s.Default)
		if err != nil {
			return nil, fmt.Sprintf("Task.Signal.Default is not JSON-encodable: %v", err)
		}
		sc := *s
		w.signal, w.defJSON = &sc, b
	}
	return w, ""
}

// waited handles a claimed task that waits (ct.wait is set). It fills
// comp and reports true when the claim ends here: the task is handed back
// to wait (OutcomeWait), or finished without running a body (a pure timer
// whose time came, a signal received or timed out, a StartAt that
// failed). It reports false when the task's body must run now.
func (ex *executor) waited(sl *slot, c *Claim, ct *compiledTask, comp *Completion, now time.Time) bool {
	w := ct.wait
	if w.signal != nil {
		ex.signalWaited(c, ct, comp, now)
		return true
	}
	var due time.Time
	if w.startAt != nil {
		sl.in = Input{claim: c, task: ct, ctx: ex.bgCtx, store: ex.store}
		t, err := callStartAt(w.startAt, &sl.in)
		sl.in = Input{}
		if err != nil {
			comp.StartedAt, comp.FinishedAt = now, now
			comp.Error = fmt.Sprintf("batuta: Task.StartAt of task %s: %v", c.Task, err)
			var pe *PanicError
			if IsPermanent(err) || errors.As(err, &pe) || c.Attempt >= ct.retry.MaxAttempts {
				comp.Outcome = OutcomeFailed
			} else {
				comp.Outcome, comp.RetryAt = OutcomeRetry, now.Add(ct.retry.Backoff(c.Attempt))
				ex.addDue(comp.RetryAt)
				ex.poke()
			}
			return true
		}
		due = t
	}
	if w.delay > 0 {
		since := c.WaitingSince
		if since.IsZero() {
			since = now // the first claim: this completion sets WaitingSince to now
		}
		if d := since.Add(w.delay); d.After(due) {
			due = d
		}
	}
	if due.After(now) {
		comp.Outcome, comp.RetryAt, comp.WaitFor = OutcomeWait, due, WaitForTimer
		ex.waitUntil(c, comp)
		return true
	}
	if ct.fn != nil {
		return false
	}
	// A pure timer step whose time came: it succeeds with no output.
	comp.Outcome, comp.StartedAt, comp.FinishedAt = OutcomeSucceeded, now, now
	if ex.durable {
		comp.Output = json.RawMessage("null")
	}
	return true
}

// signalWaited fills comp for a claimed signal task: it succeeds with the
// signal the claim carries, times out, or waits (again).
func (ex *executor) signalWaited(c *Claim, ct *compiledTask, comp *Completion, now time.Time) {
	s := ct.wait.signal
	if sig := c.Signal; sig != nil {
		comp.Outcome, comp.StartedAt, comp.FinishedAt = OutcomeSucceeded, now, now
		comp.Output, comp.ConsumeSignal = sig.Data, sig.Seq
		if ex.durable && comp.Output == nil {
			comp.Output = json.RawMessage("null")
		}
		return
	}
	since := c.WaitingSince
	if !since.IsZero() && s.Timeout > 0 && !now.Before(since.Add(s.Timeout)) {
		comp.StartedAt, comp.FinishedAt = now, now
		if s.OnTimeout == TimeoutSucceed {
			comp.Outcome, comp.Output = OutcomeSucceeded, s.Default
			if ex.durable {
				comp.Output = ct.wait.defJSON
			}
			return
		}
		comp.Outcome, comp.TimedOut = OutcomeFailed, true
		comp.Error = fmt.Sprintf("%v: task %s waited %v for signal %q, which did not come", ErrTimeout, c.Task, s.Timeout, s.Name)
		return
	}
	comp.Outcome, comp.WaitFor = OutcomeWait, WaitForSignal(s.Name)
	if s.Timeout > 0 {
		if since.IsZero() {
			since = now
		}
		comp.RetryAt = since.Add(s.Timeout)
	}
	ex.waitUntil(c, comp)
}

// waitUntil bounds a wait's due time (comp.RetryAt, zero: none) by the
// run's deadline, so a run whose Workflow.Timeout passes while it waits
// is claimed then and fails, and makes the dispatcher wake at it.
func (ex *executor) waitUntil(c *Claim, comp *Completion) {
	if d := c.RunDeadline; !d.IsZero() && (comp.RetryAt.IsZero() || d.Before(comp.RetryAt)) {
		comp.RetryAt = d
	}
	if !comp.RetryAt.IsZero() {
		ex.addDue(comp.RetryAt)
		ex.poke() // the dispatcher's timer may be set for later
	}
}

func callStartAt(fn func(*Input) (time.Time, error), in *Input) (t time.Time, err error) {
	defer func() {
		if p := recover(); p != nil {
			t, err = time.Time{}, newPanicError(p)
		}
	}()
	return fn(in)
}

// Signal sends a signal to a run: a task of it waiting for name (Task.Signal)
// completes with data as its output, or, if the run has not reached that
// task yet (or is timing it out right now), the signal is kept for it
// (bounded, 100 unconsumed signals per run) and consumed when it gets
// there. data must be JSON-encodable and, encoded, within the
// orchestrator's MaxPayloadBytes: with the in-memory store the task's
// output is data itself, with a durable store its JSON. A signal is not
// deduplicated: sending it twice keeps the second one for a later wait of
// the same name, if the run has one.
//
// Errors: ErrRunNotFound; ErrNoWaiter (the run finished, or has no
// unfinished task waiting for name); ErrSignalBufferFull;
// *PayloadTooLargeError (ErrPayloadTooLarge); ErrInvalidPayload (a name
// outside the task-name alphabet, data that is not JSON-encodable); or the
// Store's error.
func (o *Orchestrator) Signal(ctx context.Context, runID, name string, data any) error {
	_, err := o.signal(ctx, runID, name, data)
	return err
}

// signal is Signal returning the store's answer.
func (o *Orchestrator) signal(ctx context.Context, runID, name string, data any) (SignalResult, error) {
	v, err := o.signalData(name, data)
	if err != nil {
		return SignalResult{}, fmt.Errorf("batuta: signal %s to run %s: %w", quote(name), runID, err)
	}
	return o.sendSignal(ctx, runID, name, v)
}

// signalData checks a signal's name and data and returns the data as the
// store takes it.
func (o *Orchestrator) signalData(name string, data any) (any, error) {
	if !validName(name) {
		return nil, fmt.Errorf("%w: signal name must be %s", ErrInvalidPayload, nameRule)
	}
	b, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("%w: signal data is not JSON-encodable: %w", ErrInvalidPayload, err)
	}
	if len(b) > o.cfg.MaxPayloadBytes {
		return nil, &PayloadTooLargeError{What: "data of signal " + name, Size: len(b), Limit: o.cfg.MaxPayloadBytes}
	}
	if o.store.Durable() {
		return json.RawMessage(b), nil
	}
	return data, nil
}

// sendSignal hands a checked signal to the store and acts on the answer.
func (o *Orchestrator) sendSignal(ctx context.Context, runID, name string, data any) (SignalResult, error) {
	now := o.clock.Now()
	sig := SignalSend{RunID: runID, Name: name, Data: data, SentAt: now}
	ex := o.ex.Load()
	reserved := 0
	if ex != nil && ex.creator != nil {
		// A durable store that claims with its writes: a free worker of
		// this process takes the task the delivery makes ready, claimed in
		// the delivery's transaction.
		sig.Claim, reserved = ex.reservedClaim(1, now)
	}
	res, err := o.store.SendSignal(ctx, sig)
	if reserved > 0 {
		n := 0
		if err == nil {
			n = ex.handOffAll(res.Claims, reserved)
		}
		ex.releaseWorkers(reserved - n)
	}
	if err != nil {
		return res, fmt.Errorf("batuta: signal %s to run %s: %w", quote(name), runID, err)
	}
	if ex != nil && (len(res.Claims) == 0 || res.Ready > len(res.Claims)) {
		// Delivered: its dependents may be ready. Buffered: the waiting
		// task may have been made due at once, to pick the signal up.
		ex.poke()
	}
	res.Claims = nil
	if res.RunFinished != "" {
		if r, err := o.store.GetRun(ctx, runID); err == nil {
			o.runFinished(ctx, runID, r.Workflow, res.RunFinished)
		}
	}
	return res, nil
}

// SignalWhere signals (as Signal) every unfinished run of workflow whose
// event Subject is subject, for webhooks that know only a business key. It
// returns how many runs took the signal; ErrNoWaiter if none did (no such
// run, or none waits for name). A run that finishes meanwhile, or whose
// buffer is full, is passed over; ErrSignalBufferFull is returned only if
// every run that matched was full. A Store error stops it, with the count
// so far. The runs are found by the store's index on the event subject.
func (o *Orchestrator) SignalWhere(ctx context.Context, workflow, subject, name string, data any) (int, error) {
	if subject == "" {
		return 0, fmt.Errorf("batuta: signal %s to %s runs: %w: empty subject; pass the business key the runs' events carry in Event.Subject",
			quote(name), workflow, ErrInvalidPayload)
	}
	return o.signalRuns(ctx, "SignalWhere", workflow, "with subject "+quote(subject), subject, nil, name, data)
}

// SignalMatching is SignalWhere with a key function: it signals every
// unfinished run of workflow whose event match accepts (e.g. an order ID
// inside the event's data). It reads every unfinished run of the workflow,
// a page at a time, so prefer SignalWhere (an index lookup) when the key
// can be the event's Subject.
func (o *Orchestrator) SignalMatching(ctx context.Context, workflow string, match func(Event) bool, name string, data any) (int, error) {
	if match == nil {
		return 0, fmt.Errorf("batuta: signal %s to %s runs: %w: nil match func", quote(name), workflow, ErrInvalidPayload)
	}
	return o.signalRuns(ctx, "SignalMatching", workflow, "matching", "", match, name, data)
}

// signalPage is how many runs SignalWhere and SignalMatching list at a
// time.
const signalPage = 500

// signalRuns signals the unfinished runs of workflow with the subject (if
// not empty) that match accepts (if not nil).
func (o *Orchestrator) signalRuns(ctx context.Context, call, workflow, what, subject string, match func(Event) bool, name string, data any) (int, error) {
	fail := func(err error) error {
		return fmt.Errorf("batuta: signal %s to %s runs %s: %w", quote(name), workflow, what, err)
	}
	if !o.registered(workflow) {
		return 0, o.unknownWorkflow(workflow, call)
	}
	v, err := o.signalData(name, data)
	if err != nil {
		return 0, fail(err)
	}
	n, full := 0, false
	f := RunFilter{Workflow: workflow, Subject: subject, States: []RunState{RunPending, RunRunning}, Ascending: true, Limit: signalPage}
	for {
		runs, err := o.store.ListRuns(ctx, f)
		if err != nil {
			return n, fail(err)
		}
		for _, r := range runs {
			if match != nil {
				ok, err := callMatch(match, r.Event)
				if err != nil {
					return n, fail(fmt.Errorf("match func: %w", err))
				}
				if !ok {
					continue
				}
			}
			_, err := o.sendSignal(ctx, r.ID, name, v)
			switch {
			case err == nil:
				n++
			case errors.Is(err, ErrNoWaiter) || errors.Is(err, ErrRunNotFound):
			case errors.Is(err, ErrSignalBufferFull):
				full = true
			default:
				return n, err
			}
		}
		if len(runs) < f.Limit {
			break
		}
		f.After = runs[len(runs)-1].ID
	}
	switch {
	case n > 0:
		return n, nil
	case full:
		return 0, fail(ErrSignalBufferFull)
	}
	return 0, fail(ErrNoWaiter)
}

func callMatch(match func(Event) bool, ev Event) (ok bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			ok, err = false, newPanicError(p)
		}
	}()
	return match(ev), nil
}

// BindSignal makes t signal runs of workflow instead of starting them:
// each event t fires sends the signal name, with the event's Data as its
// data (a json.RawMessage; nil when empty), to the run named by the
// event's metadata MetadataSignalRunID if set (as Signal), else to the
// unfinished runs of workflow whose event Subject is the event's Subject
// (as SignalWhere). A queue message or a database row thus completes a
// waiting task, e.g. a "shipped" webhook put on a queue.
//
// The event counts as delivered (the trigger acks the message, deletes the
// row) once a run took the signal, delivered or kept for a task that will
// wait for it. A signal no run waits for (ErrNoWaiter, ErrRunNotFound),
// an event with neither a run ID nor a Subject, and data that is not JSON
// or too large are refused with a Permanent error: the queue trigger
// dead-letters the message at once. ErrSignalBufferFull and Store errors
// are retried the trigger's usual way. The trigger runs through its plain
// Run (never RunTracking: it starts no run to follow), so a QueueTrigger
// with AckOnFinish or batch mode is refused here.
func (o *Orchestrator) BindSignal(workflow, name string, t Trigger) error {
	switch {
	case t == nil:
		return fmt.Errorf(`batuta: BindSignal(%q, %q, nil): the trigger is nil; pass one, e.g. a trigger made by batuta.NewQueueTrigger`, workflow, name)
	case !validName(name):
		return fmt.Errorf("batuta: BindSignal(%q, %s): %w: signal name must be %s", workflow, quote(name), ErrInvalidConfig, nameRule)
	}
	if qt, ok := t.(*QueueTrigger); ok {
		if qt.cfg.Ack == AckOnFinish || qt.cfg.Batch.Size > 1 {
			return fmt.Errorf("batuta: BindSignal(%q, %q): %w: a queue trigger that signals acks when the signal is accepted: AckOnFinish and batch mode do not apply; use AckAuto or AckOnAccept without Batch", workflow, name, ErrInvalidConfig)
		}
	}
	return o.Bind(workflow, &signalTrigger{o: o, workflow: workflow, name: name, t: t})
}

// signalTrigger runs a trigger whose events signal runs (BindSignal). It
// implements Trigger only, so the orchestrator calls its Run with a
// FireFunc, which it replaces with its own.
type signalTrigger struct {
	o        *Orchestrator
	workflow string
	name     string
	t        Trigger
}

func (s *signalTrigger) Run(ctx context.Context, _ FireFunc) error {
	return s.t.Run(ctx, s.fire)
}

// fire signals the runs ev selects; see BindSignal.
func (s *signalTrigger) fire(ctx context.Context, ev Event) error {
	var data any
	if len(ev.Data) > 0 {
		if !json.Valid(ev.Data) {
			return Permanent(fmt.Errorf("batuta: signal %s from event %s: %w: event data is not JSON", quote(s.name), quote(ev.ID), ErrInvalidPayload))
		}
		data = json.RawMessage(ev.Data)
	}
	var err error
	switch id := ev.Metadata[MetadataSignalRunID]; {
	case id != "":
		err = s.o.Signal(ctx, id, s.name, data)
	case ev.Subject != "":
		_, err = s.o.SignalWhere(ctx, s.workflow, ev.Subject, s.name, data)
	default:
		err = fmt.Errorf("batuta: signal %s from event %s: %w: the event has neither metadata %s nor a Subject to select runs by",
			quote(s.name), quote(ev.ID), ErrInvalidPayload, MetadataSignalRunID)
	}
	if err != nil && (errors.Is(err, ErrNoWaiter) || errors.Is(err, ErrRunNotFound) ||
		errors.Is(err, ErrInvalidPayload) || errors.Is(err, ErrPayloadTooLarge)) {
		return Permanent(err)
	}
	return err
}
