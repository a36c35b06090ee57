package batuta

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Event sources. Each trigger of the library fills Event.Source with one of
// these values (or prefixes); see docs/events.md for the whole shape of
// each trigger's event. The database adapters export their own prefixes
// (batutapg.SourcePrefix "postgres/", batutamysql.SourcePrefix "mysql/",
// batutasqlite.SourcePrefix "sqlite/").
const (
	// SourceHTTP is the Source of events started by the HTTP front door
	// (NewHTTPHandler), unless the caller sent a Ce-Source header, whose
	// value then wins (CloudEvents' HTTP binding).
	SourceHTTP = "http"
	// SourceQueue is the default Source of the queue trigger's events
	// (QueueTriggerConfig.Source overrides it, e.g. "queue/orders").
	SourceQueue = "queue"
	// SourceInvoke is the Source of the event Invoke and InvokeAsync build
	// for a payload that is not itself an Event. An Event passed to Invoke,
	// or to Submit, keeps the Source its caller gave (possibly empty).
	SourceInvoke = "invoke"
	// SourceCronPrefix starts the Source of a cron trigger's events:
	// "cron/<schedule name>". Their Type is CronEventType.
	SourceCronPrefix = "cron/"
)

// Row change operations: the Op of a RowChange, and the suffix of the
// Event.Type ("<table>.<op>") of a row change captured by a database
// adapter's outbox trigger.
const (
	ChangeInsert = "insert"
	ChangeUpdate = "update"
	ChangeDelete = "delete"
)

// CronSource returns the Event.Source of the ticks of the named schedule:
// "cron/<name>".
func CronSource(name string) string { return SourceCronPrefix + name }

// ErrWrongSource means a typed event reader (CronTickFrom, HTTPRequestFrom,
// QueueMessageFrom, QueueBatchFrom, ChangeFrom) was given an event that
// another source produced. The concrete error is a *WrongSourceError.
var ErrWrongSource = errors.New("batuta: event from another source")

// WrongSourceError reports an event that a typed reader cannot read
// because another source produced it.
type WrongSourceError struct {
	// Want names what the reader reads: "a cron tick", "an HTTP request",
	// "a queue message", "a queue batch", "a row change".
	Want string
	// ID, Source and Type are the event's.
	ID, Source, Type string
	// Reason says what gave the event away, when not just its Source.
	Reason string
}

// Error returns `batuta: event "<id>" (source "<source>", type "<type>") is
// not <want>[: <reason>]`.
func (e *WrongSourceError) Error() string {
	s := fmt.Sprintf("batuta: event %q (source %q, type %q) is not %s", e.ID, e.Source, e.Type, e.Want)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// Is makes errors.Is(err, ErrWrongSource) true.
func (e *WrongSourceError) Is(target error) bool { return target == ErrWrongSource }

func wrongSource(ev Event, want, reason string) error {
	return &WrongSourceError{Want: want, ID: ev.ID, Source: ev.Source, Type: ev.Type, Reason: reason}
}

// A CronTick is a cron trigger's event, read with CronTickFrom.
type CronTick struct {
	// Schedule is the schedule's name (CronConfig.Name).
	Schedule string
	// Tick is the scheduled time of the tick, in UTC. The run may start
	// later (jitter, overlap, catch-up); Tick stays the scheduled time.
	Tick time.Time
	// CatchUp is true for a missed tick run late by the MissedPolicy.
	CatchUp bool
	// Data is CronConfig.Data, as given.
	Data []byte
}

// CronTickFrom reads a cron trigger's event: it has Type CronEventType,
// Source "cron/<name>", ID CronEventID(name, tick), Time the tick, Data
// the CronConfig's Data and the schedule and tick time in Metadata
// (CronMetaSchedule, CronMetaTick, CronMetaCatchUp). Any other event gives
// a *WrongSourceError (errors.Is ErrWrongSource).
func CronTickFrom(ev Event) (CronTick, error) {
	if ev.Type != CronEventType {
		return CronTick{}, wrongSource(ev, "a cron tick", "type is not "+CronEventType)
	}
	t := CronTick{
		Schedule: ev.Metadata[CronMetaSchedule],
		Tick:     ev.Time.UTC(),
		CatchUp:  ev.Metadata[CronMetaCatchUp] == "true",
		Data:     ev.Data,
	}
	if t.Schedule == "" {
		t.Schedule = strings.TrimPrefix(ev.Source, SourceCronPrefix)
	}
	if s := ev.Metadata[CronMetaTick]; s != "" {
		at, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return CronTick{}, fmt.Errorf("batuta: cron tick %q: metadata %s %q: %w", ev.ID, CronMetaTick, s, ErrInvalidPayload)
		}
		t.Tick = at.UTC()
	}
	return t, nil
}

