// Package outboxsql holds what the outbox adapters (batutapg, batutamysql,
// batutasqlite) share above the consumer engine of package outboxloop: the
// Trigger settings with their defaults and validation, the consumer of the
// database/sql dialects that poll (MySQL, SQLite), the outbox row turned
// into a batuta.Event, Emit's checks, the Capture checks and the column
// drift of a stale capture, identifier checks, and DecodeChange.
//
// An adapter keeps its exported types (TriggerConfig, Outbox, Capture, ...)
// and their documentation, and the SQL of its dialect; everything here is
// database independent. A fourth database is its SQL: a claim statement, a
// lease expression, a time expression, its catalog queries.
package outboxsql
