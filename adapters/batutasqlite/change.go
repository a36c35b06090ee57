package batutasqlite

import (
	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxsql"
)

// SourcePrefix starts the Event.Source of every event this adapter's
// Trigger fires for a captured row change ("sqlite/<table>") and of an
// Emit without a Source ("sqlite/<outbox table>"). See docs/events.md for
// the whole shape.
const SourcePrefix = "sqlite/"

// Metadata keys the Trigger puts on every event it fires (row changes and
// Emit alike); an emitted event's own metadata under these keys is
// overwritten.
const (
	// MetaOutboxID holds the outbox row's id (decimal).
	MetaOutboxID = "sqliteoutboxid"
	// MetaDeliveries holds how many times the row was delivered,
	// this delivery included (decimal, from 1).
	MetaDeliveries = "sqlitedeliveries"
)

// DecodeChange reads a row change captured by InstallCapture, with the new
// and old row images decoded into T (a struct with json tags per column,
// or map[string]any):
//
//	c, err := batutasqlite.DecodeChange[Order](in.Event())
//	if err != nil {
//		return nil, err // errors.Is(err, batuta.ErrWrongSource): not a SQLite row change
//	}
//
// Schema is always "main". The images are json_object of the row, which
// renders each value by its storage class, whatever the column's declared
// type; type T's fields to match:
//   - INTEGER and REAL values are JSON numbers;
//   - booleans are the integers 0 and 1 (SQLite has no boolean): use
//     Bool, or an integer;
//   - times are the TEXT (or number) the application stored: an RFC 3339
//     text decodes into time.Time, "2006-01-02 15:04:05" (SQLite's
//     CURRENT_TIMESTAMP) does not, so use a string;
//   - TEXT stays a string even when it holds JSON (decode that string
//     again), BLOB values are upper-case hex strings, NULL is null.
//
// An event that is no SQLite row change (another source, or an event
// written with Emit) gives a *batuta.WrongSourceError (errors.Is
// batuta.ErrWrongSource); an image that does not decode into T an error
// matching batuta.ErrInvalidPayload. It is batuta.ChangeFrom with the
// Source checked.
func DecodeChange[T any](ev batuta.Event) (batuta.RowChange[T], error) {
	return outboxsql.DecodeChange[T](ev, SourcePrefix, "a SQLite row change")
}

// Bool is a bool that decodes from the 0/1 integers SQLite stores for
// booleans, as well as from true/false and null (false). Any other value
// is an error.
type Bool bool

// UnmarshalJSON decodes 0, 1, true, false or null.
func (b *Bool) UnmarshalJSON(p []byte) error {
	v, err := outboxsql.DecodeBool("batutasqlite", p)
	if err == nil {
		*b = Bool(v)
	}
	return err
}
