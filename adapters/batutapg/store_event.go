package batutapg

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/batuta-dev/batuta"
)

// storedEvent is the JSON form of a run's Event in runs.event (the ID has
// its own column). Data that is valid JSON is embedded verbatim, so it reads
// naturally in SQL and comes back byte for byte (the column is json, not
// jsonb, which would reformat it); other data is kept as base64.
type storedEvent struct {
	Source   string            `json:"source,omitempty"`
	Type     string            `json:"type,omitempty"`
	Subject  string            `json:"subject,omitempty"`
	Time     time.Time         `json:"time"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Data     json.RawMessage   `json:"data,omitempty"`
	DataB64  []byte            `json:"data_base64,omitempty"`
}

// encodeEvent returns the runs.event text for ev.
func encodeEvent(ev *batuta.Event) ([]byte, error) {
	se := storedEvent{Source: ev.Source, Type: ev.Type, Subject: ev.Subject, Time: ev.Time, Metadata: ev.Metadata}
	verbatim := len(ev.Data) > 0 && utf8.Valid(ev.Data) && json.Valid(ev.Data)
	if !verbatim && len(ev.Data) > 0 {
		se.DataB64 = ev.Data
	}
	b, err := json.Marshal(&se)
	if err != nil {
		return nil, fmt.Errorf("batutapg: encode event: %w", err)
	}
	if verbatim {
		// json.Marshal would compact a RawMessage; splice it in as is.
		out := make([]byte, 0, len(b)+len(ev.Data)+8)
		out = append(out, b[:len(b)-1]...)
		out = append(out, `,"data":`...)
		out = append(out, ev.Data...)
		out = append(out, '}')
		b = out
	}
	return b, nil
}

// decodeEvent rebuilds an Event from its ID and runs.event text.
func decodeEvent(id string, raw []byte) (batuta.Event, error) {
	var se storedEvent
	if err := json.Unmarshal(raw, &se); err != nil {
		return batuta.Event{}, fmt.Errorf("batutapg: decode event %q: %w", id, err)
	}
	ev := batuta.Event{ID: id, Source: se.Source, Type: se.Type, Subject: se.Subject, Time: se.Time, Metadata: se.Metadata}
	switch {
	case len(se.Data) > 0:
		ev.Data = []byte(se.Data)
	case len(se.DataB64) > 0:
		ev.Data = se.DataB64
	}
	return ev, nil
}

// cleanText makes s storable in a text column (no NUL, valid UTF-8). Error
// messages come from arbitrary code; they are kept readable, not refused.
func cleanText(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	}
	return s
}
