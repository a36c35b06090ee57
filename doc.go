// Package batuta is an embeddable task-orchestration library: declare
// workflows (DAGs of tasks with dependencies, retries, timeouts and data
// passed between tasks) and bind them to the ways back-end work starts:
// database row changes, queue messages, cron schedules and direct calls.
//
// # Workflows
//
// A [Workflow] is a named list of [Task]s; each task names the tasks it
// depends on, its [RetryPolicy], its timeout and its [JoinRule]. Register it
// with [Orchestrator.Register], which rejects cycles (naming them), unknown
// or duplicate names and other mistakes with a [*WorkflowError].
//
// A task reads the triggering [Event] with [EventData] and the outputs of
// its dependencies with [Output], both typed with generics. It steers its
// retries with what it returns: [Permanent] stops retrying, [Snooze] runs it
// again later without spending an attempt.
//
// # Running
//
// [New] makes an [Orchestrator] from a [Config] whose zero value works: an
// in-memory [Store], slog's default logger, a worker pool sized to the
// machine. [Orchestrator.Run] blocks until its context ends, then stops the
// triggers, drains running tasks for a grace period, cancels the rest and
// returns. [Orchestrator.Submit] starts a run (deduplicated by [Event.ID]),
// [Orchestrator.Wait] waits for it, [Orchestrator.Cancel] cancels it and
// [Orchestrator.GetRun] shows its tasks, attempts, errors and durations.
//
// # Triggers
//
// Every source implements [Trigger]: Run(ctx, fire) calls fire once per
// event, and an event counts as delivered only when fire returned nil. Bind
// a trigger to a workflow with [Orchestrator.Bind]. The core has the cron
// trigger, the queue trigger over any [Queue] (an in-memory one included),
// function-style handlers and an HTTP handler; the adapters modules add
// database outboxes (batutapg, batutamysql, batutasqlite) and brokers
// (batutaredis, batutanats, batutaamqp).
//
// # Guarantees
//
// Execution is at least once: a task attempt may run again after a crash,
// but a task that recorded success never runs again, and writes of a worker
// that lost its lease are fenced off. With the in-memory store "accepted"
// means "accepted by this process": a crash loses unfinished runs; use a
// durable store (batutasqlite, batutapg) to survive crashes. Everything is
// bounded: payload bytes ([Config].MaxPayloadBytes), unfinished runs
// ([Config].MaxInFlightRuns, past which Submit returns [ErrBusy]), retries,
// rescues, retention and shutdown time.
package batuta
