// Package batutaotel reports batuta runs and task attempts to OpenTelemetry:
// a span per task attempt, short spans marking run start and finish, and
// counters and a duration histogram.
//
// # Setup
//
// Build the Hooks once and hand them to the orchestrator:
//
//	h, err := batutaotel.New(batutaotel.Config{}) // global providers
//	if err != nil { ... }
//	o, err := batuta.New(batuta.Config{Hooks: []batuta.Hooks{h}})
//
// With the zero Config the globals [otel.GetTracerProvider] and
// [otel.GetMeterProvider] are used; they are no-ops until the program
// installs an SDK, and the hooks then cost little (no attribute sets are
// built for disabled instruments, no span is kept for unsampled attempts).
//
// # Traces
//
// Each task attempt is a span named "batuta.attempt <workflow>/<task>",
// started just before the task body runs and ended after the outcome is
// stored. Its parent is whatever span the task context already carries
// (normally none: attempts run on the orchestrator's workers, so each is the
// root of its own trace), and the context the task receives carries the
// attempt span, so spans the task starts nest under it. The span's status
// is Error, with the error recorded as an exception event, when the attempt
// failed (AttemptInfo.Err != nil, except for snoozes and releases at
// shutdown, which are not failures).
//
// A run may start on one instance and finish on another, hours later, so no
// span can stay open for its life. Run start and finish are therefore two
// zero-length spans: "batuta.run.started <workflow>", a child of the span
// in the context given to Submit (so an HTTP handler's trace shows the run
// it started, with its ID), and "batuta.run.finished <workflow>", a root
// span, with status Error when the run failed. Search by batuta.run_id to
// join them with the attempt spans.
//
// Span attributes:
//
//	batuta.run_id     string  every span
//	batuta.workflow   string  every span
//	batuta.task       string  attempt spans
//	batuta.attempt    int     attempt spans, 1 for the first attempt
//	batuta.outcome    string  attempt spans: succeeded, failed, retry, snooze, canceled, release
//	batuta.timed_out  bool    attempt spans
//	batuta.event_id   string  batuta.run.started spans
//	batuta.state      string  batuta.run.finished spans: succeeded, failed, canceled
//
// # Metrics
//
//	batuta.runs.started      counter    {run}      batuta.workflow
//	batuta.runs.finished     counter    {run}      batuta.workflow, batuta.state
//	batuta.attempts          counter    {attempt}  batuta.workflow, batuta.task, batuta.outcome
//	batuta.attempt.duration  histogram  s          batuta.workflow, batuta.task, batuta.outcome
//
// Metric attributes are bounded: workflow and task names come from the
// registered workflows, outcomes and states from fixed sets. Run and event
// IDs are never put on metrics. The duration is AttemptInfo.Finished minus
// AttemptInfo.Started, read from the orchestrator's Clock, so it matches the
// attempt records in the Store and the log hooks.
//
// Hooks are safe for concurrent use and start no goroutines.
package batutaotel
