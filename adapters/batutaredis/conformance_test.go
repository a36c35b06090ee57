package batutaredis_test

import (
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaredis"
	"github.com/batuta-dev/batuta/batutatest"
	"github.com/stretchr/testify/require"
)

// TestQueueConformance runs the shared Queue suite against the real Redis
// server, each subtest on its own stream, each handle with its own client.
func TestQueueConformance(t *testing.T) {
	requireRedis(t)
	batutatest.TestQueue(t, batutatest.QueueSuiteConfig{
		New: func(t *testing.T, opts batutatest.QueueOptions) batutatest.QueueFixture {
			admin := requireRedis(t)
			cfg := batutaredis.Config{
				Stream:            uniqueStream(t, admin),
				VisibilityTimeout: opts.VisibilityTimeout,
			}
			return batutatest.QueueFixture{
				Open: func(t *testing.T) batuta.Queue {
					q, err := batutaredis.Open(t.Context(), redisURL(), cfg)
					require.NoError(t, err)
					t.Cleanup(func() { _ = q.Close() })
					return q
				},
				VisibilityTimeout: max(opts.VisibilityTimeout, time.Millisecond),
			}
		},
	})
}
