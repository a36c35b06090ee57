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

func TestMain(m *testing.M) {
	keepStreamsDir()
	goleak.VerifyTestMain(m)
}

// keepStreamsDir makes sure the test server's account always holds a
// stream. nats-server removes an account's streams directory when its
// last stream is deleted, and a stream created at that moment by a test
// running in parallel fails with "could not create storage directory"
// (err_code 10049; seen in CI with nats-server from Debian 12). A stream
// that stays keeps the directory. Nothing is done if the server is
// unreachable: the tests skip or fail on their own then.
func keepStreamsDir() {
	nc, err := nats.Connect(natsURL(), nats.Timeout(3*time.Second))
	if err != nil {
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: "batutatest_keepalive", Subjects: []string{"batutatest.keepalive"}, Storage: jetstream.FileStorage, MaxMsgs: 1,
	})
}

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
