package batutamysql

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

// capturesTable records, per capture trigger, the DDL fingerprint and the
// column list it was generated from, so CaptureStatus can tell when the
// table has changed since (MySQL has no comments on triggers). It lives in
// the outbox's database, next to the outbox.
const capturesTable = "batuta_captures"

// outboxMarker is the table comment that marks an outbox table as ours.
const outboxMarker = "batuta outbox v1"

// maxEventField caps Event.ID, Source, Type and Subject written by Emit: they
// are stored in VARCHAR(255) columns.
const maxEventField = 255

// Outbox names an outbox table: where capture triggers (see InstallCapture)
// and Emit write changes, and what a Trigger consumes. Its zero value names
// batuta_outbox in the connection's current database. Use the same value for
// the installer, Emit and the Trigger.
//
// Schema and Table are identifiers: validated (at most 64 characters, no
// NUL or control characters, see validIdent) and always quoted, never
// spliced raw into SQL.
type Outbox struct {
	// Schema is the database holding the outbox. Default: the connection's
	// current database (DATABASE()). The Trigger resolves it once at start,
	// and it is part of every derived event ID, so keep it stable.
	Schema string
	// Table is the outbox table's name. Default "batuta_outbox".
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
	if o.Schema != "" {
		if err := validIdent("schema", o.Schema); err != nil {
			return fmt.Errorf("batutamysql: %sSchema: %w", field, err)
		}
	}
	if err := validIdent("table", o.Table); err != nil {
		return fmt.Errorf("batutamysql: %sTable: %w", field, err)
	}
	if strings.EqualFold(o.Table, capturesTable) {
		return &batuta.ConfigError{Field: field + "Table", Reason: capturesTable + " is reserved for capture bookkeeping"}
	}
	if o.MaxEmitBytes < 0 {
		return &batuta.ConfigError{Field: field + "MaxEmitBytes", Reason: "must not be negative"}
	}
	return nil
}

// String returns schema.table unquoted ("table" when Schema is empty).
func (o Outbox) String() string {
	o = o.withDefaults()
	if o.Schema == "" {
		return o.Table
	}
	return o.Schema + "." + o.Table
}

// quoted returns the quoted table name, qualified when Schema is set.
func (o Outbox) quoted() string {
	if o.Schema == "" {
		return quoteIdent(o.Table)
	}
	return quoteQualified(o.Schema, o.Table)
}

// ChangeData is the Data of an event fired for a row change captured by a
// capture trigger (JSON-encoded), the same shape for every database batuta
// supports:
//
//	{"op":"update","schema":"shop","table":"orders",
//	 "new":{"id":7,"status":"paid"},"old":{"id":7,"status":"new"},
//	 "at":"2026-01-02T15:04:05.123456Z"}
//
// New and Old map every column of the table, in table order, to its value
// as MySQL's JSON_OBJECT renders it: integers, floats and DECIMALs as JSON
// numbers, JSON columns as nested JSON, temporal types as strings in the
// server's format ("2026-01-02 15:04:05.000000"), BINARY, VARBINARY and BLOB
// columns as upper-case hex strings (JSON cannot hold bytes), BIT columns
// as numbers, spatial columns as WKT strings. New is null for a delete, Old
// for an insert. Read it typed with DecodeChange (or batuta.ChangeFrom),
// or decode it with batuta.EventData[batutamysql.ChangeData].
type ChangeData struct {
	// Op is "insert", "update" or "delete".
	Op string `json:"op"`
	// Schema is the database holding the table.
	Schema string `json:"schema"`
	// Table is the table the row belongs to.
	Table string          `json:"table"`
	New   json.RawMessage `json:"new"`
	Old   json.RawMessage `json:"old"`
	// At is when the row changed (UTC_TIMESTAMP(6) in the trigger, inside
	// the writing transaction).
	At time.Time `json:"at"`
}

