package batutasqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/batuta-dev/batuta"
)

// Defaults of Outbox.
const (
	// DefaultOutboxTable is the outbox table name when Outbox.Table is empty.
	DefaultOutboxTable = "batuta_outbox"
	// DefaultMaxEmitBytes caps Event.Data written by Emit when
	// Outbox.MaxEmitBytes is zero: 256 KiB, the orchestrator's default
	// payload cap.
	DefaultMaxEmitBytes = 256 << 10
)

// capturesTable records, per capture trigger, the column list it was
// generated from, so CaptureStatus can say what changed in the table since.
const capturesTable = "batuta_captures"

// outboxMarker is the comment inside the CREATE TABLE statement of an
// outbox (SQLite keeps the statement's text in sqlite_schema) that marks it
// as ours.
const outboxMarker = "batuta outbox v1"

// nowSQL is the SQL for the current time, UTC RFC 3339 with milliseconds.
const nowSQL = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

// Outbox names an outbox table: where capture triggers (see InstallCapture)
// and Emit write changes, and what a Trigger consumes. Its zero value names
// batuta_outbox. Use the same value for the installer, Emit and the Trigger.
// Outboxes live in the main database of the connection (SQLite triggers can
// only write to tables of their own database).
//
// Table is an identifier: validated (at most 128 bytes, no NUL or control
// characters, not starting with "sqlite_") and always quoted, never
// spliced raw into SQL.
type Outbox struct {
	// Table is the outbox table's name. Default "batuta_outbox". It is part
	// of every derived event ID, so keep it stable.
	Table string
	// MaxEmitBytes caps the size of Event.Data accepted by Emit; larger
	// events are refused with a *batuta.PayloadTooLargeError before any
	// write. Default 256 KiB. It does not apply to rows written by capture
	// triggers (the orchestrator's own payload cap applies when fired).
	MaxEmitBytes int
}

func (o Outbox) withDefaults() Outbox {
	if o.Table == "" {
		o.Table = DefaultOutboxTable
	}
	if o.MaxEmitBytes == 0 {
		o.MaxEmitBytes = DefaultMaxEmitBytes
	}
	return o
}

// validate checks an Outbox after withDefaults. field prefixes field names
// in errors ("Outbox." inside a larger config).
func (o Outbox) validate(field string) error {
	if err := validIdent("table", o.Table); err != nil {
		return fmt.Errorf("batutasqlite: %sTable: %w", field, err)
	}
	if strings.EqualFold(o.Table, capturesTable) {
		return &batuta.ConfigError{Field: field + "Table", Reason: capturesTable + " is reserved for capture bookkeeping"}
	}
	if o.MaxEmitBytes < 0 {
		return &batuta.ConfigError{Field: field + "MaxEmitBytes", Reason: "must not be negative"}
	}
	return nil
}

// String returns the outbox table's name.
func (o Outbox) String() string { return o.withDefaults().Table }

func (o Outbox) quoted() string { return quoteIdent(o.Table) }

// ChangeData is the Data of an event fired for a row change captured by a
// capture trigger (JSON-encoded), the same shape for every database batuta
// supports:
//
//	{"op":"update","schema":"main","table":"orders",
//	 "new":{"id":7,"status":"paid"},"old":{"id":7,"status":"new"},
//	 "at":"2026-01-02T15:04:05.123Z"}
//
// New and Old map every column of the table (generated columns included),
// in table order, to its value as SQLite's json_object renders it:
// INTEGER and REAL as JSON numbers, TEXT as strings (JSON text stays a
// string), NULL as null, and BLOB values, which JSON cannot hold, as
// upper-case hex strings (SQLite is dynamically typed, so this is decided
// per value, whatever the column's declared type). New is null for a
// delete, Old for an insert. Read it typed with DecodeChange (or
// batuta.ChangeFrom), or decode it with
// batuta.EventData[batutasqlite.ChangeData].
type ChangeData struct {
	// Op is "insert", "update" or "delete".
	Op string `json:"op"`
	// Schema is always "main".
	Schema string `json:"schema"`
	// Table is the table the row belongs to.
	Table string          `json:"table"`
	New   json.RawMessage `json:"new"`
	Old   json.RawMessage `json:"old"`
	// At is when the row changed (SQLite's clock in the trigger,
	// millisecond precision).
	At time.Time `json:"at"`
}

