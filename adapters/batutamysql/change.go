package batutamysql

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxsql"
)

// SourcePrefix starts the Event.Source of every event this adapter's
// Trigger fires for a captured row change ("mysql/<schema>.<table>") and
// of an Emit without a Source ("mysql/<outbox schema>.<outbox table>").
// See docs/events.md for the whole shape.
const SourcePrefix = "mysql/"

// Metadata keys the Trigger puts on every event it fires (row changes and
// Emit alike); an emitted event's own metadata under these keys is
// overwritten.
const (
	// MetaOutboxID holds the outbox row's id (decimal).
	MetaOutboxID = "mysqloutboxid"
	// MetaDeliveries holds how many times the row was delivered,
	// this delivery included (decimal, from 1).
	MetaDeliveries = "mysqldeliveries"
)

// DecodeChange reads a row change captured by InstallCapture, with the new
// and old row images decoded into T (a struct with json tags per column,
// or map[string]any):
//
//	c, err := batutamysql.DecodeChange[Order](in.Event())
//	if err != nil {
//		return nil, err // errors.Is(err, batuta.ErrWrongSource): not a MySQL row change
//	}
//
// The images are JSON_OBJECT of the row's columns, which MySQL and MariaDB
// render their own way; type T's fields to match:
//   - integers, DECIMAL, FLOAT and DOUBLE are JSON numbers (float64, an
//     integer type or json.Number; DECIMAL keeps its scale, "12.50");
//   - BOOLEAN (TINYINT(1)) is the number 0 or 1: use Bool, or an integer;
//   - DATETIME and TIMESTAMP are "2006-01-02 15:04:05.000000" strings,
//     not RFC 3339: use Time (read as UTC), or a string; DATE is
//     "2006-01-02";
//   - BIT is a number, BINARY, VARBINARY and BLOBs upper-case hex
//     strings ("00FF10"), spatial types WKT strings ("POINT(1 2)"), JSON
//     columns nested JSON.
//
// An event that is no MySQL row change (another source, or an event
// written with Emit) gives a *batuta.WrongSourceError (errors.Is
// batuta.ErrWrongSource); an image that does not decode into T an error
// matching batuta.ErrInvalidPayload. It is batuta.ChangeFrom with the
// Source checked.
func DecodeChange[T any](ev batuta.Event) (batuta.RowChange[T], error) {
	return outboxsql.DecodeChange[T](ev, SourcePrefix, "a MySQL row change")
}

// Bool is a bool that decodes from the 0/1 numbers MySQL's JSON_OBJECT
// gives for BOOLEAN (TINYINT(1)) columns, as well as from true/false and
// null (false). Any other number is an error.
type Bool bool

// UnmarshalJSON decodes 0, 1, true, false or null.
func (b *Bool) UnmarshalJSON(p []byte) error {
	v, err := outboxsql.DecodeBool("batutamysql", p)
	if err == nil {
		*b = Bool(v)
	}
	return err
}

// Time is a time.Time that decodes from the "2006-01-02 15:04:05.999999"
// strings MySQL's JSON_OBJECT gives for DATETIME and TIMESTAMP columns
// (read as UTC), as well as from RFC 3339 strings; null leaves it zero.
type Time struct{ time.Time }

// UnmarshalJSON decodes a MySQL DATETIME string, an RFC 3339 one or null.
func (t *Time) UnmarshalJSON(p []byte) error {
	if string(bytes.TrimSpace(p)) == "null" {
		*t = Time{}
		return nil
	}
	var s string
	if err := json.Unmarshal(p, &s); err != nil {
		return fmt.Errorf("batutamysql: %s is not a time string: %w", p, err)
	}
	at, err := parseMySQLTime(s)
	if err != nil {
		if at, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return fmt.Errorf("batutamysql: %q is neither a DATETIME (2006-01-02 15:04:05.999999) nor an RFC 3339 time", s)
		}
	}
	t.Time = at
	return nil
}
