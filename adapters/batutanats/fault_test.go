package batutanats_test

import (
	"context"
	"github.com/batuta-dev/batuta/batutatest"
	"strings"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutanats"
	"github.com/batuta-dev/batuta/internal/faultproxy"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
)

// TestFaultConnectionCutMidStream runs batutatest.TestQueueCuts: 10,000
// messages consumed through a TCP proxy by two consumers (connections)
// while every connection is cut twice; duplicates are messages whose
// delivery or ack was lost with the connection, redelivered after AckWait.
func TestFaultConnectionCutMidStream(t *testing.T) {
	js := requireNATS(t)
	proxy, err := faultproxy.Start(strings.TrimPrefix(natsURL(), "nats://"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })
	cfg := batutanats.Config{
		Stream:   uniqueStream(t, js),
		AckWait:  time.Second,
		PollWait: 200 * time.Millisecond,
		ConnectOptions: []nats.Option{
			nats.ReconnectWait(20 * time.Millisecond),
			nats.IgnoreDiscoveredServers(),
		},
	}
	// Publish straight to the server, consume through the proxy.
	pub, err := batutanats.New(t.Context(), js, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pub.Close() })
	batutatest.TestQueueCuts(t, batutatest.QueueCuts{
		Publisher: pub,
		Open: func(ctx context.Context) (batuta.Queue, error) {
			return batutanats.Open(ctx, "nats://"+proxy.Addr(), cfg)
		},
		Cut:        proxy.CutAll,
		ErrorPause: 10 * time.Millisecond,
		AckTimeout: 2 * time.Second,
		// Drained: the stream is empty (work-queue retention removes acked
		// messages) with nothing pending.
		Drained: func(ctx context.Context) bool {
			stream, err := js.Stream(ctx, cfg.Stream)
			if err != nil {
				return false
			}
			info, err := stream.Info(ctx)
			if err != nil || info.State.Msgs != 0 {
				return false
			}
			ci, err := js.Consumer(ctx, cfg.Stream, "batuta")
			if err != nil {
				return false
			}
			cinfo, err := ci.Info(ctx)
			return err == nil && cinfo.NumAckPending == 0 && cinfo.NumPending == 0
		},
	})
	require.Positive(t, proxy.Cuts())
}