// outboxDDL creates an outbox table. Rows are claimed under a lease
// (claimed_until in Unix milliseconds, claimed_by) and deleted once
// delivered; dead_at marks rows that can never be delivered (see Trigger).
// AUTOINCREMENT keeps SQLite from reusing the id of a deleted row (and so
// the event ID of a delivered event); the counter of a new outbox is seeded
// with the current Unix time in microseconds, so an outbox dropped and
// created again does not reuse ids either.
const outboxDDL = `CREATE TABLE %s ( -- ` + outboxMarker + `
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  op TEXT NOT NULL,
  table_name TEXT,
  new_row TEXT,
  old_row TEXT,
  event_id TEXT,
  source TEXT,
  type TEXT,
  subject TEXT,
  data BLOB,
  metadata TEXT,
  event_time TEXT,
  created_at TEXT NOT NULL,
  claimed_until INTEGER,
  claimed_by TEXT,
  deliveries INTEGER NOT NULL DEFAULT 0,
  dead_at TEXT,
  last_error TEXT
)`

var capturesDDL = `CREATE TABLE IF NOT EXISTS ` + quoteIdent(capturesTable) + ` (
  trigger_name TEXT PRIMARY KEY,
  table_name TEXT NOT NULL,
  outbox TEXT NOT NULL,
  op TEXT NOT NULL,
  columns_json TEXT NOT NULL,
  installed_at TEXT NOT NULL
)`

// Emit writes ev into the outbox inside the caller's transaction tx, so the
// event is delivered if and only if tx commits: the transactional outbox
// pattern, for a service that emits "order placed" atomically with its
// business write, no database trigger needed. The outbox must have been
// installed (InstallOutbox or InstallCapture).
//
// If ev.ID is empty the delivered event's ID is derived from the outbox row
// ("sqlite/<outbox>/<row id>"); set it to make the event idempotent across
// retries of the caller's own transaction. Source defaults to
// "sqlite/<outbox>" and Time to the moment of the write. Data is stored as
// a BLOB and delivered verbatim.
//
// Emit refuses, before any write, an invalid outbox name
// (batuta.ErrInvalidIdentifier), Data over Outbox.MaxEmitBytes
// (batuta.ErrPayloadTooLarge), and text fields or metadata holding NUL
// bytes or invalid UTF-8 (batuta.ErrInvalidPayload). Emit is safe for
// concurrent use on distinct transactions; it honours ctx like any
// statement on tx. Begin tx with BEGIN IMMEDIATE (modernc.org/sqlite:
// _txlock=immediate in the DSN) when other connections write too, so the
// transaction does not fail with SQLITE_BUSY on its first write.
func Emit(ctx context.Context, tx *sql.Tx, ob Outbox, ev batuta.Event) error {
	ob = ob.withDefaults()
	if err := ob.validate("Outbox."); err != nil {
		return err
	}
	if len(ev.Data) > ob.MaxEmitBytes {
		return fmt.Errorf("batutasqlite: emit: %w",
			&batuta.PayloadTooLargeError{What: "event data", Size: len(ev.Data), Limit: ob.MaxEmitBytes})
	}
	for _, f := range []struct{ name, v string }{
		{"ID", ev.ID}, {"Source", ev.Source}, {"Type", ev.Type}, {"Subject", ev.Subject},
	} {
		if err := validText(f.v); err != nil {
			return fmt.Errorf("batutasqlite: emit: event %s: %w: %w", f.name, err, batuta.ErrInvalidPayload)
		}
	}
	var meta any
	if len(ev.Metadata) > 0 {
		for k, v := range ev.Metadata {
			if validText(k) != nil || validText(v) != nil {
				return fmt.Errorf("batutasqlite: emit: event metadata %q: NUL byte or invalid UTF-8: %w", k, batuta.ErrInvalidPayload)
			}
		}
		b, err := json.Marshal(ev.Metadata)
		if err != nil {
			return fmt.Errorf("batutasqlite: emit: event metadata: %w", err)
		}
		meta = string(b)
	}
	var evTime any
	if !ev.Time.IsZero() {
		evTime = ev.Time.UTC().Format(time.RFC3339Nano)
	}
	data := ev.Data
	if data == nil {
		data = []byte{}
	}
	q := "INSERT INTO " + ob.quoted() +
		" (op, event_id, source, type, subject, data, metadata, event_time, created_at) VALUES ('emit', ?, ?, ?, ?, ?, ?, ?, " + nowSQL + ")"
	if _, err := tx.ExecContext(ctx, q, nullString(ev.ID), nullString(ev.Source), nullString(ev.Type),
		nullString(ev.Subject), data, meta, evTime); err != nil {
		return fmt.Errorf("batutasqlite: emit into %s: %w", ob, err)
	}
	return nil
}

