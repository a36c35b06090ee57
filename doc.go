/*
Package batuta is an embeddable task-orchestration library for Go: declare
workflows (DAGs of tasks with dependencies, retries, timeouts and data passed
between tasks) and bind them to the four ways back-end work starts: database
row changes, queue messages, cron schedules and direct calls (functions and
HTTP). It needs no infrastructure by default (runs live in memory, or in a
SQLite file) and runs on PostgreSQL when you scale out.

This page is a tour, one heading per capability; each runnable example under
the identifiers it names shows the behaviour with its output checked by go
test. The repository's README and docs/ directory (docs/concepts.md first)
hold the reference pages.

# A first workflow

Five concepts are enough to start: an [Orchestrator] runs workflows
([Workflow]), a workflow is a DAG of tasks ([Task]), each run starts from one
[Event], and a [Trigger] delivers events (or you submit them yourself):

	o, err := batuta.New(batuta.Config{}) // in-memory store, slog.Default(), workers sized to the machine
	err = o.Register(&batuta.Workflow{
		Name: "order-placed",
		Tasks: []batuta.Task{
			{Name: "validate", Run: validate},
			{Name: "charge", Deps: []string{"validate"}, Run: charge},
			{Name: "email", Deps: []string{"charge"}, Run: sendReceipt},
		},
	})
	go o.Run(ctx) // blocks until ctx ends, then shuts down gracefully
	id, err := o.Submit(ctx, "order-placed", batuta.Event{ID: "order-42", Data: orderJSON})
	run, err := o.Wait(ctx, id) // run.State, run.Task("email").State, .Output, .Attempts

A task is a [TaskFunc]: func(ctx, *[Input]) (output, error). [New] takes a
[Config] whose zero value works. [Orchestrator.Register] validates the whole
workflow (cycles, unknown or duplicate names, nil funcs, negative durations)
and registers nothing if any of it is wrong; the [*WorkflowError] names the
field and says what to put there (see [Orchestrator.Register]'s example).
[Event.ID] is the idempotency key: submitting the same ID twice for one
workflow returns the first run.

A run whose task failed is a failed run: it stays in the [Store], where
[Orchestrator.GetRun] and [Orchestrator.ListRuns] show it, and the log hooks
log it at Warn. To act on a failure, add a task with When: [OneFailed] after
the task that may fail (see [JoinRule]'s example). A workflow-wide failure
destination of its own (as [FunctionConfig.DeadLetter] is for functions) is
not there yet.

# Data between tasks

A task reads the triggering event's JSON with [EventData] and the output of
any of its ancestors (a dependency, a dependency's dependency, ...) with
[Output], both typed:

	order, err := batuta.EventData[Order](in)
	receipt, err := batuta.Output[Receipt](in, "charge")

A name that is not an ancestor is [ErrNotAncestor], whose message lists the
tasks that can be read; an ancestor that did not succeed has no output,
[ErrNoOutput]. EventData is lenient, as encoding/json is: unknown fields are
ignored and null gives the zero value, so producers may add fields. Opt into
strict decoding with [Workflow.StrictInput] or [EventDataStrict]; a payload
that does not decode is [ErrInvalidPayload], a permanent failure. With the
in-memory store outputs are passed as Go values; durable stores keep them as
JSON, so outputs must be JSON-encodable ([OutputAs] reads either form).
[Input.IdempotencyKey] is stable across the retries of a task: pass it to the
APIs the task calls.

# Retries and timeouts

Each task has a [RetryPolicy]: 3 attempts by default, exponential backoff
with full jitter from 1 s, doubling, capped at 5 min. The task steers it with
what it returns: [Permanent] fails it at once, [Snooze] runs it again later
without spending an attempt; a panic is a failed attempt ([*PanicError]).

	{Name: "charge", Deps: []string{"validate"},
		Retry:   batuta.RetryPolicy{MaxAttempts: 5, InitialDelay: time.Second},
		Timeout: 10 * time.Second, // each attempt
		Run:     charge}

[Task.Timeout] bounds each attempt (the attempt is recorded as timed_out and
retried; a body that ignores its ctx is abandoned and named in the log);
[Workflow.Timeout] bounds the whole run: when it passes, running tasks fail
without retry and tasks not yet started fail with [ErrTimeout].

# Join rules

When a task's dependencies have finished, its [JoinRule] (Task.When) decides
whether it runs, is skipped, or is marked upstream_failed, as Airflow's
trigger rules do: [AllSucceeded] (the default), [AllDone], [OneSucceeded],
[OneFailed], [AllFailed], [NoneFailed]. A failure two levels up still counts
as a failure. [Task.FireEarly] starts a OneSucceeded or OneFailed task at the
first dependency that reaches its outcome (hedged requests, early alerts).

	{Name: "refund-alert", Deps: []string{"charge"}, When: batuta.OneFailed, Run: pageOnCall}

# Triggers

A [Trigger] is a source of events: its Run(ctx, fire) calls fire once per
event, and an event counts as delivered only when fire returned nil (an error
means: keep it at the source, deliver it again). [Orchestrator.Bind] ties a
trigger to a workflow; [Orchestrator.Run] runs the bound triggers. Any
function can be one ([TriggerFunc]). What each source puts in the [Event], and
its typed reader, is in the repository's docs/events.md; each reader refuses
another source's event with [ErrWrongSource], so one workflow fed by several
sources can tell them apart.

# Database row changes

The adapter modules [github.com/batuta-dev/batuta/adapters/batutapg],
[github.com/batuta-dev/batuta/adapters/batutamysql] and
[github.com/batuta-dev/batuta/adapters/batutasqlite] install a trigger on
your table that copies each changed row into an outbox table in the same
transaction, and consume the outbox: a committed row starts a run, a rolled
back one never does. An outbox row is deleted once its run is accepted by a
durable store, or finished with the in-memory one.

	err = batutapg.InstallCapture(ctx, pool, batutapg.Capture{Table: "orders", Ops: []batutapg.Op{batutapg.OpInsert}})
	trig, err := batutapg.NewTrigger(batutapg.TriggerConfig{Pool: pool})
	err = o.Bind("order-placed", trig)

	// in a task:
	change, err := batutapg.DecodeChange[Order](in.Event()) // change.New, change.Old: *Order

[ChangeFrom] reads the same shape without checking the database.

# Queue messages

A [Queue] is the broker contract (Publish, Receive, Ack, Nack, Close); the
core has [NewMemoryQueue], and the adapter modules
[github.com/batuta-dev/batuta/adapters/batutaredis],
[github.com/batuta-dev/batuta/adapters/batutanats] and
[github.com/batuta-dev/batuta/adapters/batutaamqp] adapt real brokers.
[NewQueueTrigger] turns each message into a run and acks it once the run is
accepted (with the in-memory store, once it finished: [AckMode]); a message that failed [QueueTriggerConfig.MaxDeliveries]
deliveries, is older than MaxAge or cannot become a run goes to the required
[QueueTriggerConfig.DeadLetter], so nothing is dropped. Tasks read the message with
[QueueMessageFrom]; [BatchConfig] groups messages as AWS Lambda's event-source
mappings do ([QueueBatchFrom]).

	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: q, MaxDeliveries: 5,
		DeadLetter: batuta.DeadLetterQueue(deadQ),
	})

# Cron schedules

[NewCron] fires on a cron spec ([ParseSchedule]: 5 or 6 fields, @every,
CRON_TZ=, Quartz's L, W and #), with Temporal's missed-tick ([MissedPolicy])
and overlap ([OverlapPolicy]) policies. Each tick's event ID names the
schedule and the tick ([CronEventID]), so a tick starts one run however many
instances run the schedule. Tasks read the tick with [CronTickFrom].

	trig, err := batuta.NewCron(batuta.CronConfig{Name: "daily-report", Spec: "CRON_TZ=Europe/Madrid 0 9 * * MON-FRI"})

# Functions and HTTP

[RegisterFunc] registers a typed handler as a one-task workflow with a
concurrency limit, a timeout and a dead-letter destination
([FunctionConfig]); [Orchestrator.Invoke], [InvokeAs] and
[Orchestrator.InvokeAsync] call it. [NewHTTPHandler] serves functions and
workflows over HTTP (POST /functions/{name}, POST /workflows/{name}/runs with
an Idempotency-Key, GET /runs/{id}); it requires an authorisation func
([HTTPConfig.Authorize]). Tasks
read the call with [HTTPRequestFrom].

	err = batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "resize-image", Concurrency: 4}, resize)
	thumb, err := batuta.InvokeAs[Thumbnail](ctx, o, "resize-image", ImageUploaded{Key: "cat.jpg"})

# Stores

A [Store] keeps runs. The default, [NewMemoryStore], lives as long as the
process: a crash loses unfinished runs. batutasqlite.Open (one machine, a
file) and batutapg.New (many instances on one database) are durable: an
orchestrator that starts resumes unfinished runs, tasks whose worker died are
rescued when their lease expires, and a task that recorded success never
runs again.

	store, err := batutasqlite.Open(ctx, "runs.db", batutasqlite.Config{})
	o, err := batuta.New(batuta.Config{Store: store})

# Flow control

[StartAt] and [StartAfter] delay a run (it exists at once and starts no
task before its time), [WithPriority] orders claims, and [Orchestrator.SubmitMany]
creates a batch in one store round trip. [Workflow.Concurrency] and
[Task.Concurrency] limit runs or attempts per key ([Concurrency]: wait in a
fair queue, cancel the oldest, or refuse the newest), [Task.RateLimit]
limits starts per period ([RateLimit], GCRA), [Workflow.Debounce] merges a
burst of events into one run, and [Orchestrator.Pause] holds a workflow on
every instance. The store holds each limit, so with PostgreSQL it holds
across instances; docs/flow.md has the guarantees.

	id, err := o.Submit(ctx, "reminder", ev, batuta.StartAt(tomorrow9), batuta.WithPriority(10))
	wf.Concurrency = &batuta.Concurrency{Key: func(ev batuta.Event) string { return ev.Subject }, Max: 1}

# Cancel and wait

[Orchestrator.Wait] blocks until a run finished and returns its [Run]
snapshot; [Orchestrator.GetRun] returns it at any time;
[Orchestrator.Cancel] cancels pending tasks at once and the ctx of running
ones. [Orchestrator.Submit] returns [ErrBusy] past [Config.MaxInFlightRuns]
unfinished runs ([Orchestrator.SubmitBlocking] waits instead); payloads over
[Config.MaxPayloadBytes] are a [*PayloadTooLargeError].

# Shutdown

[Orchestrator.Run] blocks until its ctx ends. Then it stops the triggers,
lets running tasks finish for [Config.ShutdownGrace] (10 s), cancels them and
hands their claims back to the store without spending an attempt, waits
[Config.ShutdownKill] (2 s) more for tasks that ignore their ctx, names
those in the log, and returns.

# Observability

Logs go through log/slog ([Config.Logger]): succeeded runs at Info, failed
and canceled runs and failed attempts at Warn, the rest at Debug. [Hooks] in
[Config.Hooks] observe every run and
attempt; [github.com/batuta-dev/batuta/adapters/batutaotel] implements them
with OpenTelemetry spans and metrics.

# Testing

[github.com/batuta-dev/batuta/batutatest] has a fake clock (NewFakeClock) to
drive retries and cron ticks without sleeping, a push trigger
(NewPushTrigger) that returns what fire returned (so a test sees [ErrBusy]),
and the conformance suites every Store, Queue and Trigger adapter passes.

# Guarantees

Execution is at least once: a task attempt may run again after a crash, but
a task that recorded success never runs again, and writes of a worker that
lost its lease are fenced off. A trigger releases its source (broker ack,
outbox row deleted) only after the run is recorded in the Store; with the
in-memory store that means "recorded in this process". Everything is
bounded: payload bytes, unfinished runs, retries, rescues
([Config.MaxRescues]), retention of finished runs ([Config.Retention]) and
shutdown time.
*/
package batuta
