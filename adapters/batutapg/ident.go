package batutapg

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
)

// maxIdentLen is PostgreSQL's identifier limit (NAMEDATALEN-1). Longer names
// are silently truncated by the server, which could make two distinct names
// collide, so they are refused instead.
const maxIdentLen = 63

// validIdent checks that name can be used as a PostgreSQL identifier once
// quoted with quoteIdent: non-empty, at most 63 bytes, valid UTF-8, and free
// of NUL and other control characters. Any other character, quotes and
// semicolons included, is harmless after quoting. kind ("schema", "table",
// "column", "channel", ...) names the identifier in the error, which wraps
// batuta.ErrInvalidIdentifier.
func validIdent(kind, name string) error {
	var reason string
	switch {
	case name == "":
		reason = "empty"
	case len(name) > maxIdentLen:
		reason = fmt.Sprintf("%d bytes, over PostgreSQL's limit of %d", len(name), maxIdentLen)
	case !utf8.ValidString(name):
		reason = "not valid UTF-8"
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		reason = "contains a NUL or control character"
	default:
		return nil
	}
	return fmt.Errorf("batutapg: %s name %q: %s: %w", kind, name, reason, batuta.ErrInvalidIdentifier)
}

// quoteIdent quotes name as a PostgreSQL identifier ("name", inner quotes
// doubled) with pgx's quoting. Validate it with validIdent first.
func quoteIdent(name string) string { return pgx.Identifier{name}.Sanitize() }

// quoteQualified quotes schema.name as a qualified identifier.
func quoteQualified(schema, name string) string { return pgx.Identifier{schema, name}.Sanitize() }

// displayName returns schema.name unquoted, for event IDs, sources, logs and
// error messages (never for SQL).
func displayName(schema, name string) string { return schema + "." + name }

// quoteLiteral quotes s as an SQL string literal that reads the same whatever
// standard_conforming_strings is set to: quotes are doubled and, if s holds
// a backslash, the E'...' form is used with backslashes doubled. s must not
// contain NUL (validIdent refuses it). Only for DDL, where parameters are
// not accepted; everywhere else values are passed as parameters.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, `'`, `''`)
	if strings.Contains(s, `\`) {
		return `E'` + strings.ReplaceAll(s, `\`, `\\`) + `'`
	}
	return `'` + s + `'`
}
