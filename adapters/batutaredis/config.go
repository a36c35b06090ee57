package batutaredis

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/batuta-dev/batuta"
)

// Config configures a Queue. Only Stream is required; every other field has
// a documented default.
type Config struct {
	// Stream is the key of the Redis stream. Required: 1 to 200 bytes of
	// ASCII letters, digits and . _ - : / (no braces, since the key is used
	// as the cluster hash tag of its companion keys).
	Stream string
	// Group is the consumer group. Default "batuta". Same character rules
	// as Stream.
	Group string
	// Consumer names this handle within the group. Default: a name unique
	// to the handle ("<host>-<pid>-<random>"). Two live handles must never
	// share a name: the name is what fences one handle's settlements from
	// another's.
	Consumer string
	// VisibilityTimeout is how long a delivery may stay unsettled before
	// another consumer may take it over (the min-idle time of the claim,
	// XPENDING ... IDLE + XCLAIM: XAUTOCLAIM's semantics). Default
	// 30 s. Handlers that run longer call Extend.
	VisibilityTimeout time.Duration
	// ClaimInterval is how often a consumer scans the group's pending
	// entries for deliveries idle past VisibilityTimeout, and moves due
	// delayed nacks back into the stream. Default VisibilityTimeout/2,
	// at most 5 s.
	ClaimInterval time.Duration
	// BlockTimeout bounds one blocking read (XREADGROUP BLOCK). A Receive
	// whose ctx ends, or a Close, returns at once; Close then waits up to
	// this long for an outstanding read to hand its entries back. Default
	// 1 s.
	BlockTimeout time.Duration
	// MaxLen caps the stream length (XADD MAXLEN ~ MaxLen) on every add.
	// Zero (the default) means no cap. Trimming drops the oldest entries,
	// settled or not.
	MaxLen int64
	// RetainAcked keeps acked entries in the stream (XACK only), e.g. for
	// other consumer groups reading the same stream; bound the stream with
	// MaxLen then. Default false: Ack also deletes the entry (XDEL).
	RetainAcked bool
	// MaxDeliveries, when positive, bounds deliveries in the adapter: an
	// entry about to be delivered for more than MaxDeliveries times (a
	// consumer crashed on it again and again), or nacked on its
	// MaxDeliveries-th delivery, is moved to DeadLetterStream instead. Zero
	// (the default) leaves the bound to the caller: the queue trigger
	// dead-letters by Delivery.Attempt.
	MaxDeliveries int
	// DeadLetterParkDelay bounds the retries of the MaxDeliveries backstop:
	// when moving an entry over MaxDeliveries to DeadLetterStream fails
	// (the dead-letter key holds another type, the server refuses writes
	// to it...), the entry is parked instead: re-added to the delayed set,
	// its attempts kept, due after DeadLetterParkDelay, and the failure is
	// logged at error level. When it comes back the move is tried again,
	// so a dead-letter stream that keeps failing costs one try per
	// DeadLetterParkDelay, and nothing is lost. Default 1 h
	// (batuta.DefaultQueueParkDelay, the queue trigger's ParkDelay).
	DeadLetterParkDelay time.Duration
	// ReadAhead is how many entries one read (XREADGROUP COUNT) may take
	// beyond what Receive asked for; the handle keeps them for the next
	// Receive calls, which return at once. A consumer that receives one
	// message at a time then spends one read round trip per ReadAhead+1
	// messages instead of one per message. Entries read ahead are
	// delivered to this consumer (pending in the group) but not yet handed
	// out: while the handle keeps them it extends their visibility (every
	// VisibilityTimeout/3, XCLAIM ... JUSTID, which counts no delivery),
	// Close hands them back without counting a delivery, and a consumer
	// that crashes costs each of them one delivery (they come back after
	// VisibilityTimeout with Attempt one higher). Other consumers of the
	// group do not see them while they are kept. Default 16
	// (DefaultReadAhead); -1 disables read-ahead.
	ReadAhead int
	// DeadLetterStream receives dead-lettered messages (MaxDeliveries, or
	// DeadLetter called by the queue trigger), with fields "dead_reason"
	// and "attempts" added. Default Stream + ":dead".
	DeadLetterStream string
	// MaxBodyBytes caps Message.Body; Publish refuses a bigger body with a
	// *batuta.PayloadTooLargeError. Default 1 MiB.
	MaxBodyBytes int
	// NoCreate makes New fail with ErrStreamNotFound unless the stream and
	// its group exist, and Publish fail rather than create the stream.
	// Default false: New creates both if missing (XGROUP CREATE ... 0
	// MKSTREAM, so entries already in a new stream are delivered).
	NoCreate bool
	// Logger receives warnings (failed background work, dead letters).
	// Default slog.Default().
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultGroup             = "batuta"
	DefaultVisibilityTimeout = 30 * time.Second
	DefaultBlockTimeout      = time.Second
	DefaultMaxBodyBytes      = 1 << 20
	// DefaultReadAhead is the default of Config.ReadAhead.
	DefaultReadAhead = 16
	maxClaimInterval = 5 * time.Second
	maxNameLen       = 200
)

