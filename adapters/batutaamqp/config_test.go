package batutaamqp

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		cfg   Config
		field string // ConfigError field, or "" for ErrInvalidIdentifier
		ident bool
	}{
		{name: "missing queue", cfg: Config{}, field: "Queue"},
		{name: "reserved prefix", cfg: Config{Queue: "amq.orders"}, ident: true},
		{name: "space", cfg: Config{Queue: "my orders"}, ident: true},
		{name: "slash", cfg: Config{Queue: "orders/eu"}, ident: true},
		{name: "non-ASCII", cfg: Config{Queue: "pedidos-ñ"}, ident: true},
		{name: "too long", cfg: Config{Queue: strings.Repeat("q", maxNameLen+1)}, ident: true},
		{name: "queue type", cfg: Config{Queue: "q", QueueType: "stream"}, field: "QueueType"},
		{name: "negative prefetch", cfg: Config{Queue: "q", Prefetch: -1}, field: "Prefetch"},
		{name: "prefetch over uint16", cfg: Config{Queue: "q", Prefetch: 70000}, field: "Prefetch"},
		{name: "dead-letter queue is the queue", cfg: Config{Queue: "q", DeadLetterQueue: "q"}, field: "DeadLetterQueue"},
		{name: "bad dead-letter exchange", cfg: Config{Queue: "q", DeadLetterExchange: "amq.direct"}, ident: true},
		{name: "sub-millisecond bucket", cfg: Config{Queue: "q", DelayBuckets: []time.Duration{time.Microsecond}}, field: "DelayBuckets"},
		{name: "reconnect max below min", cfg: Config{Queue: "q", ReconnectMin: time.Second, ReconnectMax: time.Millisecond}, field: "ReconnectMax"},
		{name: "negative in-flight publishes", cfg: Config{Queue: "q", MaxInFlightPublishes: -1}, field: "MaxInFlightPublishes"},
		{name: "amqp091 recovery", cfg: Config{Queue: "q", AMQP: amqp.Config{Recovery: &amqp.Recovery{}}}, field: "AMQP.Recovery"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Open validates before it dials anything.
			_, err := Open(t.Context(), "amqp://guest:guest@127.0.0.1:1/", tc.cfg)
			require.Error(t, err)
			if tc.ident {
				require.ErrorIs(t, err, batuta.ErrInvalidIdentifier)
				return
			}
			var ce *batuta.ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.field, ce.Field)
			require.ErrorIs(t, err, batuta.ErrInvalidConfig)
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg := Config{Queue: "orders"}.withDefaults()
	require.NoError(t, cfg.validate())
	require.Equal(t, QueueTypeQuorum, cfg.QueueType)
	require.Equal(t, "orders.dlx", cfg.DeadLetterExchange)
	require.Equal(t, "orders.dead", cfg.DeadLetterQueue)
	require.Equal(t, DefaultVisibilityTimeout, cfg.VisibilityTimeout)
	require.Equal(t, DefaultDeliveryLimit, cfg.DeliveryLimit)
	require.Equal(t, DefaultDelayBuckets, cfg.DelayBuckets)
	require.NotNil(t, cfg.Logger)
	// The longest derived name fits RabbitMQ's 255-byte limit.
	long := Config{Queue: strings.Repeat("q", maxNameLen)}.withDefaults()
	require.LessOrEqual(t, len(long.waitQueueName(24*time.Hour*49)), 255)
}

func TestBucketFor(t *testing.T) {
	t.Parallel()
	cfg := Config{Queue: "q", DelayBuckets: []time.Duration{time.Second, 100 * time.Millisecond, time.Minute, time.Second}}.withDefaults()
	require.Equal(t, []time.Duration{100 * time.Millisecond, time.Second, time.Minute}, cfg.DelayBuckets, "sorted and deduplicated")
	tests := []struct{ delay, want time.Duration }{
		{time.Nanosecond, 100 * time.Millisecond},
		{10 * time.Millisecond, 100 * time.Millisecond},
		{100 * time.Millisecond, 100 * time.Millisecond},
		{101 * time.Millisecond, time.Second},
		{time.Second, time.Second},
		{59 * time.Second, time.Minute},
		{time.Hour, time.Minute}, // clamped to the largest bucket
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, cfg.bucketFor(tc.delay), "delay %v", tc.delay)
	}
	require.Equal(t, "q.delay.1000", cfg.waitQueueName(time.Second))
}

