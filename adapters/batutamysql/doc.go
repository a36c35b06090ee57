// Package batutamysql turns changes to MySQL and MariaDB tables into batuta
// events: "when a row is inserted into orders, run order-placed".
//
// # Capture
//
// InstallCapture puts an AFTER INSERT/UPDATE/DELETE trigger on a table that
// writes one row per changed row into an outbox table, in the same
// transaction as the write, with the new and old row images as JSON (see
// ChangeData). MySQL cannot serialise a whole row generically, so the
// trigger lists the table's columns; CaptureStatus reports when the table has
// changed since, and installing again regenerates the trigger. Emit writes an
// event into the outbox inside your own transaction, without a trigger (the
// transactional outbox pattern).
//
// # Delivery
//
// A Trigger (a batuta.TrackingTrigger) consumes the outbox: it claims rows
// in batches with FOR UPDATE SKIP LOCKED under a lease, fires each as an
// Event whose ID is stable for the row, and deletes the row only after the
// event was accepted, or, with a store that is not durable, after its run
// finished. MySQL cannot notify, so it polls with an adaptive interval.
//
// The package works on a *sql.DB; it does not import a driver. Use
// github.com/go-sql-driver/mysql (MariaDB 10.6+ or MySQL 8.0+, for SKIP
// LOCKED). The repository's docs/dbtrigger-mysql-sqlite.md has the details.
package batutamysql