// WithDefaults returns a copy of c with zero fields set to their defaults.
// Consumer gets a fresh unique name on every call.
func (c Config) WithDefaults() Config {
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.Consumer == "" {
		c.Consumer = uniqueConsumer()
	}
	if c.VisibilityTimeout == 0 {
		c.VisibilityTimeout = DefaultVisibilityTimeout
	}
	if c.ClaimInterval == 0 {
		c.ClaimInterval = min(max(c.VisibilityTimeout/2, time.Millisecond), maxClaimInterval)
	}
	if c.BlockTimeout == 0 {
		c.BlockTimeout = DefaultBlockTimeout
	}
	if c.DeadLetterStream == "" && c.Stream != "" {
		c.DeadLetterStream = c.Stream + ":dead"
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.DeadLetterParkDelay == 0 {
		c.DeadLetterParkDelay = batuta.DefaultQueueParkDelay
	}
	if c.ReadAhead == 0 {
		c.ReadAhead = DefaultReadAhead
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	for _, f := range []struct{ field, v string }{
		{"Stream", c.Stream},
		{"Group", c.Group},
		{"Consumer", c.Consumer},
		{"DeadLetterStream", c.DeadLetterStream},
	} {
		if err := validName(f.v); err != nil {
			return &batuta.ConfigError{Field: f.field, Reason: err.Error()}
		}
	}
	switch {
	case c.DeadLetterStream == c.Stream:
		return &batuta.ConfigError{Field: "DeadLetterStream", Reason: "must differ from Stream"}
	case c.VisibilityTimeout < time.Millisecond:
		return &batuta.ConfigError{Field: "VisibilityTimeout", Reason: "must be at least 1ms"}
	case c.ClaimInterval < time.Millisecond:
		return &batuta.ConfigError{Field: "ClaimInterval", Reason: "must be at least 1ms"}
	case c.BlockTimeout < time.Millisecond:
		return &batuta.ConfigError{Field: "BlockTimeout", Reason: "must be at least 1ms"}
	case c.MaxLen < 0:
		return &batuta.ConfigError{Field: "MaxLen", Reason: "must not be negative"}
	case c.MaxDeliveries < 0:
		return &batuta.ConfigError{Field: "MaxDeliveries", Reason: "must not be negative"}
	case c.DeadLetterParkDelay < time.Millisecond:
		return &batuta.ConfigError{Field: "DeadLetterParkDelay", Reason: "must be at least 1ms"}
	case c.ReadAhead < -1:
		return &batuta.ConfigError{Field: "ReadAhead", Reason: "must be -1 (off), 0 (default) or positive"}
	case c.MaxBodyBytes < 0:
		return &batuta.ConfigError{Field: "MaxBodyBytes", Reason: "must not be negative"}
	}
	return nil
}

// validName checks a stream, group or consumer name.
func validName(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	if len(s) > maxNameLen {
		return fmt.Errorf("%d bytes, over the limit of %d", len(s), maxNameLen)
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		switch {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		case b == '.', b == '_', b == '-', b == ':', b == '/':
		default:
			return fmt.Errorf("%q has the character %q at byte %d; allowed are ASCII letters, digits and . _ - : /", s, b, i)
		}
	}
	return nil
}

// uniqueConsumer returns "<host>-<pid>-<random>", cut to the name rules.
func uniqueConsumer() string {
	host, _ := os.Hostname()
	clean := make([]byte, 0, len(host))
	for i := 0; i < len(host) && len(clean) < 64; i++ {
		if validName(host[i:i+1]) == nil {
			clean = append(clean, host[i])
		}
	}
	if len(clean) == 0 {
		clean = []byte("consumer")
	}
	return fmt.Sprintf("%s-%d-%s", clean, os.Getpid(), rand.Text()[:10])
}
