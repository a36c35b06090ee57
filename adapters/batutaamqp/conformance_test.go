package batutaamqp

import (
	"testing"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// TestQueueConformance runs the Queue conformance suite, unchanged, against
// the real broker, once per queue type. RabbitMQ has no visibility timeout
// of its own: the adapter's timer (Config.VisibilityTimeout) provides it,
// so the suite's requested 250 ms is used as is.
func TestQueueConformance(t *testing.T) {
	admin := adminConn(t)
	for _, queueType := range []string{QueueTypeQuorum, QueueTypeClassic} {
		t.Run(queueType, func(t *testing.T) {
			batutatest.TestQueue(t, batutatest.QueueSuiteConfig{
				New: func(t *testing.T, opts batutatest.QueueOptions) batutatest.QueueFixture {
					cfg := testConfig(t, admin)
					cfg.QueueType = queueType
					cfg.VisibilityTimeout = opts.VisibilityTimeout
					return batutatest.QueueFixture{
						Open: func(t *testing.T) batuta.Queue {
							return openQueue(t, brokerURL(), cfg)
						},
						VisibilityTimeout: opts.VisibilityTimeout,
					}
				},
				// One consumer sees publish order only until a redelivery:
				// RabbitMQ queues are FIFO and a single channel keeps order.
				Ordered: true,
			})
		})
	}
}
