package main

import (
	"encoding/json"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
)

func TestMigrateSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.db")
	dsn := "sqlite:" + path
	r := cli(t, nil, "migrate", "up", "--dsn", dsn, "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	var up struct {
		Applied int `json:"applied_now"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &up))
	require.Equal(t, batutasqlite.SchemaVersion(), up.Applied, "every migration applied to a new file")

	r = cli(t, nil, "migrate", "up", "--dsn", dsn)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Equal(t, "sqlite file "+path+": up to date at version "+itoa(batutasqlite.SchemaVersion())+"\n", r.stdout)

	r = cli(t, nil, "migrate", "status", "--dsn", dsn)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "this build needs "+itoa(batutasqlite.SchemaVersion())+": up to date")
	require.Contains(t, r.stdout, "0001_init")
}

func TestMigratePostgres(t *testing.T) {
	pool := pgPool(t)
	schema := pgSchema(t, pool)
	args := []string{"--dsn", pgTestDSN(), "--schema", schema}
	r := cli(t, nil, append([]string{"migrate", "status"}, args...)...)
	require.Equal(t, exitSchema, r.code, r.stderr)
	require.Contains(t, r.stdout, "postgres schema "+schema+": version 0, this build needs "+itoa(batutapg.SchemaVersion()))

	r = cli(t, nil, append([]string{"runs", "list"}, args...)...)
	require.Equal(t, exitSchema, r.code, "the runs commands never migrate")

	r = cli(t, nil, append([]string{"migrate", "up"}, args...)...)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "version 0 -> "+itoa(batutapg.SchemaVersion()))

	// The schema from the environment this time.
	r = cli(t, map[string]string{"BATUTA_SCHEMA": schema, "BATUTA_DSN": pgTestDSN()}, "migrate", "status", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	var st struct {
		Where   string `json:"where"`
		Current int    `json:"current"`
		Pending int    `json:"pending"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st))
	require.Equal(t, "schema "+schema, st.Where)
	require.Equal(t, batutapg.SchemaVersion(), st.Current)
	require.Zero(t, st.Pending)

	r = cli(t, nil, append([]string{"runs", "list"}, args...)...)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Equal(t, "no runs\n", r.stdout)
}

func itoa(n int) string { return strconv.Itoa(n) }