// outboxDDL creates an outbox table. Rows are claimed under a lease
// (claimed_until, claimed_by) and deleted once delivered; dead_at marks rows
// that can never be delivered (see Trigger). The AUTO_INCREMENT counter of a
// new outbox starts at the current Unix time in microseconds, so an outbox
// dropped and created again never reuses the IDs, and so the event IDs, of
// events the old one delivered (a durable store may still hold them as
// dedupe keys).
const outboxDDL = `CREATE TABLE IF NOT EXISTS %s (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  op VARCHAR(6) NOT NULL,
  schema_name VARCHAR(64) NULL,
  table_name VARCHAR(64) NULL,
  new_row LONGTEXT NULL,
  old_row LONGTEXT NULL,
  event_id VARCHAR(255) NULL,
  source VARCHAR(255) NULL,
  type VARCHAR(255) NULL,
  subject VARCHAR(255) NULL,
  data LONGBLOB NULL,
  metadata LONGTEXT NULL,
  event_time DATETIME(6) NULL,
  created_at DATETIME(6) NOT NULL,
  claimed_until DATETIME(6) NULL,
  claimed_by VARCHAR(64) NULL,
  deliveries INT NOT NULL DEFAULT 0,
  dead_at DATETIME(6) NULL,
  last_error TEXT NULL,
  PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin AUTO_INCREMENT=%d COMMENT='` + outboxMarker + `'`

const capturesDDL = `CREATE TABLE IF NOT EXISTS %s (
  table_schema VARCHAR(64) NOT NULL,
  trigger_name VARCHAR(64) NOT NULL,
  table_name VARCHAR(64) NOT NULL,
  outbox VARCHAR(64) NOT NULL,
  op VARCHAR(6) NOT NULL,
  columns_json LONGTEXT NOT NULL,
  fingerprint CHAR(64) NOT NULL,
  installed_at DATETIME(6) NOT NULL,
  PRIMARY KEY (table_schema, trigger_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`

