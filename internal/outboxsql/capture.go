package outboxsql

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/batuta-dev/batuta"
)

// AllOps are the operations a capture can capture, in canonical order.
var AllOps = []string{"insert", "update", "delete"}

// CheckCapture checks the database-independent fields of an adapter's
// Capture: ops (each insert, update or delete), columns (identifiers, and
// only with an update op) and when (no NUL byte or invalid UTF-8).
// validIdent is the adapter's identifier check.
func CheckCapture[Op ~string](pkg string, ops []Op, columns []string, when string, validIdent func(kind, name string) error) error {
	for _, op := range ops {
		if !slices.Contains(AllOps, string(op)) {
			return &batuta.ConfigError{Field: "Capture.Ops", Reason: fmt.Sprintf("unknown operation %q (want insert, update or delete)", op)}
		}
	}
	for _, col := range columns {
		if err := validIdent("column", col); err != nil {
			return fmt.Errorf("%s: Capture.Columns: %w", pkg, err)
		}
	}
	if len(columns) > 0 && !slices.Contains(ops, Op("update")) {
		return &batuta.ConfigError{Field: "Capture.Columns", Reason: "only applies to updates, and Ops has no update"}
	}
	if strings.IndexByte(when, 0) >= 0 || !utf8.ValidString(when) {
		return &batuta.ConfigError{Field: "Capture.When", Reason: "contains a NUL byte or invalid UTF-8"}
	}
	return nil
}

// CaptureDefaults returns ops, or every operation when empty, and when
// trimmed.
func CaptureDefaults[Op ~string](ops []Op, when string) ([]Op, string) {
	if len(ops) == 0 {
		for _, op := range AllOps {
			ops = append(ops, Op(op))
		}
	}
	return ops, strings.TrimSpace(when)
}

// CanonicalOps returns ops without duplicates, in the canonical order.
func CanonicalOps[Op ~string](ops []Op) []Op {
	var out []Op
	for _, op := range AllOps {
		if slices.Contains(ops, Op(op)) {
			out = append(out, Op(op))
		}
	}
	return out
}

// Column is one column of a captured table as a capture records it
// (columns_json).
type Column struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// ColumnsJSON is the recorded form of cols.
func ColumnsJSON(cols []Column) string {
	b, _ := json.Marshal(cols)
	return string(b)
}

// ColumnDrift describes how the columns a trigger was generated from
// (installedJSON, see ColumnsJSON) differ from the table's present ones
// ("" if they do not).
func ColumnDrift(installedJSON string, now []Column) string {
	var was []Column
	if err := json.Unmarshal([]byte(installedJSON), &was); err != nil {
		return "the recorded column list is unreadable"
	}
	wasType := map[string]string{}
	for _, c := range was {
		wasType[c.Name] = c.Type
	}
	nowType := map[string]string{}
	var added, changed, removed []string
	for _, c := range now {
		nowType[c.Name] = c.Type
		t, ok := wasType[c.Name]
		switch {
		case !ok:
			added = append(added, c.Name)
		case t != c.Type:
			changed = append(changed, fmt.Sprintf("%s (%s -> %s)", c.Name, t, c.Type))
		}
	}
	for _, c := range was {
		if _, ok := nowType[c.Name]; !ok {
			removed = append(removed, c.Name)
		}
	}
	var parts []string
	if len(added) > 0 {
		parts = append(parts, "column added: "+strings.Join(added, ", "))
	}
	if len(removed) > 0 {
		parts = append(parts, "column dropped: "+strings.Join(removed, ", "))
	}
	if len(changed) > 0 {
		parts = append(parts, "column type changed: "+strings.Join(changed, ", "))
	}
	if len(parts) == 0 && ColumnsJSON(now) != installedJSON {
		parts = append(parts, "columns reordered")
	}
	return strings.Join(parts, "; ")
}

// CheckIdent checks that name can be used as an identifier once quoted:
// non-empty, at most maxLen bytes (limit words the limit in the error,
// e.g. "the limit" or "PostgreSQL's limit"), valid UTF-8, free of NUL and
// other control characters, and, when reservedPrefix is set, not starting
// with it (case-insensitively). kind ("table", "column", ...) names the
// identifier in the error, which wraps batuta.ErrInvalidIdentifier.
func CheckIdent(pkg, kind, name string, maxLen int, limit, reservedPrefix string) error {
	var reason string
	switch {
	case name == "":
		reason = "empty"
	case len(name) > maxLen:
		reason = fmt.Sprintf("%d bytes, over %s of %d", len(name), limit, maxLen)
	case !utf8.ValidString(name):
		reason = "not valid UTF-8"
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		reason = "contains a NUL or control character"
	case reservedPrefix != "" && len(name) >= len(reservedPrefix) && strings.EqualFold(name[:len(reservedPrefix)], reservedPrefix):
		reason = fmt.Sprintf("the %q prefix is reserved", reservedPrefix)
	default:
		return nil
	}
	return fmt.Errorf("%s: %s name %q: %s: %w", pkg, kind, name, reason, batuta.ErrInvalidIdentifier)
}

// DecodeChange is an adapter's DecodeChange: batuta.ChangeFrom with the
// Source checked against prefix; want words the expected source in the
// error ("a MySQL row change").
func DecodeChange[T any](ev batuta.Event, prefix, want string) (batuta.RowChange[T], error) {
	if !strings.HasPrefix(ev.Source, prefix) {
		return batuta.RowChange[T]{}, &batuta.WrongSourceError{Want: want, ID: ev.ID, Source: ev.Source, Type: ev.Type,
			Reason: "source does not start with " + prefix}
	}
	return batuta.ChangeFrom[T](ev)
}

// DecodeBool decodes 0, 1, true, false or null (false): an adapter's
// Bool.UnmarshalJSON.
func DecodeBool(pkg string, p []byte) (bool, error) {
	switch string(bytes.TrimSpace(p)) {
	case "1", "true":
		return true, nil
	case "0", "false", "null":
		return false, nil
	}
	return false, fmt.Errorf("%s: %s is not a boolean (0, 1, true or false)", pkg, p)
}
