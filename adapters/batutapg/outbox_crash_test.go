package batutapg

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// The crash test runs a consumer in a child process (this test binary,
// re-executed) and kills it with SIGKILL in the middle of a batch. Its
// "store" is a table with a unique key on the event ID, so, as with a real
// durable store, a re-fired event is deduplicated.
const (
	crashHelperEnv  = "BATUTA_OUTBOX_CRASH_HELPER"
	crashSchemaEnv  = "BATUTA_OUTBOX_CRASH_SCHEMA"
	crashBlockAtEnv = "BATUTA_OUTBOX_CRASH_BLOCK_AT"
)

// crashFire records ev in the schema's accepted (deduplicated) and fired
// (every call) tables.
func crashFire(pool *pgxpool.Pool, schema string) batuta.FireFunc {
	return func(ctx context.Context, ev batuta.Event) error {
		_, err := pool.Exec(ctx, `WITH f AS (INSERT INTO `+quoteQualified(schema, "fired")+` (event_id) VALUES ($1))
			INSERT INTO `+quoteQualified(schema, "accepted")+` (event_id) VALUES ($1) ON CONFLICT DO NOTHING`, ev.ID)
		return err
	}
}

// TestOutboxCrashHelperProcess is the child: it consumes the outbox and
// blocks forever in its blockAt-th fire, waiting to be killed.
func TestOutboxCrashHelperProcess(t *testing.T) {
	if os.Getenv(crashHelperEnv) != "1" {
		t.Skip("child process of TestTriggerKilledMidBatchLosesNothing")
	}
	ctx := context.Background()
	schema := os.Getenv(crashSchemaEnv)
	blockAt, err := strconv.Atoi(os.Getenv(crashBlockAtEnv))
	require.NoError(t, err)
	pool, err := pgxpool.New(ctx, outboxTestDSN())
	require.NoError(t, err)
	trig, err := NewTrigger(TriggerConfig{Pool: pool, Outbox: Outbox{Schema: schema}, BatchSize: 50, Lease: time.Second})
	require.NoError(t, err)
	record := crashFire(pool, schema)
	var n atomic.Int64
	err = trig.Run(ctx, func(ctx context.Context, ev batuta.Event) error {
		if n.Add(1) == int64(blockAt) {
			select {} // mid-batch: wait for SIGKILL
		}
		return record(ctx, ev)
	})
	t.Fatalf("Run returned: %v", err)
}

// TestTriggerKilledMidBatchLosesNothing: a consumer killed (SIGKILL) in the
// middle of a batch and restarted loses no row; the rows it had fired but
// not deleted are fired again and deduplicated by event ID.
func TestTriggerKilledMidBatchLosesNothing(t *testing.T) {
	t.Parallel()
	env := newOutboxEnv(t)
	installOrders(t, env, Capture{Ops: []Op{OpInsert}})
	env.exec(t, `CREATE TABLE `+quoteQualified(env.schema, "accepted")+` (event_id text PRIMARY KEY)`)
	env.exec(t, `CREATE TABLE `+quoteQualified(env.schema, "fired")+` (event_id text NOT NULL)`)
	const rows, blockAt = 300, 75 // batches of 50: killed in the second one
	env.exec(t, `INSERT INTO `+env.orders()+` (amount) SELECT g FROM generate_series(1, $1::int) g`, rows)

	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^TestOutboxCrashHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashHelperEnv+"=1", crashSchemaEnv+"="+env.schema,
		crashBlockAtEnv+"="+strconv.Itoa(blockAt), "BATUTA_PG_DSN="+outboxTestDSN())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	fired := func() int { return env.count(t, `SELECT count(*) FROM `+quoteQualified(env.schema, "fired")) }
	deadline := time.Now().Add(60 * time.Second)
	for fired() < blockAt-1 {
		select {
		case err := <-exited:
			t.Fatalf("child exited early: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			t.Fatalf("child fired %d events in 60s\n%s", fired(), out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	require.NoError(t, cmd.Process.Kill())
	err = <-exited
	var exitErr *exec.ExitError
	require.True(t, errors.As(err, &exitErr), "child: %v\n%s", err, out.String())

	// Killed mid-batch: the first batch is gone, the second is still
	// claimed by the dead consumer, 24 of its rows already accepted.
	require.Equal(t, blockAt-1, fired())
	require.Equal(t, rows-50, env.outboxRows(t, env.ob))
	require.Equal(t, 50, env.count(t, `SELECT count(*) FROM `+env.ob.withDefaults().quoted()+` WHERE claimed_by IS NOT NULL`))

	// Restart: once the dead consumer's 1 s leases expire, everything is
	// delivered.
	trig, err := NewTrigger(TriggerConfig{Pool: env.pool, Outbox: env.ob, BatchSize: 50, PollInterval: 100 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- trig.Run(ctx, crashFire(env.pool, env.schema)) }()
	accepted := func() int { return env.count(t, `SELECT count(*) FROM `+quoteQualified(env.schema, "accepted")) }
	waitFor(t, "every row accepted", func() bool { return accepted() == rows })
	waitFor(t, "an empty outbox", func() bool { return env.outboxRows(t, env.ob) == 0 })
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)

	require.Equal(t, rows, accepted())
	dups := env.count(t, `SELECT count(*) FROM (SELECT event_id FROM `+quoteQualified(env.schema, "fired")+
		` GROUP BY event_id HAVING count(*) > 1) d`)
	require.Equal(t, blockAt-1-50, dups, "the rows fired before the kill but not deleted are fired again")
	require.Equal(t, rows+dups, fired())
}