// Emit writes ev into the outbox inside the caller's transaction tx, so the
// event is delivered if and only if tx commits: the transactional outbox
// pattern, for a service that emits "order placed" atomically with its
// business write, no database trigger needed. The outbox must have been
// installed (InstallOutbox or InstallCapture).
//
// If ev.ID is empty the delivered event's ID is derived from the outbox row
// ("mysql/<schema>.<outbox>/<row id>"); set it to make the event
// idempotent across retries of the caller's own transaction. Source
// defaults to "mysql/<schema>.<outbox>" and Time to the moment of the
// write. Data is stored as bytes and delivered verbatim.
//
// Emit refuses, before any write, an invalid outbox name
// (batuta.ErrInvalidIdentifier), Data over Outbox.MaxEmitBytes
// (batuta.ErrPayloadTooLarge), ID, Source, Type or Subject over 255 bytes,
// and text fields or metadata holding NUL bytes or invalid UTF-8
// (batuta.ErrInvalidPayload). Emit is safe for concurrent use on distinct
// transactions; it honours ctx like any statement on tx.
func Emit(ctx context.Context, tx *sql.Tx, ob Outbox, ev batuta.Event) error {
	ob = ob.withDefaults()
	if err := ob.validate("Outbox."); err != nil {
		return err
	}
	if len(ev.Data) > ob.MaxEmitBytes {
		return fmt.Errorf("batutamysql: emit: %w",
			&batuta.PayloadTooLargeError{What: "event data", Size: len(ev.Data), Limit: ob.MaxEmitBytes})
	}
	for _, f := range []struct{ name, v string }{
		{"ID", ev.ID}, {"Source", ev.Source}, {"Type", ev.Type}, {"Subject", ev.Subject},
	} {
		if len(f.v) > maxEventField {
			return fmt.Errorf("batutamysql: emit: event %s is %d bytes, over the limit of %d: %w",
				f.name, len(f.v), maxEventField, batuta.ErrInvalidPayload)
		}
		if err := validText(f.v); err != nil {
			return fmt.Errorf("batutamysql: emit: event %s: %w: %w", f.name, err, batuta.ErrInvalidPayload)
		}
	}
	var meta any
	if len(ev.Metadata) > 0 {
		for k, v := range ev.Metadata {
			if validText(k) != nil || validText(v) != nil {
				return fmt.Errorf("batutamysql: emit: event metadata %q: NUL byte or invalid UTF-8: %w", k, batuta.ErrInvalidPayload)
			}
		}
		b, err := json.Marshal(ev.Metadata)
		if err != nil {
			return fmt.Errorf("batutamysql: emit: event metadata: %w", err)
		}
		meta = string(b)
	}
	var evTime any
	if !ev.Time.IsZero() {
		evTime = ev.Time.UTC().Format(mysqlTimeLayout)
	}
	data := ev.Data
	if data == nil {
		data = []byte{}
	}
	q := "INSERT INTO " + ob.quoted() +
		" (op, event_id, source, type, subject, data, metadata, event_time, created_at) VALUES ('emit', ?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))"
	if _, err := tx.ExecContext(ctx, q, nullString(ev.ID), nullString(ev.Source), nullString(ev.Type),
		nullString(ev.Subject), data, meta, evTime); err != nil {
		return fmt.Errorf("batutamysql: emit into %s: %w", ob, err)
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

// mysqlTimeLayout is how DATETIME(6) values are written (UTC).
const mysqlTimeLayout = "2006-01-02 15:04:05.000000"

// outboxRow is one claimed outbox row.
type outboxRow struct {
	id                            uint64
	op                            string
	schema, table, newRow, oldRow sql.NullString
	eventID, source, typ, subject sql.NullString
	data                          []byte
	meta, eventTime               sql.NullString
	createdAt                     string
	deliveries                    int
}

// outboxColumns is the column list every claim reads, in scan order.
// Times are read as text so the result does not depend on the DSN's
// parseTime.
const outboxColumns = "id, op, schema_name, table_name, new_row, old_row, event_id, source, type, subject, data, metadata, " +
	"CAST(event_time AS CHAR), CAST(created_at AS CHAR), deliveries"

func (r *outboxRow) scan(s interface{ Scan(...any) error }) error {
	return s.Scan(&r.id, &r.op, &r.schema, &r.table, &r.newRow, &r.oldRow, &r.eventID, &r.source, &r.typ,
		&r.subject, &r.data, &r.meta, &r.eventTime, &r.createdAt, &r.deliveries)
}

// event turns a claimed row into the Event fired for it. The ID depends
// only on the outbox and the row id, so a redelivered row is deduplicated.
// An error means the row can never become a valid event: the consumer
// marks it dead.
func (r *outboxRow) event(schema, outbox string) (batuta.Event, error) {
	rowID := strconv.FormatUint(r.id, 10)
	createdAt, err := parseMySQLTime(r.createdAt)
	if err != nil {
		return batuta.Event{}, fmt.Errorf("batutamysql: outbox row %d: bad created_at %q: %w", r.id, r.createdAt, batuta.ErrInvalidPayload)
	}
	ev := batuta.Event{
		ID:       "mysql/" + schema + "." + outbox + "/" + rowID,
		Time:     createdAt,
		Metadata: map[string]string{MetaOutboxID: rowID, MetaDeliveries: strconv.Itoa(r.deliveries)},
	}
	if r.op == "emit" {
		if r.eventID.Valid {
			ev.ID = r.eventID.String
		}
		ev.Source = SourcePrefix + schema + "." + outbox
		if r.source.Valid {
			ev.Source = r.source.String
		}
		ev.Type, ev.Subject = r.typ.String, r.subject.String
		if r.eventTime.Valid {
			if ev.Time, err = parseMySQLTime(r.eventTime.String); err != nil {
				return ev, fmt.Errorf("batutamysql: outbox row %d: bad event_time %q: %w", r.id, r.eventTime.String, batuta.ErrInvalidPayload)
			}
		}
		ev.Data = r.data
		if r.meta.Valid && r.meta.String != "" {
			var md map[string]string
			if err := json.Unmarshal([]byte(r.meta.String), &md); err != nil {
				return ev, fmt.Errorf("batutamysql: outbox row %d: metadata: %w: %w", r.id, err, batuta.ErrInvalidPayload)
			}
			for k, v := range md {
				if _, reserved := ev.Metadata[k]; !reserved {
					ev.Metadata[k] = v
				}
			}
		}
		return ev, nil
	}
	ev.Source = SourcePrefix + r.schema.String + "." + r.table.String
	ev.Type = r.table.String + "." + r.op
	data, err := json.Marshal(ChangeData{
		Op: r.op, Schema: r.schema.String, Table: r.table.String,
		New: rawOrNull(r.newRow), Old: rawOrNull(r.oldRow), At: createdAt,
	})
	if err != nil {
		return ev, fmt.Errorf("batutamysql: outbox row %d: row image: %w: %w", r.id, err, batuta.ErrInvalidPayload)
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

func parseMySQLTime(s string) (time.Time, error) {
	return time.ParseInLocation("2006-01-02 15:04:05.999999", s, time.UTC)
}
