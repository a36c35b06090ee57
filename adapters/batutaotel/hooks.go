package batutaotel

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/batuta-dev/batuta"
)

// ScopeName is the instrumentation scope of the tracer and the meter.
const ScopeName = "github.com/batuta-dev/batuta/adapters/batutaotel"

// Attribute keys on spans and metrics; see the package documentation for
// where each appears.
const (
	KeyRunID    = attribute.Key("batuta.run_id")
	KeyWorkflow = attribute.Key("batuta.workflow")
	KeyTask     = attribute.Key("batuta.task")
	KeyAttempt  = attribute.Key("batuta.attempt")
	KeyOutcome  = attribute.Key("batuta.outcome")
	KeyTimedOut = attribute.Key("batuta.timed_out")
	KeyEventID  = attribute.Key("batuta.event_id")
	KeyState    = attribute.Key("batuta.state")
)

// Hooks implements [batuta.Hooks] with OpenTelemetry traces and metrics.
// Install it through batuta.Config.Hooks. Its methods are safe for
// concurrent use, never block and start no goroutines. Build it with
// [New]; the zero Hooks is not usable.
type Hooks struct {
	tracer       trace.Tracer
	runsStarted  metric.Int64Counter
	runsFinished metric.Int64Counter
	attempts     metric.Int64Counter
	duration     metric.Float64Histogram
}

var _ batuta.Hooks = (*Hooks)(nil)

// New returns Hooks reporting to cfg's providers. It returns a
// *batuta.ConfigError (errors.Is batuta.ErrInvalidConfig) naming a bad
// field, or the meter's error if an instrument cannot be created.
func New(cfg Config) (*Hooks, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	meter := cfg.MeterProvider.Meter(ScopeName)
	h := &Hooks{tracer: cfg.TracerProvider.Tracer(ScopeName)}
	var err error
	if h.runsStarted, err = meter.Int64Counter("batuta.runs.started",
		metric.WithUnit("{run}"), metric.WithDescription("Runs accepted.")); err != nil {
		return nil, fmt.Errorf("batutaotel: %w", err)
	}
	if h.runsFinished, err = meter.Int64Counter("batuta.runs.finished",
		metric.WithUnit("{run}"), metric.WithDescription("Runs that reached a terminal state, by state.")); err != nil {
		return nil, fmt.Errorf("batutaotel: %w", err)
	}
	if h.attempts, err = meter.Int64Counter("batuta.attempts",
		metric.WithUnit("{attempt}"), metric.WithDescription("Task attempts run, by outcome.")); err != nil {
		return nil, fmt.Errorf("batutaotel: %w", err)
	}
	if h.duration, err = meter.Float64Histogram("batuta.attempt.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of task attempts."),
		metric.WithExplicitBucketBoundaries(cfg.DurationBuckets...)); err != nil {
		return nil, fmt.Errorf("batutaotel: %w", err)
	}
	return h, nil
}

// RunStarted counts the run in batuta.runs.started and records a
// zero-length "batuta.run.started <workflow>" span, a child of the span in
// ctx (the context given to Submit), if any.
func (h *Hooks) RunStarted(ctx context.Context, r batuta.RunInfo) {
	if h.runsStarted.Enabled(ctx) {
		h.runsStarted.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(KeyWorkflow.String(r.Workflow))))
	}
	_, span := h.tracer.Start(ctx, "batuta.run.started "+r.Workflow, trace.WithAttributes(
		KeyRunID.String(r.RunID), KeyWorkflow.String(r.Workflow), KeyEventID.String(r.EventID)))
	span.End()
}

// RunFinished counts the run in batuta.runs.finished and records a
// zero-length "batuta.run.finished <workflow>" span, with status Error when
// the run failed.
func (h *Hooks) RunFinished(ctx context.Context, r batuta.RunInfo) {
	if h.runsFinished.Enabled(ctx) {
		h.runsFinished.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(
			KeyWorkflow.String(r.Workflow), KeyState.String(string(r.State)))))
	}
	_, span := h.tracer.Start(ctx, "batuta.run.finished "+r.Workflow, trace.WithAttributes(
		KeyRunID.String(r.RunID), KeyWorkflow.String(r.Workflow), KeyState.String(string(r.State))))
	if r.State == batuta.RunFailed {
		span.SetStatus(codes.Error, "run failed")
	}
	span.End()
}

// spanKey finds this Hooks' attempt span in the context AttemptFinished
// gets, even when hooks installed after this one put spans of their own
// in it.
type spanKey struct{ h *Hooks }

// AttemptStarted starts the "batuta.attempt <workflow>/<task>" span as a
// child of the span in ctx, if any, and returns ctx carrying it.
func (h *Hooks) AttemptStarted(ctx context.Context, a batuta.AttemptInfo) context.Context {
	ctx, span := h.tracer.Start(ctx, "batuta.attempt "+a.Workflow+"/"+a.Task, trace.WithAttributes(
		KeyRunID.String(a.RunID), KeyWorkflow.String(a.Workflow), KeyTask.String(a.Task), KeyAttempt.Int(a.Attempt)))
	if !span.IsRecording() {
		return ctx // nothing to end: skip the extra context value
	}
	return context.WithValue(ctx, spanKey{h}, span)
}

// AttemptFinished ends the attempt span, with status Error if the attempt
// failed, and records the attempt in batuta.attempts and
// batuta.attempt.duration.
func (h *Hooks) AttemptFinished(ctx context.Context, a batuta.AttemptInfo) {
	if span, ok := ctx.Value(spanKey{h}).(trace.Span); ok {
		span.SetAttributes(KeyOutcome.String(string(a.Outcome)), KeyTimedOut.Bool(a.TimedOut))
		if failed(a) {
			span.RecordError(a.Err)
			span.SetStatus(codes.Error, a.Err.Error())
		}
		span.End()
	}
	countOn, durOn := h.attempts.Enabled(ctx), h.duration.Enabled(ctx)
	if !countOn && !durOn {
		return
	}
	attrs := metric.WithAttributeSet(attribute.NewSet(
		KeyWorkflow.String(a.Workflow), KeyTask.String(a.Task), KeyOutcome.String(string(a.Outcome))))
	if countOn {
		h.attempts.Add(ctx, 1, attrs)
	}
	if durOn {
		h.duration.Record(ctx, a.Finished.Sub(a.Started).Seconds(), attrs)
	}
}

// failed reports whether the attempt failed: an error other than a snooze
// or a release at shutdown, which are not failures.
func failed(a batuta.AttemptInfo) bool {
	return a.Err != nil && a.Outcome != batuta.OutcomeSnooze && a.Outcome != batuta.OutcomeRelease
}
