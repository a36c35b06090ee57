// Package redact masks passwords of connection URLs in strings and
// errors, for the broker adapters (batutaredis, batutanats, batutaamqp):
// no secret may reach an error or a log.
package redact

import (
	"net/url"
	"strings"
)

// URL returns rawURL with its password replaced by "xxxxx". A URL that
// does not parse has everything between "://" and the last "@" before the
// host masked (everything before the last "@" if it has no scheme), so no
// secret reaches an error or a log either way.
func URL(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil && u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		return u.String()
	} else if err == nil {
		return rawURL
	}
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		rest, scheme = rawURL, ""
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		rest = "xxxxx" + rest[at:]
	}
	if scheme == "" {
		return rest
	}
	return scheme + "://" + rest
}

// redactedError carries an error whose text may contain a secret: Error
// shows the text with every occurrence of the secret masked, Unwrap the
// original, so errors.Is and errors.As still work.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// NewError returns an error whose text is msg (already redacted by the
// caller) and which unwraps to err, so errors.Is and errors.As see err
// while its own, possibly secret-bearing, text is never shown.
func NewError(msg string, err error) error {
	return &redactedError{msg: msg, err: err}
}

// Err masks the password of rawURL (and rawURL itself) in err's text; the
// result unwraps to err. Err(nil, ...) is nil.
func Err(err error, rawURL string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if red := URL(rawURL); red != rawURL {
		msg = strings.ReplaceAll(msg, rawURL, red)
	}
	if u, perr := url.Parse(rawURL); perr == nil && u.User != nil {
		if pw, has := u.User.Password(); has && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
			if esc := url.PathEscape(pw); esc != pw {
				msg = strings.ReplaceAll(msg, esc, "xxxxx")
			}
		}
	} else if perr != nil {
		// Unparsable: mask the userinfo part wherever it appears.
		if _, rest, ok := strings.Cut(rawURL, "://"); ok {
			if at := strings.LastIndex(rest, "@"); at > 0 {
				msg = strings.ReplaceAll(msg, rest[:at], "xxxxx")
			}
		}
	}
	return &redactedError{msg: msg, err: err}
}
