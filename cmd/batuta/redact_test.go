package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDSNPasswordNeverPrinted(t *testing.T) {
	// internal/redact is importable from this module (the internal rule is
	// by import path, github.com/batuta-dev/batuta/...); these cases hold
	// the command's own use of it: every error path that can carry the DSN.
	const secret = "s3cr3t-Pa55"
	for _, tc := range []struct {
		name string
		dsn  string
		code int
	}{
		{"unreachable server", "postgres://app:" + secret + "@127.0.0.1:1/app?connect_timeout=2", exitError},
		{"unparsable DSN", "postgres://app:" + secret + "@[::1/app", exitUsage},
		{"bad port", "postgres://app:" + secret + "@127.0.0.1:notaport/app", exitUsage},
		{"escaped password", "postgres://app:" + secret + "%2F%3F@127.0.0.1:1/app?connect_timeout=2", exitError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, args := range [][]string{
				{"runs", "list", "--dsn", tc.dsn},
				{"migrate", "status", "--dsn", tc.dsn},
				{"runs", "list", "-v"}, // from the environment, with logging on
			} {
				r := cli(t, map[string]string{"BATUTA_DSN": tc.dsn}, args...)
				require.Equal(t, tc.code, r.code, r.stderr)
				require.NotEmpty(t, r.stderr)
				require.NotContains(t, r.stderr, secret)
				require.NotContains(t, r.stdout, secret)
			}
		})
	}
}

func TestAppRedactKeepsTheErrorChain(t *testing.T) {
	a := newApp(env{})
	a.dsn = "postgres://u:pw-123@h/db"
	base := withCode(exitNotFound, fmt.Errorf("connect to postgres://u:pw-123@h/db: %w", errNoDSN))
	err := a.redact(base)
	require.Equal(t, "connect to postgres://u:xxxxx@h/db: "+errNoDSN.Error(), err.Error())
	require.ErrorIs(t, err, errNoDSN)
	var ee *exitErr
	require.True(t, errors.As(err, &ee))
	require.Equal(t, exitNotFound, ee.code)
	require.False(t, strings.Contains(err.Error(), "pw-123"))
}

func TestSanitize(t *testing.T) {
	require.Equal(t, "a b c", sanitize("a\nb\tc", 0))
	require.Equal(t, "abcd…", sanitize("abcdefgh", 5))
	require.Equal(t, "héllo", sanitize("héllo", 5))
}
