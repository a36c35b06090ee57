package batutamysql

import (
	"encoding/hex"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/batuta-dev/batuta"
)

// maxIdentLen is MySQL's and MariaDB's identifier limit in characters for
// databases, tables, columns and triggers.
const maxIdentLen = 64

// validIdent checks that name can be used as a MySQL/MariaDB identifier once
// quoted with quoteIdent: non-empty, at most 64 characters, valid UTF-8,
// free of NUL and other control characters, within the Basic Multilingual
// Plane (the servers refuse supplementary characters in identifiers), and
// not ending in a space (the servers refuse that too). Any other character,
// backticks, quotes and semicolons included, is harmless after quoting. kind
// ("schema", "table", "column", "outbox", ...) names the identifier in the
// error, which wraps batuta.ErrInvalidIdentifier.
func validIdent(kind, name string) error {
	var reason string
	switch {
	case name == "":
		reason = "empty"
	case !utf8.ValidString(name):
		reason = "not valid UTF-8"
	case utf8.RuneCountInString(name) > maxIdentLen:
		reason = fmt.Sprintf("%d characters, over the limit of %d", utf8.RuneCountInString(name), maxIdentLen)
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		reason = "contains a NUL or control character"
	case strings.IndexFunc(name, func(r rune) bool { return r > 0xFFFF }) >= 0:
		reason = "contains a character outside the Basic Multilingual Plane"
	case strings.HasSuffix(name, " "):
		reason = "ends with a space"
	default:
		return nil
	}
	return fmt.Errorf("batutamysql: %s name %q: %s: %w", kind, name, reason, batuta.ErrInvalidIdentifier)
}

// quoteIdent quotes name as a MySQL identifier: `name`, with inner
// backticks doubled. Backtick quoting works whatever the sql_mode
// (ANSI_QUOTES only adds double quotes). Validate it with validIdent first.
func quoteIdent(name string) string {
	return "`" + strings.ReplaceAll(name, "`", "``") + "`"
}

// quoteQualified quotes schema.name.
func quoteQualified(schema, name string) string {
	return quoteIdent(schema) + "." + quoteIdent(name)
}

// quoteLiteral quotes s as a string literal for DDL (trigger bodies), where
// parameters are not accepted. Whether a backslash escapes depends on the
// NO_BACKSLASH_ESCAPES sql_mode, and how non-ASCII bytes read depends on the
// connection character set, both of which a trigger captures when it is
// created; so only printable ASCII without quote or backslash is written as
// 'text'. Anything else is written as CONVERT(X'<hex>' USING utf8mb4), which
// reads the same under every mode and character set. Everywhere else values
// are passed as parameters.
func quoteLiteral(s string) string {
	plain := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '\'' || c == '\\' {
			plain = false
			break
		}
	}
	if plain {
		return "'" + s + "'"
	}
	return "CONVERT(X'" + hex.EncodeToString([]byte(s)) + "' USING utf8mb4)"
}
