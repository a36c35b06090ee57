package outboxsql

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/batuta-dev/batuta"
)

// Row is a claimed outbox row, read by the adapter from its columns.
type Row struct {
	// ID is the row id in decimal.
	ID string
	// Op is insert, update or delete for a captured row change, emit for
	// a row written by Emit.
	Op string
	// Schema and Table name the changed table of a row change.
	Schema, Table string
	// New and Old are the row images (JSON), nil for SQL NULL.
	New, Old []byte
	// EventID, Source, Type and Subject are an emitted event's, nil for
	// SQL NULL.
	EventID, Source, Type, Subject *string
	// Data is an emitted event's data.
	Data []byte
	// Metadata is an emitted event's metadata as a JSON object, nil or
	// empty if none.
	Metadata []byte
	// EventTime is an emitted event's time, nil for SQL NULL.
	EventTime *time.Time
	// CreatedAt is when the row was written.
	CreatedAt time.Time
	// Deliveries counts the deliveries of the row, this one included.
	Deliveries int
}

// Naming is how an adapter names the events of one outbox.
type Naming struct {
	// Package prefixes errors, e.g. "batutamysql".
	Package string
	// IDPrefix precedes the row id in the ID of an event that has none of
	// its own, e.g. "mysql/shop.batuta_outbox/".
	IDPrefix string
	// EmitSource is the Source of an emitted event that has none of its
	// own, e.g. "mysql/shop.batuta_outbox".
	EmitSource string
	// SourcePrefix precedes the changed table ("schema.table", or "table"
	// when Schema is empty or DropSchema is set) in the Source of a row change.
	SourcePrefix string
	// DropSchema leaves the schema out of a row change's Source (SQLite,
	// where it is always "main").
	DropSchema bool
	// MetaOutboxID and MetaDeliveries are the adapter's metadata keys.
	MetaOutboxID, MetaDeliveries string
}

// changeData is the JSON shape of a row change's Event.Data, documented by
// each adapter's ChangeData.
type changeData struct {
	Op     string          `json:"op"`
	Schema string          `json:"schema"`
	Table  string          `json:"table"`
	New    json.RawMessage `json:"new"`
	Old    json.RawMessage `json:"old"`
	At     time.Time       `json:"at"`
}

// Event turns a claimed row into the Event fired for it. The ID depends
// only on the outbox and the row id, so a redelivered row is deduplicated.
// An error (matching batuta.ErrInvalidPayload) means the row can never
// become a valid event: the consumer marks it dead.
func (r Row) Event(n Naming) (batuta.Event, error) {
	ev := batuta.Event{
		ID:       n.IDPrefix + r.ID,
		Time:     r.CreatedAt,
		Metadata: map[string]string{n.MetaOutboxID: r.ID, n.MetaDeliveries: fmt.Sprint(r.Deliveries)},
	}
	if r.Op == "emit" {
		if r.EventID != nil {
			ev.ID = *r.EventID
		}
		ev.Source = n.EmitSource
		if r.Source != nil {
			ev.Source = *r.Source
		}
		ev.Type, ev.Subject = deref(r.Type), deref(r.Subject)
		if r.EventTime != nil {
			ev.Time = *r.EventTime
		}
		ev.Data = r.Data
		if len(r.Metadata) > 0 {
			var md map[string]string
			if err := json.Unmarshal(r.Metadata, &md); err != nil {
				return ev, fmt.Errorf("%s: outbox row %s: metadata: %w: %w", n.Package, r.ID, err, batuta.ErrInvalidPayload)
			}
			for k, v := range md {
				if _, reserved := ev.Metadata[k]; !reserved {
					ev.Metadata[k] = v
				}
			}
		}
		return ev, nil
	}
	ev.Source = n.SourcePrefix + r.Table
	if r.Schema != "" && !n.DropSchema {
		ev.Source = n.SourcePrefix + r.Schema + "." + r.Table
	}
	ev.Type = r.Table + "." + r.Op
	data, err := json.Marshal(changeData{
		Op: r.Op, Schema: r.Schema, Table: r.Table,
		New: rawOrNull(r.New), Old: rawOrNull(r.Old), At: r.CreatedAt.UTC(),
	})
	if err != nil {
		return ev, fmt.Errorf("%s: outbox row %s: row image: %w: %w", n.Package, r.ID, err, batuta.ErrInvalidPayload)
	}
	ev.Data = data
	return ev, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func rawOrNull(b []byte) json.RawMessage {
	if b == nil {
		return json.RawMessage("null")
	}
	return json.RawMessage(b)
}

// NullString returns s, or nil (SQL NULL) when s is empty.
func NullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// StringPtr returns a pointer to s.String, or nil when s is NULL.
func StringPtr(valid bool, s string) *string {
	if !valid {
		return nil
	}
	return &s
}

// EmitLimits are what an adapter's Emit accepts.
type EmitLimits struct {
	// Package prefixes errors, e.g. "batutamysql".
	Package string
	// MaxBytes caps Event.Data (Outbox.MaxEmitBytes).
	MaxBytes int
	// CountMetadata counts the metadata's keys and values against
	// MaxBytes too.
	CountMetadata bool
	// MaxField, if positive, caps Event.ID, Source, Type and Subject.
	MaxField int
}

// CheckEmit refuses, before any write, an event Emit cannot store: Data
// over l.MaxBytes (batuta.ErrPayloadTooLarge), ID, Source, Type or Subject
// over l.MaxField bytes, and text fields or metadata holding NUL bytes or
// invalid UTF-8 (batuta.ErrInvalidPayload). It returns the metadata as
// JSON (nil if none) and the data (never nil, so stored as empty, not NULL).
func CheckEmit(l EmitLimits, ev batuta.Event) (meta, data []byte, err error) {
	size := len(ev.Data)
	if l.CountMetadata {
		for k, v := range ev.Metadata {
			size += len(k) + len(v)
		}
	}
	if size > l.MaxBytes {
		return nil, nil, fmt.Errorf("%s: emit: %w", l.Package,
			&batuta.PayloadTooLargeError{What: "event data", Size: size, Limit: l.MaxBytes})
	}
	for _, f := range []struct{ name, v string }{
		{"ID", ev.ID}, {"Source", ev.Source}, {"Type", ev.Type}, {"Subject", ev.Subject},
	} {
		if l.MaxField > 0 && len(f.v) > l.MaxField {
			return nil, nil, fmt.Errorf("%s: emit: event %s is %d bytes, over the limit of %d: %w",
				l.Package, f.name, len(f.v), l.MaxField, batuta.ErrInvalidPayload)
		}
		if err := ValidText(f.v); err != nil {
			return nil, nil, fmt.Errorf("%s: emit: event %s: %w: %w", l.Package, f.name, err, batuta.ErrInvalidPayload)
		}
	}
	if len(ev.Metadata) > 0 {
		for k, v := range ev.Metadata {
			if ValidText(k) != nil || ValidText(v) != nil {
				return nil, nil, fmt.Errorf("%s: emit: event metadata %q: NUL byte or invalid UTF-8: %w", l.Package, k, batuta.ErrInvalidPayload)
			}
		}
		if meta, err = json.Marshal(ev.Metadata); err != nil {
			return nil, nil, fmt.Errorf("%s: emit: event metadata: %w", l.Package, err)
		}
	}
	data = ev.Data
	if data == nil {
		data = []byte{}
	}
	return meta, data, nil
}

// ValidText reports why s cannot be stored as text: invalid UTF-8 or a NUL
// byte.
func ValidText(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("invalid UTF-8")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return errors.New("NUL byte")
	}
	return nil
}