func TestOpenBadURL(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-pa55"
	tests := []struct {
		name string
		url  string
	}{
		{name: "wrong scheme", url: "http://guest:" + secret + "@127.0.0.1:5672/"},
		{name: "bad port", url: "amqp://guest:" + secret + "@127.0.0.1:port/"},
		{name: "white space", url: "amqp://guest:" + secret + "@127.0.0.1:5672/ vhost"},
		{name: "unescaped percent", url: "amqp://guest:" + secret + "%zz@127.0.0.1:5672/"},
		{name: "not a URL", url: "guest:" + secret + "@@@"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Open(t.Context(), tc.url, Config{Queue: "q"})
			require.Error(t, err)
			require.ErrorIs(t, err, batuta.ErrInvalidConfig)
			require.Contains(t, err.Error(), "batutaamqp: invalid URL")
			require.NotContains(t, err.Error(), secret)
		})
	}
}

func TestOpenUnreachable(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-pa55"
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := Open(ctx, "amqp://guest:"+secret+"@127.0.0.1:1/", Config{Queue: "q"})
	require.Error(t, err)
	require.Contains(t, err.Error(), "batutaamqp: dial amqp://guest:xxxxx@127.0.0.1:1/")
	require.NotContains(t, err.Error(), secret)
}

func TestOpenWrongPassword(t *testing.T) {
	t.Parallel()
	adminConn(t) // skip without a broker
	const secret = "not-the-password"
	u := strings.Replace(brokerURL(), "guest:guest@", "guest:"+secret+"@", 1)
	if u == brokerURL() {
		t.Skip("BATUTA_AMQP_URL does not use guest:guest; cannot build a wrong-password URL")
	}
	_, err := Open(t.Context(), u, Config{Queue: uniqueName()})
	require.Error(t, err)
	require.Contains(t, err.Error(), "xxxxx")
	require.NotContains(t, err.Error(), secret)
}

func TestOpenCanceled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := Open(ctx, brokerURL(), Config{Queue: "q"})
	require.ErrorIs(t, err, context.Canceled)
}

func TestPassiveMissingQueue(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	cfg := Config{Queue: uniqueName(), Passive: true, Logger: quietLogger()}
	_, err := Open(t.Context(), brokerURL(), cfg)
	require.ErrorIs(t, err, ErrQueueNotFound)
	require.Contains(t, err.Error(), cfg.Queue)
	require.Contains(t, err.Error(), "Passive")
	_, err = New(t.Context(), admin, cfg)
	require.ErrorIs(t, err, ErrQueueNotFound)
	require.False(t, admin.IsClosed(), "a refused New leaves the caller's connection open")
}

func TestDeclareMismatch(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	cfg := testConfig(t, admin)
	cfg.QueueType = QueueTypeClassic
	q := openQueue(t, brokerURL(), cfg)
	require.NoError(t, q.Close())
	cfg.QueueType = QueueTypeQuorum
	_, err := Open(t.Context(), brokerURL(), cfg)
	require.Error(t, err)
	require.Contains(t, err.Error(), "exists with other settings")
	var ae *amqp.Error
	require.True(t, errors.As(err, &ae))
	require.Equal(t, amqp.PreconditionFailed, ae.Code)
}

func TestNewRefusals(t *testing.T) {
	t.Parallel()
	admin := adminConn(t)
	_, err := New(t.Context(), nil, Config{Queue: "q"})
	require.ErrorIs(t, err, batuta.ErrInvalidConfig)

	closed, err := amqp.Dial(brokerURL())
	require.NoError(t, err)
	require.NoError(t, closed.Close())
	_, err = New(t.Context(), closed, Config{Queue: "q"})
	require.ErrorIs(t, err, batuta.ErrClosed)

	recovering, err := amqp.DialConfig(brokerURL(), amqp.Config{Recovery: &amqp.Recovery{}})
	require.NoError(t, err)
	defer func() { _ = recovering.Close() }()
	_, err = New(t.Context(), recovering, Config{Queue: "q"})
	var ce *batuta.ConfigError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "conn", ce.Field)
	require.False(t, admin.IsClosed())
}

func TestRedact(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"amqp://guest:guest@localhost:5672/", "amqp://guest:xxxxx@localhost:5672/"},
		{"amqp://localhost:5672/", "amqp://localhost:5672/"},
		{"amqp://user@localhost/", "amqp://user@localhost/"},
		{"amqps://u:p%zz@host/", "amqps://u:xxxxx@host/"},
		{"amqp://u:p@ss@host/v", "amqp://u:xxxxx@host/v"},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, redactURL(tc.in), tc.in)
	}
	require.Equal(t, `parse "amqp://u:xxxxx@h": bad`, redactText(`parse "amqp://u:pw@h": bad`, "amqp://u:pw@h"))
}
