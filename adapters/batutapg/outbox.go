package batutapg

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxsql"
	"github.com/jackc/pgx/v5"
)

// Defaults of Outbox.
const (
	// DefaultOutboxSchema is the schema of the outbox table when
	// Outbox.Schema is empty.
	DefaultOutboxSchema = "public"
	// DefaultOutboxTable is the outbox table name when Outbox.Table is empty.
	DefaultOutboxTable = "batuta_outbox"
	// DefaultMaxEmitBytes caps an event written by Emit (Data plus
	// metadata) when Outbox.MaxEmitBytes is zero. It matches the default
	// of batuta.Config.MaxPayloadBytes, past which fire would refuse it.
	DefaultMaxEmitBytes = 256 << 10
)

// Outbox names an outbox table: where database triggers (see InstallCapture)
// and Emit write changes, and what a Trigger consumes. Its zero value names
// public.batuta_outbox with channel "public.batuta_outbox". The same value must be
// used by the installer, by Emit and by the Trigger.
//
// Schema, Table and Channel are identifiers: each is validated (non-empty
// after defaults, at most 63 bytes, no NUL or control characters) and always
// quoted, never spliced raw into SQL.
type Outbox struct {
	// Schema of the outbox table. Default "public". InstallOutbox does not
	// create the schema.
	Schema string
	// Table is the outbox table's name. Default "batuta_outbox".
	Table string
	// Channel is the LISTEN/NOTIFY channel the capture triggers and Emit
	// notify, once per writing transaction, with the id of its first
	// outbox row (never the row: NOTIFY payloads are capped at 8000
	// bytes). Default "<Schema>.<Table>" (or, if that is over 63 bytes,
	// "batuta_outbox_" and 8 hex digits of a hash of it). Changing it
	// needs the outbox to be installed again.
	Channel string
	// NoNotify turns notifications off: writers do not call pg_notify and
	// consumers find rows by polling alone (lower
	// TriggerConfig.PollInterval to taste). Use it for tables written by
	// many concurrent transactions: every notifying commit takes a
	// cluster-wide lock held until its commit record is flushed, which
	// serialises those commits (see docs/dbtrigger-postgres.md). Changing
	// it needs the outbox to be installed again.
	NoNotify bool
	// MaxEmitBytes caps the size of an event accepted by Emit (Data plus
	// metadata keys and values); larger events are refused with a
	// *batuta.PayloadTooLargeError before any write. Default 256 KiB, the
	// orchestrator's default cap; keep it at most the orchestrator's
	// MaxPayloadBytes. It does not apply to rows written by capture
	// triggers (the row image is whatever the row holds; the orchestrator's
	// cap applies when the row is fired, see Trigger).
	MaxEmitBytes int
}

func (o Outbox) withDefaults() Outbox {
	if o.Schema == "" {
		o.Schema = DefaultOutboxSchema
	}
	if o.Table == "" {
		o.Table = DefaultOutboxTable
	}
	if o.Channel == "" {
		o.Channel = o.Schema + "." + o.Table
		if len(o.Channel) > maxIdentLen {
			o.Channel = "batuta_outbox_" + o.hash()
		}
	}
	if o.MaxEmitBytes == 0 {
		o.MaxEmitBytes = DefaultMaxEmitBytes
	}
	return o
}

// validate checks an Outbox after withDefaults. field prefixes the field
// names in errors ("Outbox." inside a larger config).
func (o Outbox) validate(field string) error {
	for _, f := range []struct{ name, kind, val string }{
		{"Schema", "schema", o.Schema},
		{"Table", "table", o.Table},
		{"Channel", "channel", o.Channel},
	} {
		if err := validIdent(f.kind, f.val); err != nil {
			return fmt.Errorf("batutapg: %s%s: %w", field, f.name, err)
		}
	}
	if o.MaxEmitBytes < 0 {
		return &batuta.ConfigError{Field: field + "MaxEmitBytes", Reason: "must not be negative"}
	}
	return nil
}

// String returns schema.table, unquoted.
func (o Outbox) String() string {
	o = o.withDefaults()
	return displayName(o.Schema, o.Table)
}

// quoted returns the quoted, schema-qualified table name.
func (o Outbox) quoted() string { return quoteQualified(o.Schema, o.Table) }

// hash returns 8 hex digits identifying the outbox, used to derive the
// names of its capture function and triggers so they fit in 63 bytes
// whatever the outbox is called.
func (o Outbox) hash() string {
	sum := sha256.Sum256([]byte(o.Schema + "\x00" + o.Table))
	return hex.EncodeToString(sum[:4])
}

// lockKey is the advisory lock that serialises installers of this outbox.
func (o Outbox) lockKey() int64 {
	sum := sha256.Sum256([]byte("batuta outbox install\x00" + o.Schema + "\x00" + o.Table))
	return int64(binary.BigEndian.Uint64(sum[:8]))
}

// notifiedFlag names the transaction-local setting that records that the
// transaction already notified the outbox's channel.
func (o Outbox) notifiedFlag() string { return "batuta.notified_" + o.hash() }

// functionName is the name of the capture trigger function (in o.Schema).
func (o Outbox) functionName() string { return "batuta_capture_" + o.hash() }

