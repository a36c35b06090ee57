package batutaredis

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
)

// Field names of a stream entry (see the package documentation).
const (
	fieldID       = "id"
	fieldBody     = "body"
	fieldTime     = "time"
	fieldHeaders  = "headers"
	fieldAttempts = "attempts"
	fieldReason   = "dead_reason"
)

// encodeMessage returns the XADD field/value list of msg. attempts > 0 is
// written as the "attempts" field.
func encodeMessage(msg batuta.Message, attempts int) ([]any, error) {
	vals := make([]any, 0, 10)
	vals = append(vals,
		fieldID, msg.ID,
		fieldBody, msg.Body,
		fieldTime, msg.Time.UTC().Format(time.RFC3339Nano),
	)
	if len(msg.Headers) > 0 {
		h, err := json.Marshal(msg.Headers)
		if err != nil {
			return nil, err
		}
		vals = append(vals, fieldHeaders, h)
	}
	if attempts > 0 {
		vals = append(vals, fieldAttempts, strconv.Itoa(attempts))
	}
	return vals, nil
}

// decodeEntry turns a stream entry into a Message and the attempts spent
// by its earlier copies. It never fails: a foreign entry becomes a message
// whose unknown fields are headers (so a "type" field is the queue
// trigger's event type) and whose Time is the entry ID's timestamp unless
// a "time" field holds an RFC 3339 time.
//
// The message ID (the queue trigger's event ID, which the orchestrator
// runs once) is the "id" field; an entry without one, or with an empty
// one, gets its entry ID. That ID is stable: a redelivery of the pending
// entry keeps the entry, and the copies the adapter re-adds on Nack, on
// Close and for dead letters carry it in their "id" field. A producer that
// may send one message twice (a retry after a lost reply) sets "id" so
// that both copies are one event.
func decodeEntry(entryID string, values map[string]any) (batuta.Message, int) {
	var msg batuta.Message
	attempts := 0
	str := func(v any) string {
		switch v := v.(type) {
		case string:
			return v
		case []byte:
			return string(v)
		case nil:
			return ""
		default:
			return ""
		}
	}
	for k, v := range values {
		s := str(v)
		switch k {
		case fieldID:
			msg.ID = s
		case fieldBody:
			if s != "" {
				msg.Body = []byte(s)
			}
		case fieldTime:
			if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
				msg.Time = t
			}
		case fieldHeaders:
			var h map[string]string
			if json.Unmarshal([]byte(s), &h) == nil {
				for hk, hv := range h {
					setHeader(&msg, hk, hv)
				}
			} else {
				setHeader(&msg, k, s)
			}
		case fieldAttempts:
			if n, err := strconv.Atoi(s); err == nil && n > 0 {
				attempts = n
			}
		default:
			setHeader(&msg, k, s)
		}
	}
	if msg.ID == "" {
		msg.ID = entryID
	}
	if msg.Time.IsZero() {
		msg.Time = entryTime(entryID)
	}
	return msg, attempts
}

func setHeader(msg *batuta.Message, k, v string) {
	if msg.Headers == nil {
		msg.Headers = make(map[string]string)
	}
	msg.Headers[k] = v
}

// entryTime returns the millisecond timestamp of a stream entry ID
// ("<ms>-<seq>"), or the zero time.
func entryTime(entryID string) time.Time {
	ms, _, _ := strings.Cut(entryID, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}
