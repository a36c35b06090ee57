package batutaredis_test

import (
	"context"
	"crypto/rand"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// redisURL is the server the tests use: $BATUTA_REDIS_URL or the local one.
func redisURL() string {
	if u := os.Getenv("BATUTA_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// requireRedis returns a client on the test server, closed at cleanup. It
// skips the test when the server is unreachable, unless
// BATUTA_REQUIRE_SERVICES=1, when it fails.
func requireRedis(t *testing.T) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(redisURL())
	require.NoError(t, err)
	c := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		if os.Getenv("BATUTA_REQUIRE_SERVICES") == "1" {
			t.Fatalf("Redis at %s is required (BATUTA_REQUIRE_SERVICES=1) but unreachable: %v", redisURL(), err)
		}
		t.Skipf("Redis at %s unreachable, skipping: %v", redisURL(), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// uniqueStream returns a stream name unique to this test run and deletes
// the stream and its companion keys at cleanup.
func uniqueStream(t *testing.T, c redis.UniversalClient) string {
	t.Helper()
	name := strings.NewReplacer("/", ".", " ", "_").Replace(t.Name())
	if len(name) > 80 {
		name = name[:80]
	}
	stream := "batutatest:" + name + ":" + strings.ToLower(rand.Text()[:12])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Del(ctx, stream, "{"+stream+"}:delayed", stream+":dead").Err()
	})
	return stream
}