// An HTTPRequest is what the HTTP front door (NewHTTPHandler) keeps of the
// call that started a run, read with HTTPRequestFrom. Request headers other
// than those below are not kept.
type HTTPRequest struct {
	// IdempotencyKey is the Idempotency-Key header (or, failing it, Ce-Id),
	// which is also the event ID; empty if the caller sent neither (the
	// event ID is then a random one).
	IdempotencyKey string
	// Source is the Ce-Source header, or SourceHTTP without one.
	Source string
	// Type and Subject are the Ce-Type and Ce-Subject headers.
	Type, Subject string
	// Body is the request body (valid JSON, or nil for an empty body).
	Body []byte
	// BodySHA256 is the hex SHA-256 of the body, kept (as metadata
	// MetadataBodySHA256) when the request had an idempotency key.
	BodySHA256 string
}

// HTTPRequestFrom reads an event of the HTTP front door: Source
// SourceHTTP (unless the caller sent Ce-Source), ID the Idempotency-Key
// (or Ce-Id), Type and Subject the Ce-Type and Ce-Subject headers, Data
// the body and, when there was a key, the body's SHA-256 in Metadata under
// MetadataBodySHA256. An event counts as an HTTP one if its Source is
// SourceHTTP or it carries that metadata (so a call with both Ce-Source
// and Ce-Id is recognised too; one with Ce-Source and no key cannot be
// told apart from a Submit, and is refused). Any other event gives a
// *WrongSourceError (errors.Is ErrWrongSource).
func HTTPRequestFrom(ev Event) (HTTPRequest, error) {
	sum := ev.Metadata[MetadataBodySHA256]
	if ev.Source != SourceHTTP && sum == "" {
		return HTTPRequest{}, wrongSource(ev, "an HTTP request", "")
	}
	r := HTTPRequest{Source: ev.Source, Type: ev.Type, Subject: ev.Subject, Body: ev.Data, BodySHA256: sum}
	if sum != "" {
		r.IdempotencyKey = ev.ID
	}
	return r, nil
}

// A QueueMessage is the message behind a queue trigger's default event
// (DefaultQueueEvent), read with QueueMessageFrom.
type QueueMessage struct {
	// ID is the message ID (Message.ID), which is also the event ID.
	ID string
	// Source is QueueTriggerConfig.Source (default SourceQueue).
	Source string
	// Type is the message's "type" header, if any.
	Type string
	// Time is when the message was first published.
	Time time.Time
	// Body is the message body.
	Body []byte
	// Headers are the message headers (Message.Headers).
	Headers map[string]string
}

// QueueMessageFrom reads a queue trigger's default event (DefaultQueueEvent):
// ID the message ID, Source QueueTriggerConfig.Source (default
// SourceQueue), Type the "type" header, Time the publish time, Data the
// body, Metadata the headers. The delivery count is not in the event: the
// run is started once per message ID, whatever delivery started it (a
// batch's items carry theirs, see QueueBatchFrom).
//
// Because QueueTriggerConfig.Source may be anything, a queue message is
// recognised by elimination: QueueMessageFrom refuses, with a
// *WrongSourceError (errors.Is ErrWrongSource), the events the library's
// other triggers produce (a cron tick, a queue batch, an HTTP call, an
// Invoke payload, a database outbox row) and accepts any other event.
func QueueMessageFrom(ev Event) (QueueMessage, error) {
	if other := otherSource(ev); other != "" {
		return QueueMessage{}, wrongSource(ev, "a queue message", "it is "+other)
	}
	return QueueMessage{ID: ev.ID, Source: ev.Source, Type: ev.Type, Time: ev.Time, Body: ev.Data, Headers: ev.Metadata}, nil
}

// QueueBatchFrom reads the event of a batching queue trigger (see
// BatchConfig): Type BatchEventType, Data a Batch. Any other event gives a
// *WrongSourceError (errors.Is ErrWrongSource).
func QueueBatchFrom(ev Event) (Batch, error) {
	if ev.Type != BatchEventType {
		return Batch{}, wrongSource(ev, "a queue batch", "type is not "+BatchEventType)
	}
	var b Batch
	if err := json.Unmarshal(ev.Data, &b); err != nil {
		return Batch{}, fmt.Errorf("batuta: queue batch %q: %w: %w", ev.ID, ErrInvalidPayload, err)
	}
	return b, nil
}

