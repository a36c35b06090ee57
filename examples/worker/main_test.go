package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batuta-dev/batuta/adapters/batutaamqp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
)

// argsEnv makes the test binary run the worker's main with these
// arguments instead of the tests: the serve tests start the example as a
// real process, signal it and check how it exits.
const argsEnv = "BATUTA_WORKER_EXAMPLE_ARGS"

func TestMain(m *testing.M) {
	if args := os.Getenv(argsEnv); args != "" {
		os.Args = append(os.Args[:1], strings.Fields(args)...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// need skips the test for a missing service or tool, unless
// BATUTA_REQUIRE_SERVICES=1, which makes it fail.
func need(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("BATUTA_REQUIRE_SERVICES") == "1" {
		t.Fatalf("%s is required (BATUTA_REQUIRE_SERVICES=1): %v", what, err)
	}
	t.Skipf("%s unavailable, skipping: %v", what, err)
}

// tool returns the path of a producer client, or skips.
func tool(t *testing.T, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	need(t, name+" ("+install+")", err)
	return p
}

func runTool(t *testing.T, ctx context.Context, bin string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v: %s", filepath.Base(bin), args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// process is the worker example running as a child process.
type process struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  []string
	more chan struct{} // signaled on each new line
	done chan error    // the exit status, once
	// exited is set (by the test goroutine) once done was received.
	exited bool
}

func start(t *testing.T, args string) *process {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), argsEnv+"="+args)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, more: make(chan struct{}, 1), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.out = append(p.out, sc.Text())
			p.mu.Unlock()
			select {
			case p.more <- struct{}{}:
			default:
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if !p.exited {
			_ = cmd.Process.Kill() // a failed test: do not leave it running
			<-p.done
		}
	})
	return p
}

// count returns how many output lines contain s.
func (p *process) count(s string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.out {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.out, "\n")
}

// waitLines waits until every want[s] lines contain s.
func (p *process) waitLines(t *testing.T, ctx context.Context, want map[string]int) {
	t.Helper()
	for {
		ok := true
		for s, n := range want {
			if p.count(s) < n {
				ok = false
			}
		}
		if ok {
			return
		}
		select {
		case <-p.more:
		case err := <-p.done:
			p.exited = true
			t.Fatalf("the worker exited (%v) before printing %v; output:\n%s", err, want, p.output())
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %v; output:\n%s", want, p.output())
		}
	}
}

// waitFor polls cond (a broker query) until it holds.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() (bool, error)) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if ok {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s (last error: %v)", what, err)
		}
	}
}

// stop sends SIGTERM and checks the worker exits cleanly (status 0).
func (p *process) stop(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.exited = true
		if err != nil {
			t.Fatalf("the worker did not exit cleanly after SIGTERM: %v; output:\n%s", err, p.output())
		}
	case <-ctx.Done():
		t.Fatalf("the worker did not exit after SIGTERM; output:\n%s", p.output())
	}
}

// serveCase is what TestServe needs of one broker: a producer that is not Go,
// how to know the queue is drained, and cleanup.
type serveCase struct {
	name    string
	produce func(t *testing.T, ctx context.Context, queue, id, typ, body string)
	// resentDelivered is how often a message sent twice with the same ID
	// reaches the workers: NATS drops the second copy (Nats-Msg-Id
	// deduplication), the others deliver both.
	resentDelivered int
	drained         func(ctx context.Context, queue string) (bool, error)
	cleanup         func(ctx context.Context, queue string)
}

func redisCase(t *testing.T) serveCase {
	opt, _ := redis.ParseURL("redis://127.0.0.1:6379")
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	need(t, "Redis on 127.0.0.1:6379", c.Ping(ctx).Err())
	cli := tool(t, "redis-cli", "apt-get install redis-tools")
	return serveCase{
		name: "redis",
		produce: func(t *testing.T, ctx context.Context, queue, id, typ, body string) {
			runTool(t, ctx, cli, "XADD", queue, "*", "id", id, "type", typ, "body", body)
		},
		resentDelivered: 2,
		drained: func(ctx context.Context, queue string) (bool, error) {
			n, err := c.XLen(ctx, queue).Result() // Ack is XACK + XDEL
			return err == nil && n == 0, err
		},
		cleanup: func(ctx context.Context, queue string) {
			c.Del(ctx, queue, "{"+queue+"}:delayed", queue+":dead")
		},
	}
}

