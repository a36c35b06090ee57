package batutamysql

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/batuta-dev/batuta/batutatest"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	_ "github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
)

const defaultTestDSN = "root@tcp(127.0.0.1:3306)/test?timeout=3s"

func testDSN() string {
	if dsn := os.Getenv("BATUTA_MYSQL_DSN"); dsn != "" {
		return dsn
	}
	return defaultTestDSN
}

// openDB connects to the test MariaDB/MySQL, or skips the test when it is
// unreachable (fails instead when BATUTA_REQUIRE_SERVICES=1).
func openDB(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", testDSN())
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		if os.Getenv("BATUTA_REQUIRE_SERVICES") == "1" {
			t.Fatalf("MySQL/MariaDB unreachable (BATUTA_REQUIRE_SERVICES=1): %v", err)
		}
		t.Skipf("MySQL/MariaDB unreachable at 127.0.0.1:3306 (set BATUTA_MYSQL_DSN to point elsewhere): %v", err)
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	t.Cleanup(func() { db.Close() })
	return db
}

func suffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// fixture is a user table and an outbox with unique names, dropped (with
// their triggers) when the test ends.
type fixture struct {
	db     *sql.DB
	table  string
	outbox Outbox
}

func newFixture(t *testing.T, db *sql.DB, tableDDL string) *fixture {
	t.Helper()
	s := suffix()
	f := &fixture{db: db, table: "bt_" + s, outbox: Outbox{Table: "bt_" + s + "_outbox"}}
	if tableDDL == "" {
		tableDDL = "(id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, writer INT NOT NULL DEFAULT 0, name VARCHAR(64) NULL)"
	}
	f.exec(t, "CREATE TABLE "+quoteIdent(f.table)+" "+tableDDL)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = UninstallOutbox(ctx, db, f.outbox)
		_, _ = db.ExecContext(ctx, "DROP TABLE IF EXISTS "+quoteIdent(f.table))
	})
	return f
}

func (f *fixture) exec(t testing.TB, q string, args ...any) sql.Result {
	t.Helper()
	res, err := f.db.ExecContext(context.Background(), q, args...)
	require.NoError(t, err, q)
	return res
}

func (f *fixture) capture() Capture { return Capture{Table: f.table, Outbox: f.outbox} }

func (f *fixture) outboxRows(t testing.TB) int {
	t.Helper()
	var n int
	require.NoError(t, f.db.QueryRow("SELECT COUNT(*) FROM "+f.outbox.quoted()).Scan(&n))
	return n
}

// startTrigger runs trig.RunTracking(runs) until the returned stop is called
// (or the test ends); stop checks that it returned context.Canceled.
func startTrigger(t *testing.T, trig *Trigger, runs batuta.Runs) (stop func()) {
	t.Helper()
	return batutatest.StartTracking(t, trig, runs)
}

// newFakeRuns returns a batuta.Runs that records what was fired.
func newFakeRuns(durable bool) *batutatest.OutboxRuns { return batutatest.NewOutboxRuns(durable) }

// newTrigger makes a Trigger that logs warnings to the test log unless
// cfg has a Logger.
func newTrigger(t testing.TB, cfg TriggerConfig) *Trigger {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	trig, err := NewTrigger(cfg)
	require.NoError(t, err)
	return trig
}

// eventually waits for cond with a generous deadline.
func eventually(t testing.TB, cond func() bool, msg string, args ...any) {
	t.Helper()
	batutatest.Eventually(t, 60*time.Second, fmt.Sprintf(msg, args...), cond)
}

// change is a captured change and its new/old images (numbers as
// json.Number).
type change struct {
	ChangeData
	newRow, oldRow map[string]any
}

func decodeChange(t testing.TB, ev batuta.Event) change {
	t.Helper()
	var c change
	require.NoError(t, json.Unmarshal(ev.Data, &c.ChangeData), string(ev.Data))
	var err error
	_, c.newRow, c.oldRow, err = batutatest.RowChangeData(ev)
	require.NoError(t, err, string(ev.Data))
	return c
}

func TestEmitRefusesBadInput(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	f := newFixture(t, db, "")
	ctx := context.Background()
	ob := f.outbox
	ob.MaxEmitBytes = 16
	require.NoError(t, InstallOutbox(ctx, db, ob))
	tests := []struct {
		name string
		ob   Outbox
		ev   batuta.Event
		want error
	}{
		// The cap, NUL bytes and invalid UTF-8: batutatest.TestOutbox.
		{"ID over 255 bytes", ob, batuta.Event{ID: strings.Repeat("x", 256)}, batuta.ErrInvalidPayload},
		{"hostile outbox name", Outbox{Table: "x\x00; DROP TABLE y"}, batuta.Event{}, batuta.ErrInvalidIdentifier},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx, err := db.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer tx.Rollback()
			require.ErrorIs(t, Emit(ctx, tx, tt.ob, tt.ev), tt.want)
		})
	}
	require.Equal(t, 0, f.outboxRows(t), "nothing written")
}
