package batutasqlite

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/batuta-dev/batuta"
)

// maxIdentLen caps identifiers at 128 bytes. SQLite itself has no identifier
// limit; the cap keeps names readable in logs and event IDs and bounds the
// size of generated DDL.
const maxIdentLen = 128

// validIdent checks that name can be used as an SQLite identifier once quoted
// with quoteIdent: non-empty, at most 128 bytes, valid UTF-8, free of NUL and
// other control characters, and not in the "sqlite_" namespace SQLite
// reserves for its own objects. Any other character, quotes and semicolons
// included, is harmless after quoting. kind ("table", "column", "outbox", ...)
// names the identifier in the error, which wraps batuta.ErrInvalidIdentifier.
//
// The Store in this package reuses it for its table prefix.
func validIdent(kind, name string) error {
	var reason string
	switch {
	case name == "":
		reason = "empty"
	case len(name) > maxIdentLen:
		reason = fmt.Sprintf("%d bytes, over the limit of %d", len(name), maxIdentLen)
	case !utf8.ValidString(name):
		reason = "not valid UTF-8"
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		reason = "contains a NUL or control character"
	case len(name) >= 7 && strings.EqualFold(name[:7], "sqlite_"):
		reason = `the "sqlite_" prefix is reserved by SQLite`
	default:
		return nil
	}
	return fmt.Errorf("batutasqlite: %s name %q: %s: %w", kind, name, reason, batuta.ErrInvalidIdentifier)
}

// quoteIdent quotes name as an SQLite identifier: "name", with inner double
// quotes doubled. Validate it with validIdent first.
func quoteIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// quoteLiteral quotes s as an SQLite string literal: 'text', with inner
// single quotes doubled (SQLite has no backslash escapes). s must not
// contain NUL (validIdent refuses it). Only for DDL such as trigger bodies,
// where parameters are not accepted; everywhere else values are passed as
// parameters.
func quoteLiteral(s string) string {
	return `'` + strings.ReplaceAll(s, `'`, `''`) + `'`
}