func natsCase(t *testing.T) serveCase {
	nc, err := nats.Connect("nats://127.0.0.1:4222", nats.Timeout(3*time.Second))
	need(t, "NATS on 127.0.0.1:4222", err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	need(t, "JetStream", err)
	py := tool(t, "python3", "apt-get install python3")
	script, err := filepath.Abs("producers/nats_pub.py")
	if err != nil {
		t.Fatal(err)
	}
	return serveCase{
		name: "nats",
		produce: func(t *testing.T, ctx context.Context, queue, id, typ, body string) {
			runTool(t, ctx, py, script, "-s", "nats://127.0.0.1:4222",
				"-H", "Nats-Msg-Id: "+id, "-H", "type: "+typ, "batuta."+queue, body)
		},
		resentDelivered: 1,
		drained: func(ctx context.Context, queue string) (bool, error) {
			s, err := js.Stream(ctx, queue)
			if err != nil {
				return false, err
			}
			info, err := s.Info(ctx)
			return err == nil && info.State.Msgs == 0, err // work-queue retention: acked = gone
		},
		cleanup: func(ctx context.Context, queue string) {
			if err := js.DeleteStream(ctx, queue); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Logf("delete stream %s: %v", queue, err)
			}
		},
	}
}

func amqpCase(t *testing.T) serveCase {
	url := "amqp://guest:guest@127.0.0.1:5672/"
	conn, err := amqp.Dial(url)
	need(t, "RabbitMQ on 127.0.0.1:5672", err)
	t.Cleanup(func() { _ = conn.Close() })
	pub := tool(t, "amqp-publish", "apt-get install amqp-tools")
	return serveCase{
		name: "amqp",
		produce: func(t *testing.T, ctx context.Context, queue, id, typ, body string) {
			runTool(t, ctx, pub, "-u", "amqp://guest:guest@127.0.0.1:5672", "-r", queue, "-p",
				"-C", "application/json", "-H", "batuta-event-id: "+id, "-H", "type: "+typ, "-b", body)
		},
		resentDelivered: 2,
		drained: func(ctx context.Context, queue string) (bool, error) {
			ch, err := conn.Channel()
			if err != nil {
				return false, err
			}
			defer func() { _ = ch.Close() }()
			q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
			return err == nil && q.Messages == 0, err // ready messages; the rest is checked by the output
		},
		cleanup: func(ctx context.Context, queue string) {
			if err := batutaamqp.DeleteTopology(ctx, conn, batutaamqp.Config{Queue: queue}); err != nil {
				t.Logf("delete queue %s: %v", queue, err)
			}
		},
	}
}

// TestServe runs `worker -serve -queue NAME` as a process for each broker,
// feeds it with the broker's non-Go client exactly as the README's
// commands do, and stops it with SIGTERM: each order is processed once,
// the order sent twice with the same ID too, the malformed message is
// dead-lettered, and the worker exits with status 0 after printing its
// summary.
func TestServe(t *testing.T) {
	for _, c := range []struct {
		name string
		mk   func(*testing.T) serveCase
	}{{"redis", redisCase}, {"nats", natsCase}, {"amqp", amqpCase}} {
		t.Run(c.name, func(t *testing.T) {
			bc := c.mk(t)
			queue := "batuta_worker_test_" + strings.ToLower(rand.Text()[:10])
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				bc.cleanup(ctx, queue)
			})
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()

			p := start(t, fmt.Sprintf("-broker %s -serve -queue %s", bc.name, queue))
			// The worker declares the queue before it says it serves (a
			// RabbitMQ message published to a missing queue is dropped).
			p.waitLines(t, ctx, map[string]int{"serving ": 1})

			bc.produce(t, ctx, queue, "order-7", "order.created", `{"id":7,"total_cents":700}`)
			bc.produce(t, ctx, queue, "order-7", "order.created", `{"id":7,"total_cents":700}`) // re-sent
			bc.produce(t, ctx, queue, "order-8", "order.created", `{"id":8,"total_cents":800}`)
			bc.produce(t, ctx, queue, "garbage-1", "order.created", `not json`)

			p.waitLines(t, ctx, map[string]int{
				"received message order-7 ": bc.resentDelivered,
				"received message order-8 ": 1,
				`processed order 7 (message order-7, type "order.created", total 700 cents)`: 1,
				`processed order 8 (message order-8, type "order.created", total 800 cents)`: 1,
				"dead letter: message garbage-1 (malformed":                                  1,
			})
			waitFor(t, ctx, "the queue to be drained", func() (bool, error) { return bc.drained(ctx, queue) })
			p.stop(t, ctx)

			if n := p.count("processed order 7 "); n != 1 {
				t.Errorf("order 7 processed %d times, want once; output:\n%s", n, p.output())
			}
			if p.count("stopped: processed 2 orders") != 1 || p.count(", 1 dead letters") != 1 {
				t.Errorf("no summary of 2 orders and 1 dead letter; output:\n%s", p.output())
			}
		})
	}
}

// TestServeRefusesMemory: -serve on the in-memory queue could never
// receive anything.
func TestServeRefusesMemory(t *testing.T) {
	err := run(t.Context(), options{broker: "memory", serve: true}, os.Stdout)
	if err == nil || !strings.Contains(err.Error(), "-serve needs a broker") {
		t.Fatalf("got %v", err)
	}
}

// TestDemo runs the demo on the in-memory queue.
func TestDemo(t *testing.T) {
	var out strings.Builder
	if err := run(t.Context(), options{broker: "memory"}, &lockedWriter{w: &out}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "processed 39 orders") {
		t.Fatalf("output:\n%s", out.String())
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
