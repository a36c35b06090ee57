package batutanats_test

import (
	"testing"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutanats"
	"github.com/batuta-dev/batuta/batutatest"
	"github.com/stretchr/testify/require"
)

// TestQueueConformance runs the shared Queue suite against the real NATS
// server, each subtest on its own stream, each handle with its own
// connection pulling from the same durable consumer.
func TestQueueConformance(t *testing.T) {
	requireNATS(t)
	batutatest.TestQueue(t, batutatest.QueueSuiteConfig{
		New: func(t *testing.T, opts batutatest.QueueOptions) batutatest.QueueFixture {
			js := requireNATS(t)
			cfg := batutanats.Config{
				Stream:  uniqueStream(t, js),
				AckWait: opts.VisibilityTimeout,
			}
			return batutatest.QueueFixture{
				Open: func(t *testing.T) batuta.Queue {
					q, err := batutanats.Open(t.Context(), natsURL(), cfg)
					require.NoError(t, err)
					t.Cleanup(func() { _ = q.Close() })
					return q
				},
				VisibilityTimeout: opts.VisibilityTimeout,
			}
		},
	})
}