// Emit writes ev into the outbox inside the caller's transaction tx, so the
// event is delivered if and only if tx commits: the transactional outbox
// pattern, for a service that emits "order placed" atomically with its
// business write, no database trigger needed. A Trigger on the same outbox
// delivers it after commit (notified through the outbox's channel).
//
// If ev.ID is empty the delivered event's ID is derived from the outbox
// row ("pg/<schema>.<table>/<row id>"); set it to make the event
// idempotent across retries of the caller's own transaction. Source
// defaults to "postgres/<schema>.<table>" of the outbox and Time to the
// moment of the write. Data is stored as bytes and delivered verbatim.
//
// Emit refuses, before any write, an invalid outbox name
// (batuta.ErrInvalidIdentifier), an event over Outbox.MaxEmitBytes
// (batuta.ErrPayloadTooLarge) and text fields or metadata holding NUL bytes
// or invalid UTF-8 (batuta.ErrInvalidPayload). The outbox must have been
// installed with InstallOutbox. Emit is safe for concurrent use on distinct
// transactions; on cancel of ctx the statement is canceled and tx is
// unusable, as for any pgx call.
func Emit(ctx context.Context, tx pgx.Tx, ob Outbox, ev batuta.Event) error {
	ob = ob.withDefaults()
	if err := ob.validate("Outbox."); err != nil {
		return err
	}
	meta, data, err := outboxsql.CheckEmit(outboxsql.EmitLimits{Package: "batutapg", MaxBytes: ob.MaxEmitBytes, CountMetadata: true}, ev)
	if err != nil {
		return err
	}
	var evTime *time.Time
	if !ev.Time.IsZero() {
		evTime = &ev.Time
	}
	// One statement: insert, then notify with the row id through
	// pg_notify (the channel is a parameter, never spliced into SQL), once
	// per transaction as the capture triggers do. The notification is
	// delivered only if tx commits.
	insert := `INSERT INTO ` + ob.quoted() + ` (op, event_id, source, type, subject, data, metadata, event_time)
	VALUES ('emit', NULLIF($1, ''), NULLIF($2, ''), NULLIF($3, ''), NULLIF($4, ''), $5, $6::jsonb, $7)`
	args := []any{ev.ID, ev.Source, ev.Type, ev.Subject, data, meta, evTime}
	if !ob.NoNotify {
		insert = `WITH ins AS (` + insert + ` RETURNING id)
SELECT pg_notify($8, id::text), set_config($9, '1', true) FROM ins
WHERE current_setting($9, true) IS DISTINCT FROM '1'`
		args = append(args, ob.Channel, ob.notifiedFlag())
	}
	if _, err := tx.Exec(ctx, insert, args...); err != nil {
		return fmt.Errorf("batutapg: emit into %s: %w", ob, err)
	}
	return nil
}

// outboxRow is one claimed outbox row.
type outboxRow struct {
	id         int64
	op         string // insert, update, delete or emit
	schema     *string
	table      *string
	newRow     []byte // jsonb text, nil for SQL NULL
	oldRow     []byte
	eventID    *string
	source     *string
	typ        *string
	subject    *string
	data       []byte
	metadata   []byte
	eventTime  *time.Time
	createdAt  time.Time
	deliveries int
}

func (r *outboxRow) scanTargets() []any {
	return []any{&r.id, &r.op, &r.schema, &r.table, &r.newRow, &r.oldRow, &r.eventID, &r.source,
		&r.typ, &r.subject, &r.data, &r.metadata, &r.eventTime, &r.createdAt, &r.deliveries}
}

// ChangeData is the JSON shape of Event.Data for a row captured by a
// database trigger (see InstallCapture):
//
//	{"op":"update","schema":"public","table":"orders",
//	 "new":{"id":7,"status":"paid"},"old":{"id":7,"status":"new"},
//	 "at":"2026-01-02T15:04:05.123456Z"}
//
// New is the row after the change (null for delete), Old the row before it
// (null for insert); both are the row as to_jsonb renders it, every column
// included. Read it typed with DecodeChange (or batuta.ChangeFrom), or
// decode it with batuta.EventData[batutapg.ChangeData].
type ChangeData struct {
	// Op is "insert", "update" or "delete".
	Op     string          `json:"op"`
	Schema string          `json:"schema"`
	Table  string          `json:"table"`
	New    json.RawMessage `json:"new"`
	Old    json.RawMessage `json:"old"`
	// At is when the row changed (clock_timestamp() in the trigger).
	At time.Time `json:"at"`
}

// event turns a claimed row into the Event fired for it. The ID depends
// only on the outbox and the row id, so a redelivered row is deduplicated.
func (r *outboxRow) event(ob Outbox) (batuta.Event, error) {
	row := outboxsql.Row{
		ID: strconv.FormatInt(r.id, 10), Op: r.op, Schema: deref(r.schema), Table: deref(r.table),
		New: r.newRow, Old: r.oldRow, EventID: r.eventID, Source: r.source, Type: r.typ, Subject: r.subject,
		Data: r.data, Metadata: r.metadata, EventTime: r.eventTime, CreatedAt: r.createdAt, Deliveries: r.deliveries,
	}
	return row.Event(outboxsql.Naming{
		Package: "batutapg", IDPrefix: "pg/" + displayName(ob.Schema, ob.Table) + "/", EmitSource: SourcePrefix + displayName(ob.Schema, ob.Table),
		SourcePrefix: SourcePrefix, MetaOutboxID: MetaOutboxID, MetaDeliveries: MetaDeliveries,
	})
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