// outboxMetadataKeys are the metadata keys the database adapters put on
// every outbox event (row changes and Emit alike).
var outboxMetadataKeys = [...]string{"pgoutboxid", "mysqloutboxid", "sqliteoutboxid"}

// otherSource names the library source ev recognisably comes from, other
// than a queue message, or "".
func otherSource(ev Event) string {
	switch {
	case ev.Type == CronEventType:
		return "a cron tick"
	case ev.Type == BatchEventType:
		return "a queue batch"
	case ev.Source == SourceHTTP || ev.Metadata[MetadataBodySHA256] != "":
		return "an HTTP request"
	case ev.Source == SourceInvoke:
		return "an Invoke payload"
	}
	for _, k := range outboxMetadataKeys {
		if _, ok := ev.Metadata[k]; ok {
			return "a database outbox row"
		}
	}
	return ""
}

// A RowChange is one row change captured by a database adapter's outbox
// trigger (batutapg, batutamysql, batutasqlite), with the row images
// decoded into T. Read it with ChangeFrom, or with the adapter's
// DecodeChange, which also checks the event came from that database.
//
// The images are the row as the database renders it to JSON, every column
// included; how columns map to JSON differs per database (see
// docs/events.md): PostgreSQL (to_jsonb) keeps booleans, numbers and
// timestamps as JSON booleans, numbers and RFC 3339 strings; MySQL and
// MariaDB (JSON_OBJECT) give booleans (TINYINT(1)) as 0/1, DECIMAL as
// numbers and DATETIME as "2006-01-02 15:04:05.000000" strings; SQLite
// (json_object) gives booleans as 0/1 and times as the text stored.
type RowChange[T any] struct {
	// Op is ChangeInsert, ChangeUpdate or ChangeDelete.
	Op string
	// Schema and Table name the changed table (SQLite's schema is "main").
	Schema, Table string
	// New is the row after the change (nil for a delete), Old the row
	// before it (nil for an insert).
	New, Old *T
	// At is when the row changed (in UTC).
	At time.Time
}

// changeJSON is the JSON shape of a captured row change's Event.Data,
// the same in every database adapter.
type changeJSON struct {
	Op     string          `json:"op"`
	Schema string          `json:"schema"`
	Table  string          `json:"table"`
	New    json.RawMessage `json:"new"`
	Old    json.RawMessage `json:"old"`
	At     time.Time       `json:"at"`
}

// ChangeFrom reads a row change captured by a database adapter's outbox
// trigger: Type "<table>.<op>", Data
// {"op","schema","table","new","old","at"}, with the new and old row
// images decoded into T (unknown columns are ignored, as
// encoding/json does). An event that is no captured row change (a cron
// tick, an HTTP call, an event written with an adapter's Emit, ...) gives
// a *WrongSourceError (errors.Is ErrWrongSource); an image that does not
// decode into T gives an error matching ErrInvalidPayload.
func ChangeFrom[T any](ev Event) (RowChange[T], error) {
	var c changeJSON
	if d := bytes.TrimSpace(ev.Data); len(d) == 0 || d[0] != '{' || json.Unmarshal(d, &c) != nil {
		return RowChange[T]{}, wrongSource(ev, "a row change", "data is not a captured row")
	}
	switch {
	case c.Op != ChangeInsert && c.Op != ChangeUpdate && c.Op != ChangeDelete:
		return RowChange[T]{}, wrongSource(ev, "a row change", fmt.Sprintf("op %q is not insert, update or delete", c.Op))
	case c.Table == "" || ev.Type != c.Table+"."+c.Op:
		return RowChange[T]{}, wrongSource(ev, "a row change", "type is not <table>.<op>")
	}
	rc := RowChange[T]{Op: c.Op, Schema: c.Schema, Table: c.Table, At: c.At.UTC()}
	var err error
	if rc.New, err = decodeImage[T](c.New); err != nil {
		return RowChange[T]{}, fmt.Errorf("batuta: row change %q: new row into %T: %w: %w", ev.ID, *new(T), ErrInvalidPayload, err)
	}
	if rc.Old, err = decodeImage[T](c.Old); err != nil {
		return RowChange[T]{}, fmt.Errorf("batuta: row change %q: old row into %T: %w: %w", ev.ID, *new(T), ErrInvalidPayload, err)
	}
	return rc, nil
}

func decodeImage[T any](raw json.RawMessage) (*T, error) {
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	v := new(T)
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, err
	}
	return v, nil
}
