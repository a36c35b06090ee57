package batuta

import (
	"context"
	"log/slog"
	"time"
)

// Hooks observe the life of runs and attempts: logging, metrics and tracing
// plug in here (batutaotel implements it with OpenTelemetry). Methods are
// called synchronously on the orchestrator's goroutines, so they must be
// fast and must not block; they must be safe for concurrent use. Embed
// NopHooks to implement only some methods.
type Hooks interface {
	// RunStarted is called when a run is accepted (recorded in the Store).
	RunStarted(ctx context.Context, r RunInfo)
	// RunFinished is called when a run reaches a terminal state, by the
	// orchestrator whose worker finished its last task (or canceled it).
	RunFinished(ctx context.Context, r RunInfo)
	// AttemptStarted is called before a task attempt runs. The returned
	// context is the one the task receives (return ctx unchanged, or a
	// context carrying a span).
	AttemptStarted(ctx context.Context, a AttemptInfo) context.Context
	// AttemptFinished is called after an attempt, with ctx as returned by
	// AttemptStarted.
	AttemptFinished(ctx context.Context, a AttemptInfo)
}

// StoreHooks is implemented by Hooks that also observe the executor's calls
// to the Store and the rescues of lost tasks (metrics adapters do:
// batutaprom). The orchestrator looks for it in Config.Hooks once, at New;
// with no such hook the executor reads no extra clock.
type StoreHooks interface {
	// StoreCall reports one call of the executor to the Store: op says
	// which, took how long it took, n how many tasks it claimed or
	// recorded (0 on error), err its error. It is called on the executor's
	// hot path: keep it cheap and non-blocking.
	StoreCall(op StoreOp, took time.Duration, n int, err error)
	// Rescued reports a pass of the rescuer that returned tasks whose lease
	// expired to the ready set (rescued) or failed them after too many
	// rescues (failed), and the rescues a RescueReporter store made on its
	// own. Passes with nothing to do are not reported.
	Rescued(rescued, failed int)
}

// A RescueReporter is a Store that rescues tasks on its own, outside
// RescueExpired (batutapg's liveness loop rescues the tasks of an instance
// whose liveness row went stale). New gives it a function reporting those
// rescues to the orchestrator's StoreHooks (Rescued), as the executor's
// rescuer reports the ones RescueExpired returns; the store must not count
// a rescue in both. It is called only when some Config.Hooks is a
// StoreHooks. The function is safe for concurrent use and cheap.
type RescueReporter interface {
	ReportRescues(report func(rescued, failed int))
}

// StoreOp names an executor call to the Store, for StoreHooks.
type StoreOp string

// The store calls StoreHooks observe.
const (
	// StoreOpClaim: ClaimTasks (one claim round, which may make a call per
	// workflow with a per-process cap).
	StoreOpClaim StoreOp = "claim"
	// StoreOpComplete: CompleteTasks (a batch of completions; with the
	// in-memory store, a completion and the claim made with it).
	StoreOpComplete StoreOp = "complete"
	// StoreOpRescue: RescueExpired.
	StoreOpRescue StoreOp = "rescue"
)

// observeStore reports a store call to every StoreHooks.
func observeStore(hs []StoreHooks, op StoreOp, start time.Time, n int, err error) {
	took := time.Since(start)
	if err != nil {
		n = 0
	}
	for _, h := range hs {
		h.StoreCall(op, took, n, err)
	}
}

// RunInfo describes a run to Hooks.
type RunInfo struct {
	RunID    string
	Workflow string
	EventID  string
	// State is RunPending in RunStarted and the final state in RunFinished.
	State RunState
	Time  time.Time
}

// AttemptInfo describes a task attempt to Hooks.
type AttemptInfo struct {
	RunID    string
	Workflow string
	Task     string
	Attempt  int
	// Outcome and Err are set in AttemptFinished.
	Outcome  Outcome
	TimedOut bool
	Err      error
	Started  time.Time
	Finished time.Time
}

// NopHooks implements Hooks doing nothing; embed it to override some methods.
type NopHooks struct{}

// RunStarted does nothing.
func (NopHooks) RunStarted(context.Context, RunInfo) {}

// RunFinished does nothing.
func (NopHooks) RunFinished(context.Context, RunInfo) {}

// AttemptStarted returns ctx.
func (NopHooks) AttemptStarted(ctx context.Context, _ AttemptInfo) context.Context { return ctx }

// AttemptFinished does nothing.
func (NopHooks) AttemptFinished(context.Context, AttemptInfo) {}

// logHooks logs through slog: run outcomes at Info (failures at Warn),
// attempts at Debug (failed attempts at Warn).
type logHooks struct{ log *slog.Logger }

// LogHooks returns Hooks that log through l: runs finishing at Info
// (failed or canceled at Warn), failed attempts at Warn, other attempts at
// Debug. The orchestrator installs it on Config.Logger unless
// Config.NoLogHooks is set.
func LogHooks(l *slog.Logger) Hooks { return logHooks{l} }

func (h logHooks) RunStarted(ctx context.Context, r RunInfo) {
	if h.log.Enabled(ctx, slog.LevelDebug) {
		h.log.LogAttrs(ctx, slog.LevelDebug, "batuta: run accepted",
			slog.String("run", r.RunID), slog.String("workflow", r.Workflow), slog.String("event", r.EventID))
	}
}

func (h logHooks) RunFinished(ctx context.Context, r RunInfo) {
	lvl := slog.LevelInfo
	if r.State != RunSucceeded {
		lvl = slog.LevelWarn
	}
	if h.log.Enabled(ctx, lvl) {
		h.log.LogAttrs(ctx, lvl, "batuta: run finished",
			slog.String("run", r.RunID), slog.String("workflow", r.Workflow), slog.String("state", string(r.State)))
	}
}

func (h logHooks) AttemptStarted(ctx context.Context, _ AttemptInfo) context.Context { return ctx }

func (h logHooks) AttemptFinished(ctx context.Context, a AttemptInfo) {
	lvl := slog.LevelDebug
	if a.Err != nil && a.Outcome != OutcomeSnooze && a.Outcome != OutcomeRelease {
		lvl = slog.LevelWarn
	}
	if !h.log.Enabled(ctx, lvl) {
		return
	}
	attrs := []slog.Attr{
		slog.String("run", a.RunID), slog.String("workflow", a.Workflow), slog.String("task", a.Task),
		slog.Int("attempt", a.Attempt), slog.String("outcome", string(a.Outcome)),
		slog.Duration("took", a.Finished.Sub(a.Started)),
	}
	if a.TimedOut {
		attrs = append(attrs, slog.Bool("timed_out", true))
	}
	if a.Err != nil {
		attrs = append(attrs, slog.String("error", a.Err.Error()))
	}
	h.log.LogAttrs(ctx, lvl, "batuta: attempt finished", attrs...)
}