// validText reports why s cannot be stored as text.
func validText(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("invalid UTF-8")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("NUL byte")
	}
	return nil
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// outboxRow is one claimed outbox row.
type outboxRow struct {
	id                            int64
	op                            string
	table, newRow, oldRow         sql.NullString
	eventID, source, typ, subject sql.NullString
	data                          []byte
	meta, eventTime               sql.NullString
	createdAt                     string
	deliveries                    int
}

// outboxColumns is the column list every claim reads, in scan order.
const outboxColumns = "id, op, table_name, new_row, old_row, event_id, source, type, subject, data, metadata, event_time, created_at, deliveries"

func (r *outboxRow) scan(s interface{ Scan(...any) error }) error {
	return s.Scan(&r.id, &r.op, &r.table, &r.newRow, &r.oldRow, &r.eventID, &r.source, &r.typ,
		&r.subject, &r.data, &r.meta, &r.eventTime, &r.createdAt, &r.deliveries)
}

// event turns a claimed row into the Event fired for it. The ID depends
// only on the outbox and the row id, so a redelivered row is deduplicated.
// An error means the row can never become a valid event: the consumer
// marks it dead.
func (r *outboxRow) event(outbox string) (batuta.Event, error) {
	rowID := strconv.FormatInt(r.id, 10)
	createdAt, err := time.Parse(time.RFC3339Nano, r.createdAt)
	if err != nil {
		return batuta.Event{}, fmt.Errorf("batutasqlite: outbox row %d: bad created_at %q: %w", r.id, r.createdAt, batuta.ErrInvalidPayload)
	}
	ev := batuta.Event{
		ID:       "sqlite/" + outbox + "/" + rowID,
		Time:     createdAt,
		Metadata: map[string]string{MetaOutboxID: rowID, MetaDeliveries: strconv.Itoa(r.deliveries)},
	}
	if r.op == "emit" {
		if r.eventID.Valid {
			ev.ID = r.eventID.String
		}
		ev.Source = SourcePrefix + outbox
		if r.source.Valid {
			ev.Source = r.source.String
		}
		ev.Type, ev.Subject = r.typ.String, r.subject.String
		if r.eventTime.Valid {
			if ev.Time, err = time.Parse(time.RFC3339Nano, r.eventTime.String); err != nil {
				return ev, fmt.Errorf("batutasqlite: outbox row %d: bad event_time %q: %w", r.id, r.eventTime.String, batuta.ErrInvalidPayload)
			}
		}
		ev.Data = r.data
		if r.meta.Valid && r.meta.String != "" {
			var md map[string]string
			if err := json.Unmarshal([]byte(r.meta.String), &md); err != nil {
				return ev, fmt.Errorf("batutasqlite: outbox row %d: metadata: %w: %w", r.id, err, batuta.ErrInvalidPayload)
			}
			for k, v := range md {
				if _, reserved := ev.Metadata[k]; !reserved {
					ev.Metadata[k] = v
				}
			}
		}
		return ev, nil
	}
	ev.Source = SourcePrefix + r.table.String
	ev.Type = r.table.String + "." + r.op
	data, err := json.Marshal(ChangeData{
		Op: r.op, Schema: "main", Table: r.table.String,
		New: rawOrNull(r.newRow), Old: rawOrNull(r.oldRow), At: createdAt,
	})
	if err != nil {
		return ev, fmt.Errorf("batutasqlite: outbox row %d: row image: %w: %w", r.id, err, batuta.ErrInvalidPayload)
	}
	ev.Data = data
	return ev, nil
}

func rawOrNull(s sql.NullString) json.RawMessage {
	if !s.Valid {
		return json.RawMessage("null")
	}
	return json.RawMessage(s.String)
}
