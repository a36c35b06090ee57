package redact

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestURL(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"redis://user:secret@host:6379/0", "redis://user:xxxxx@host:6379/0"},
		{"nats://host:4222", "nats://host:4222"},
		{"redis://user@host", "redis://user@host"},
		{"redis://u:p%zz@host/", "redis://xxxxx@host/"},         // unparsable: whole userinfo masked
		{":pw@host", "xxxxx@host"},                              // unparsable, no scheme
		{"not a url at all", "not a url at all"},                // nothing to hide
		{"nats://a:b@h1,c:d@h2:4222", "nats://a:xxxxx@h2:4222"}, // several hosts
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, URL(tc.in), tc.in)
	}
}

func TestErr(t *testing.T) {
	t.Parallel()
	require.NoError(t, Err(nil, "redis://u:pw@h"))

	base := errors.New("boom")
	tests := []struct{ name, rawURL, text, want string }{
		{"url quoted", "redis://u:pw@h", "dial redis://u:pw@h", "dial redis://u:xxxxx@h: boom"},
		{"password alone", "redis://u:s3cr3t@h", "auth s3cr3t rejected", "auth xxxxx rejected: boom"},
		{"escaped password", "redis://u:a%2Fb@h", "auth a%2Fb rejected", "auth xxxxx rejected: boom"},
		{"unparsable", "redis://u:p%zz@h", "parse u:p%zz", "parse xxxxx: boom"},
	}
	for _, tc := range tests {
		err := Err(fmt.Errorf("%s: %w", tc.text, base), tc.rawURL)
		require.Equal(t, tc.want, err.Error(), tc.name)
		require.ErrorIs(t, err, base, tc.name)
	}
}

func TestNewError(t *testing.T) {
	t.Parallel()
	err := NewError("masked", errors.ErrUnsupported)
	require.Equal(t, "masked", err.Error())
	require.ErrorIs(t, err, errors.ErrUnsupported)
}
