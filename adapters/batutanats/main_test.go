package batutanats_test

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// natsURL is the server the tests use: $BATUTA_NATS_URL or the local one.
func natsURL() string {
	if u := os.Getenv("BATUTA_NATS_URL"); u != "" {
		return u
	}
	return "nats://127.0.0.1:4222"
}

// requireNATS returns a JetStream context on the test server, its
// connection closed at cleanup. It skips the test when the server is
// unreachable, unless BATUTA_REQUIRE_SERVICES=1, when it fails.
func requireNATS(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(natsURL(), nats.Timeout(3*time.Second))
	if err == nil {
		var js jetstream.JetStream
		if js, err = jetstream.New(nc); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if _, err = js.AccountInfo(ctx); err == nil {
				t.Cleanup(nc.Close)
				return js
			}
		}
		nc.Close()
	}
	if os.Getenv("BATUTA_REQUIRE_SERVICES") == "1" {
		t.Fatalf("NATS JetStream at %s is required (BATUTA_REQUIRE_SERVICES=1) but unreachable: %v", natsURL(), err)
	}
	t.Skipf("NATS JetStream at %s unreachable, skipping: %v", natsURL(), err)
	return nil
}

// uniqueStream returns a stream name unique to this test run and deletes
// the stream at cleanup.
func uniqueStream(t *testing.T, js jetstream.JetStream) string {
	t.Helper()
	name := strings.NewReplacer("/", "_", " ", "_", ".", "_").Replace(t.Name())
	if len(name) > 60 {
		name = name[len(name)-60:]
	}
	stream := "batutatest_" + name + "_" + strings.ToLower(rand.Text()[:12])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := js.DeleteStream(ctx, stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Logf("delete stream %s: %v", stream, err)
		}
	})
	return stream
}
