package batutapg

import (
	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxsql"
)

// SourcePrefix starts the Event.Source of every event this adapter's
// Trigger fires for a captured row change ("postgres/<schema>.<table>")
// and of an Emit without a Source ("postgres/<outbox schema>.<outbox
// table>"). See docs/events.md for the whole shape.
const SourcePrefix = "postgres/"

// Metadata keys the Trigger puts on every event it fires (row changes and
// Emit alike); an emitted event's own metadata under these keys is
// overwritten.
const (
	// MetaOutboxID holds the outbox row's id (decimal).
	MetaOutboxID = "pgoutboxid"
	// MetaDeliveries holds how many times the row was delivered,
	// this delivery included (decimal, from 1).
	MetaDeliveries = "pgdeliveries"
)

// DecodeChange reads a row change captured by InstallCapture, with the new
// and old row images decoded into T (a struct with json tags per column,
// or map[string]any):
//
//	func(ctx context.Context, in *batuta.Input) (any, error) {
//		c, err := batutapg.DecodeChange[Order](in.Event())
//		if err != nil {
//			return nil, err // errors.Is(err, batuta.ErrWrongSource): not a PostgreSQL row change
//		}
//		if c.Op == batuta.ChangeUpdate && c.Old.Status != c.New.Status { ... }
//	}
//
// The images are to_jsonb of the row: numbers (numeric included) as JSON
// numbers, booleans as JSON booleans, timestamptz as RFC 3339 strings (so
// time.Time fields decode them), timestamp without time zone as RFC 3339
// without an offset (decode it into a string), bytea as the hex text
// `\x...` (a string), json and jsonb as nested JSON.
//
// An event that is no PostgreSQL row change (another source, or an event
// written with Emit) gives a *batuta.WrongSourceError (errors.Is
// batuta.ErrWrongSource); an image that does not decode into T an error
// matching batuta.ErrInvalidPayload. It is batuta.ChangeFrom with the
// Source checked.
func DecodeChange[T any](ev batuta.Event) (batuta.RowChange[T], error) {
	return outboxsql.DecodeChange[T](ev, SourcePrefix, "a PostgreSQL row change")
}
