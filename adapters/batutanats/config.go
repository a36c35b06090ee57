package batutanats

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/nats-io/nats.go"
)

// Config configures a Queue. Only Stream is required; every other field has
// a documented default.
type Config struct {
	// Stream is the JetStream stream name. Required: 1 to 200 bytes of
	// ASCII letters, digits, - and _.
	Stream string
	// Subject is the subject messages are published to and the consumer
	// filters on. Default "batuta.<Stream>". Tokens of ASCII letters,
	// digits, - and _, separated by dots; no wildcards.
	Subject string
	// Consumer is the durable consumer's name, shared by every handle on
	// the queue (each handle is one more puller on it). Default "batuta".
	// Same characters as Stream.
	Consumer string
	// AckWait is the visibility timeout: how long a delivery may stay
	// unsettled before the server redelivers it. Default 30 s. Handlers
	// that run longer call Extend.
	AckWait time.Duration
	// MaxAckPending bounds the deliveries outstanding (unsettled) across
	// all handles of the consumer. Default 0: the server's default (1000).
	MaxAckPending int
	// PollWait bounds one blocking pull. A Receive whose ctx ends, or a
	// Close, returns at once; Close then waits up to this long for an
	// outstanding pull to hand its message back. Default 1 s.
	PollWait time.Duration
	// MaxDeliveries, when positive, bounds deliveries in the adapter and the
	// server: see the package documentation. Zero (the default) leaves the
	// bound to the caller (the queue trigger dead-letters by
	// Delivery.Attempt) and lets the server redeliver without limit.
	MaxDeliveries int
	// DeadLetterSubject receives dead-lettered messages. Default Subject +
	// ".dead". A stream New creates captures it; with an existing stream,
	// some stream must capture it for DeadLetter to work.
	DeadLetterSubject string
	// MaxMsgs and MaxBytes limit a stream that New creates (the stream
	// then refuses new messages when full: Publish fails rather than old
	// messages being dropped). Default 0: no limit. Ignored for an
	// existing stream.
	MaxMsgs  int64
	MaxBytes int64
	// Replicas of a stream that New creates. Default 1.
	Replicas int
	// MaxBodyBytes caps Message.Body; Publish refuses a bigger body with a
	// *batuta.PayloadTooLargeError. Default 1 MiB less 4 KiB for headers
	// (the server's default max_payload is 1 MiB).
	MaxBodyBytes int
	// NoCreate makes New fail with ErrStreamNotFound unless the stream and the
	// consumer exist. Default false: New creates them as needed.
	NoCreate bool
	// ConnectOptions are passed to nats.Connect by Open (credentials, TLS,
	// reconnect policy, ...). Open adds a connection name and, unless
	// given, unlimited reconnects. Ignored by New.
	ConnectOptions []nats.Option
	// Logger receives warnings (failed background work, dead letters).
	// Default slog.Default().
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultConsumer     = "batuta"
	DefaultAckWait      = 30 * time.Second
	DefaultPollWait     = time.Second
	DefaultMaxBodyBytes = 1<<20 - 4<<10
	maxNameLen          = 200
)

// WithDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Subject == "" && c.Stream != "" {
		c.Subject = "batuta." + c.Stream
	}
	if c.Consumer == "" {
		c.Consumer = DefaultConsumer
	}
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.PollWait == 0 {
		c.PollWait = DefaultPollWait
	}
	if c.DeadLetterSubject == "" && c.Subject != "" {
		c.DeadLetterSubject = c.Subject + ".dead"
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	if err := validName(c.Stream); err != nil {
		return &batuta.ConfigError{Field: "Stream", Reason: err.Error()}
	}
	if err := validName(c.Consumer); err != nil {
		return &batuta.ConfigError{Field: "Consumer", Reason: err.Error()}
	}
	if err := validSubject(c.Subject); err != nil {
		return &batuta.ConfigError{Field: "Subject", Reason: err.Error()}
	}
	if err := validSubject(c.DeadLetterSubject); err != nil {
		return &batuta.ConfigError{Field: "DeadLetterSubject", Reason: err.Error()}
	}
	switch {
	case c.DeadLetterSubject == c.Subject:
		return &batuta.ConfigError{Field: "DeadLetterSubject", Reason: "must differ from Subject"}
	case c.AckWait < time.Millisecond:
		return &batuta.ConfigError{Field: "AckWait", Reason: "must be at least 1ms"}
	case c.PollWait < 10*time.Millisecond:
		return &batuta.ConfigError{Field: "PollWait", Reason: "must be at least 10ms"}
	case c.MaxAckPending < 0:
		return &batuta.ConfigError{Field: "MaxAckPending", Reason: "must not be negative"}
	case c.MaxDeliveries < 0:
		return &batuta.ConfigError{Field: "MaxDeliveries", Reason: "must not be negative"}
	case c.MaxMsgs < 0:
		return &batuta.ConfigError{Field: "MaxMsgs", Reason: "must not be negative"}
	case c.MaxBytes < 0:
		return &batuta.ConfigError{Field: "MaxBytes", Reason: "must not be negative"}
	case c.Replicas < 1 || c.Replicas > 5:
		return &batuta.ConfigError{Field: "Replicas", Reason: "must be between 1 and 5"}
	case c.MaxBodyBytes < 0:
		return &batuta.ConfigError{Field: "MaxBodyBytes", Reason: "must not be negative"}
	}
	return nil
}

func isNameByte(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-' || b == '_'
}

// validName checks a stream or consumer name.
func validName(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	if len(s) > maxNameLen {
		return fmt.Errorf("%d bytes, over the limit of %d", len(s), maxNameLen)
	}
	for i := 0; i < len(s); i++ {
		if !isNameByte(s[i]) {
			return fmt.Errorf("%q has the character %q at byte %d; allowed are ASCII letters, digits, - and _", s, s[i], i)
		}
	}
	return nil
}

// validSubject checks a literal subject (no wildcards).
func validSubject(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	if len(s) > maxNameLen+16 {
		return fmt.Errorf("%d bytes, over the limit of %d", len(s), maxNameLen+16)
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" {
			return fmt.Errorf("%q has an empty token", s)
		}
		for i := 0; i < len(tok); i++ {
			if !isNameByte(tok[i]) {
				return fmt.Errorf("%q has the character %q; tokens allow ASCII letters, digits, - and _ (no wildcards)", s, tok[i])
			}
		}
	}
	return nil
}
