package batutaamqp

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// brokerURL is the RabbitMQ the integration tests use.
func brokerURL() string {
	if u := os.Getenv("BATUTA_AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// adminConn connects to the broker for test setup and cleanup, skipping
// the test when the broker is unreachable (failing it instead when
// BATUTA_REQUIRE_SERVICES=1).
func adminConn(t *testing.T) *amqp.Connection {
	t.Helper()
	conn, err := amqp.Dial(brokerURL())
	if err != nil {
		if os.Getenv("BATUTA_REQUIRE_SERVICES") == "1" {
			t.Fatalf("RabbitMQ unreachable at %s (BATUTA_REQUIRE_SERVICES=1): %v", redactURL(brokerURL()), err)
		}
		t.Skipf("RabbitMQ unreachable at %s (set BATUTA_REQUIRE_SERVICES=1 to fail instead): %v", redactURL(brokerURL()), err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// uniqueName returns a queue name no other test run uses.
func uniqueName() string {
	return "batuta-test-" + strings.ToLower(rand.Text()[:16])
}

// quietLogger drops the adapter's logs (reconnection warnings are expected
// in several tests).
func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testConfig returns a Config on a fresh queue whose topology is deleted
// when the test ends (after the handles the test opens later are closed).
func testConfig(t *testing.T, admin *amqp.Connection) Config {
	t.Helper()
	cfg := Config{Queue: uniqueName(), Logger: quietLogger(), ReconnectMin: 20 * time.Millisecond, ReconnectMax: 500 * time.Millisecond}
	t.Cleanup(func() { deleteTopology(t, admin, cfg) })
	return cfg
}

func deleteTopology(t *testing.T, admin *amqp.Connection, cfg Config) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := DeleteTopology(ctx, admin, cfg); err != nil {
		t.Errorf("DeleteTopology(%s): %v", cfg.Queue, err)
	}
}

// openQueue opens a Queue on url and closes it when the test ends.
func openQueue(t *testing.T, url string, cfg Config) *Queue {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	q, err := Open(ctx, url, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, q.Close()) })
	return q
}

// queueDepth returns the number of ready messages in a queue.
func queueDepth(t *testing.T, admin *amqp.Connection, name string) int {
	t.Helper()
	ch, err := admin.Channel()
	require.NoError(t, err)
	defer func() { _ = ch.Close() }()
	st, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
	require.NoError(t, err)
	return st.Messages
}
