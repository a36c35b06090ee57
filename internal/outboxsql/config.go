package outboxsql

import (
	"database/sql"
	"log/slog"
	"time"

	"github.com/batuta-dev/batuta"
)

// Defaults of the Trigger settings, re-exported by each adapter.
const (
	DefaultBatchSize          = 100
	DefaultMinPollInterval    = 10 * time.Millisecond
	DefaultMaxPollInterval    = time.Second
	DefaultPollInterval       = time.Second
	DefaultLease              = 30 * time.Second
	DefaultMaxWaiting         = 1000
	DefaultMaxBackoff         = 5 * time.Second
	DefaultStaleCheckInterval = time.Minute
	// MaxBatchSize caps BatchSize.
	MaxBatchSize = 10000
)

// Polling is the TriggerConfig of a database/sql adapter that polls its
// outbox (batutamysql, batutasqlite), field for field: the adapter's own
// TriggerConfig, which documents each field for its database, converts to
// and from it (Polling[Outbox](cfg)). Keep the two in step.
type Polling[O any] struct {
	DB                 *sql.DB
	Outbox             O
	BatchSize          int
	MinPollInterval    time.Duration
	MaxPollInterval    time.Duration
	Lease              time.Duration
	MaxWaiting         int
	MaxBackoff         time.Duration
	StaleCheckInterval time.Duration
	Logger             *slog.Logger
}

// WithDefaults fills in the zero fields but Outbox, which the adapter
// defaults itself.
func (c Polling[O]) WithDefaults() Polling[O] {
	Defaults(&c.BatchSize, &c.Lease, &c.MaxWaiting, &c.MaxBackoff, &c.Logger)
	setDefault(&c.MinPollInterval, DefaultMinPollInterval)
	setDefault(&c.MaxPollInterval, DefaultMaxPollInterval)
	setDefault(&c.StaleCheckInterval, DefaultStaleCheckInterval)
	return c
}

// Validate checks c after WithDefaults, but Outbox, which the adapter
// validates itself.
func (c Polling[O]) Validate() error {
	switch {
	case c.DB == nil:
		return &batuta.ConfigError{Field: "DB", Reason: "required"}
	case c.MinPollInterval < 0:
		return &batuta.ConfigError{Field: "MinPollInterval", Reason: "must not be negative"}
	case c.MaxPollInterval < c.MinPollInterval:
		return &batuta.ConfigError{Field: "MaxPollInterval", Reason: "must not be below MinPollInterval"}
	}
	return Validate(c.BatchSize, c.Lease, c.MaxWaiting, c.MaxBackoff)
}

// Defaults fills in the zero settings every outbox Trigger has.
func Defaults(batchSize *int, lease *time.Duration, maxWaiting *int, maxBackoff *time.Duration, logger **slog.Logger) {
	setDefault(batchSize, DefaultBatchSize)
	setDefault(lease, DefaultLease)
	setDefault(maxWaiting, DefaultMaxWaiting)
	setDefault(maxBackoff, DefaultMaxBackoff)
	if *logger == nil {
		*logger = slog.Default()
	}
}

// Validate checks the settings every outbox Trigger has, after Defaults.
func Validate(batchSize int, lease time.Duration, maxWaiting int, maxBackoff time.Duration) error {
	switch {
	case batchSize < 1 || batchSize > MaxBatchSize:
		return &batuta.ConfigError{Field: "BatchSize", Reason: "must be between 1 and 10000"}
	case lease < time.Second:
		return &batuta.ConfigError{Field: "Lease", Reason: "must be at least 1s"}
	case maxWaiting < 1:
		return &batuta.ConfigError{Field: "MaxWaiting", Reason: "must be positive"}
	case maxBackoff < 0:
		return &batuta.ConfigError{Field: "MaxBackoff", Reason: "must not be negative"}
	}
	return nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Prepare applies the defaults and validates c: the settings here, the
// Outbox with the adapter's withDefaults and validate (given "Outbox." as
// the field prefix).
func (c Polling[O]) Prepare(withDefaults func(O) O, validate func(O, string) error) (Polling[O], error) {
	c = c.WithDefaults()
	c.Outbox = withDefaults(c.Outbox)
	if err := c.Validate(); err != nil {
		return c, err
	}
	return c, validate(c.Outbox, "Outbox.")
}
