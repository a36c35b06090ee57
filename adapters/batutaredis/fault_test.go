package batutaredis_test

import (
	"context"
	"fmt"
	"github.com/batuta-dev/batuta/batutatest"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/batuta-dev/batuta/internal/faultproxy"
	"github.com/stretchr/testify/require"
)

// TestFaultConnectionCutMidStream runs batutatest.TestQueueCuts: 10,000
// messages consumed through a TCP proxy by two consumers while every
// connection is cut twice; duplicates are deliveries whose ack was lost with
// the connection, taken over after the visibility timeout.
func TestFaultConnectionCutMidStream(t *testing.T) {
	for _, tc := range []struct{ name, query string }{
		// go-redis retries a command whose connection failed (3 times by
		// default): a command that ran but whose reply was lost runs again.
		{"ClientRetries", ""},
		// No client retries: every cut surfaces as an error, and entries
		// read by a lost XREADGROUP reply stay pending until taken over.
		{"NoClientRetries", "?max_retries=-1"},
	} {
		t.Run(tc.name, func(t *testing.T) { testFaultCut(t, tc.query) })
	}
}

func testFaultCut(t *testing.T, query string) {
	admin := requireRedis(t)
	proxy, err := faultproxy.Start(admin.Options().Addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })
	cfg := batutaredis.Config{
		Stream:            uniqueStream(t, admin),
		VisibilityTimeout: time.Second,
		ClaimInterval:     200 * time.Millisecond,
		BlockTimeout:      200 * time.Millisecond,
	}
	// Publish straight to Redis, consume through the proxy.
	pub, err := batutaredis.New(t.Context(), admin, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pub.Close() })
	proxyURL := "redis://" + proxy.Addr() + "/" + fmt.Sprint(admin.Options().DB) + query
	batutatest.TestQueueCuts(t, batutatest.QueueCuts{
		Publisher:  pub,
		Publishers: 8,
		Open:       func(ctx context.Context) (batuta.Queue, error) { return batutaredis.Open(ctx, proxyURL, cfg) },
		Cut:        proxy.CutAll,
		// Drained: no entry left and nothing pending in the group.
		Drained: func(ctx context.Context) bool {
			xlen, err := admin.XLen(ctx, cfg.Stream).Result()
			if err != nil || xlen != 0 {
				return false
			}
			p, err := admin.XPending(ctx, cfg.Stream, "batuta").Result()
			return err == nil && p.Count == 0
		},
	})
}
