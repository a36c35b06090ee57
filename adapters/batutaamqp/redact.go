package batutaamqp

import (
	"net/url"
	"regexp"
	"strings"
)

// userinfoPassword matches the password part of "scheme://user:password@"
// in text that net/url could not parse. It is greedy up to the last '@'
// before white space: redacting too much beats leaking the rest of a
// password that contains an unescaped '@'.
var userinfoPassword = regexp.MustCompile(`(?i)([a-z][a-z0-9+.-]*://[^:/@\s]*:)\S*@`)

// loosePassword matches "user:password@" at the start of text that is no
// URL at all (a scheme-less DSN).
var loosePassword = regexp.MustCompile(`^([^:/@\s]*:)\S*@`)

// redactURL returns rawURL with its password replaced by "xxxxx".
func redactURL(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil && (u.Scheme == "amqp" || u.Scheme == "amqps") {
		if _, ok := u.User.Password(); ok {
			return u.Redacted()
		}
		return rawURL
	}
	s := userinfoPassword.ReplaceAllString(rawURL, "${1}xxxxx@")
	if s == rawURL {
		s = loosePassword.ReplaceAllString(rawURL, "${1}xxxxx@")
	}
	return s
}

// redactText removes rawURL's password from text (an error message that may
// quote the URL, escaped or not).
func redactText(text, rawURL string) string {
	text = strings.ReplaceAll(text, rawURL, redactURL(rawURL))
	if u, err := url.Parse(rawURL); err == nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			text = strings.ReplaceAll(text, pw, "xxxxx")
			text = strings.ReplaceAll(text, url.QueryEscape(pw), "xxxxx")
			text = strings.ReplaceAll(text, url.PathEscape(pw), "xxxxx")
		}
	}
	return userinfoPassword.ReplaceAllString(text, "${1}xxxxx@")
}
