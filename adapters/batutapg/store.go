// Package batutapg connects batuta to PostgreSQL (through pgx v5): a durable
// Store that any number of orchestrators share, and a database trigger
// that starts runs from row changes through an outbox (see Outbox,
// Capture and the outbox trigger).
//
// # The Store
//
// New returns a Store on a *pgxpool.Pool. Its tables live in one schema
// (Config.Schema, default "batuta"), created and upgraded by versioned
// migrations embedded in this module: applied by New (idempotent, and safe
// when several instances start together) or, with Config.ManualMigrate, by
// Migrate / MigrateSchema in a deploy step.
//
//	store, err := batutapg.New(ctx, pool, batutapg.Config{})
//	if err != nil { ... }
//	defer store.Close()
//	o, err := batuta.New(batuta.Config{Store: store})
//
// Every instance pointing at the same database and schema shares the work:
// ready tasks are claimed in batches with FOR UPDATE SKIP LOCKED under a
// lease that the orchestrator renews, kept and judged on the database's
// clock; every write about a claim is fenced by its lease token, so a
// worker that lost its lease cannot overwrite the result of the one that
// took over; expired leases are rescued, and so, within seconds, are the
// leases of an instance whose liveness row went stale (see
// Config.LivenessTimeout); a task that keeps losing its worker fails after
// batuta.Config.MaxRescues rescues, counted apart from its attempts.
// LISTEN/NOTIFY wakes idle instances when work appears, and the waiters of a
// run when it ends, with polling as the fallback. Runs, task states, outputs,
// attempts and the last tick of each cron schedule survive restarts; an
// orchestrator started on the same schema resumes unfinished runs, and a
// task whose success was recorded never runs again.
//
// CompleteInTx records a task's success in the caller's transaction, so a
// task's own database writes and its success commit together: exactly once
// in effect, even across crashes.
//
// The Store passes the conformance suite in package batutatest. See
// docs/store-postgres.md in the repository for the full guide.
package batutapg

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/runwatch"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// Config configures a Store. The zero value is valid: schema "batuta",
// migrations applied by New, LISTEN/NOTIFY on, slog.Default().
type Config struct {
	// Schema holds the store's tables. Default "batuta". It is created by
	// the migrations if missing. At most 58 bytes (the notification
	// channel "<schema>_work" must fit PostgreSQL's 63-byte limit); quoted
	// everywhere, so any other name is safe.
	Schema string
	// ManualMigrate, if true, makes New leave the schema alone: apply the
	// migrations yourself with (*Store).Migrate or MigrateSchema (in a
	// deploy step, say). New then fails if the schema is not at the
	// version this build needs. By default New applies them; that is
	// idempotent and safe when several instances start together.
	ManualMigrate bool
	// Logger receives warnings (the notification self-check failing, the
	// listener reconnecting). Default slog.Default().
	Logger *slog.Logger
	// DisableListen turns off LISTEN/NOTIFY wake-ups from other processes:
	// WorkAvailable then only reports work this Store created itself and
	// orchestrators find the rest by polling. The store still sends
	// notifications, for instances that listen.
	DisableListen bool
	// ListenCheckTimeout bounds the start-up self-check that a
	// notification sent through the pool comes back on the listening
	// connection. If it does not (a transaction-pooling PgBouncer drops
	// LISTEN), the store logs a warning and stops listening: polling
	// only. Default 3s.
	ListenCheckTimeout time.Duration
	// MaxBatch caps how many runs, completions or claim calls concurrent
	// callers may have combined into one round trip. Default 1000.
	MaxBatch int
	// MaxFlushes caps how many combined round trips of runs created, and
	// of claims, run at once, each on its own connection. Default 2.
	MaxFlushes int
	// MaxCompletionFlushes caps how many combined round trips of
	// completions run at once. Default 2, and a round trip beyond the
	// first starts only when 256 or more completions wait for one: when a
	// burst of tasks ends at once (a cron tick's runs), the first one or
	// two completions would otherwise take the slots alone while the rest
	// waited, and concurrent completion transactions contend on the
	// server; a backlog that large is a throughput load, which a second
	// round trip serves (a fifth more limited runs per second in
	// bench/flowbench than with one).
	// 1 keeps one completion round trip at a time.
	//
	// As many chain steps again (a worker's success of a task with
	// dependents, claiming its successor: see "Throughput" in
	// docs/store-postgres.md) run beside those round trips, each in a
	// transaction of its own, rather than wait for a busy one: a step
	// then costs its own round trip, not the rest of another's. (Not
	// while completions wait for the next round trip: a step then joins
	// it.)
	MaxCompletionFlushes int
	// ClockSkew is how far behind the clock of the process that created a
	// run another claimer's clock may be and still see the run's first
	// tasks as due at once: a new task is due from its run's CreatedAt
	// minus ClockSkew. (It also places new work that much ahead of retries
	// due at the same time.) Default 1m.
	ClockSkew time.Duration
	// ActiveRecount is how long the count of unfinished runs that enforces
	// NewRun.MaxActive is reused before it is counted again; in between,
	// runs created and finished through this Store adjust it. Default 1s.
	ActiveRecount time.Duration
	// Clock is the clock of the orchestrators using this Store (set it to
	// the same value as batuta.Config.Clock). Leases are kept and judged
	// on the database's clock: the Store measures how far Clock is from
	// the database's clock_timestamp() at start and every
	// LivenessInterval, and converts the lease times it is given (claims,
	// extensions, the rescuer's now) by that offset, so an instance whose
	// clock is ahead or behind neither rescues healthy tasks early nor
	// holds dead ones long. Default batuta.SystemClock.
	Clock batuta.Clock
	// LivenessInterval is how often the Store renews the liveness row of
	// each owner (orchestrator NodeID) it claimed tasks for, re-measures
	// the clock offset, releases the claims of requests whose reply was
	// lost, and rescues the tasks of dead owners. Default 1s; negative
	// turns liveness off (leases alone decide).
	LivenessInterval time.Duration
	// LivenessTimeout is how old an owner's liveness row may grow before
	// its leases are void and any live Store rescues its running tasks:
	// an instance killed with SIGKILL loses its tasks after about
	// LivenessTimeout + LivenessInterval instead of a whole lease, while a
	// live instance's long task keeps its lease. Default 4 ×
	// LivenessInterval: 4s, so a killed instance's tasks are rescued within
	// about 5s. Must exceed LivenessInterval.
	LivenessTimeout time.Duration
	// CompletionLockWait bounds how long a combined completion batch waits
	// for run rows held by other transactions (a slow CompleteInTx, say).
	// Past it, the completions of every run that is not locked are
	// committed at once, and those of the locked runs wait on their own,
	// so one held run row delays only its own run's completions. Default
	// 1s.
	CompletionLockWait time.Duration
}

func (c Config) withDefaults() Config {
	if c.Schema == "" {
		c.Schema = "batuta"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ListenCheckTimeout == 0 {
		c.ListenCheckTimeout = 3 * time.Second
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 1000
	}
	if c.MaxFlushes == 0 {
		c.MaxFlushes = 2
	}
	if c.MaxCompletionFlushes == 0 {
		c.MaxCompletionFlushes = 2
	}
	if c.ActiveRecount == 0 {
		c.ActiveRecount = time.Second
	}
	if c.ClockSkew == 0 {
		c.ClockSkew = time.Minute
	}
	if c.Clock == nil {
		c.Clock = batuta.SystemClock{}
	}
	if c.LivenessInterval == 0 {
		c.LivenessInterval = time.Second
	}
	if c.LivenessTimeout == 0 {
		c.LivenessTimeout = 4 * c.LivenessInterval
		if c.LivenessInterval < 0 {
			c.LivenessTimeout = 4 * time.Second
		}
	}
	if c.CompletionLockWait == 0 {
		c.CompletionLockWait = time.Second
	}
	return c
}

func (c Config) validate() error {
	if err := validIdent("schema", c.Schema); err != nil {
		return err
	}
	if len(c.Schema) > maxIdentLen-len(channelSuffix) {
		return fmt.Errorf("batutapg: schema name %q: %d bytes, over %d (the channel %q must fit 63 bytes): %w",
			c.Schema, len(c.Schema), maxIdentLen-len(channelSuffix), c.Schema+channelSuffix, batuta.ErrInvalidIdentifier)
	}
	switch {
	case c.ListenCheckTimeout < 0:
		return &batuta.ConfigError{Field: "ListenCheckTimeout", Reason: "must not be negative"}
	case c.MaxBatch < 0:
		return &batuta.ConfigError{Field: "MaxBatch", Reason: "must not be negative"}
	case c.MaxFlushes < 0:
		return &batuta.ConfigError{Field: "MaxFlushes", Reason: "must not be negative"}
	case c.MaxCompletionFlushes < 0:
		return &batuta.ConfigError{Field: "MaxCompletionFlushes", Reason: "must not be negative"}
	case c.ActiveRecount < 0:
		return &batuta.ConfigError{Field: "ActiveRecount", Reason: "must not be negative"}
	case c.ClockSkew < 0:
		return &batuta.ConfigError{Field: "ClockSkew", Reason: "must not be negative"}
	case c.LivenessInterval > 0 && c.LivenessTimeout <= c.LivenessInterval:
		return &batuta.ConfigError{Field: "LivenessTimeout", Reason: "must exceed LivenessInterval"}
	case c.CompletionLockWait < 0:
		return &batuta.ConfigError{Field: "CompletionLockWait", Reason: "must not be negative"}
	}
	return nil
}

// channelSuffix makes the notification channel name from the schema name;
// doneSuffix, that of the channel of finished runs (as long).
const (
	channelSuffix = "_work"
	doneSuffix    = "_done"
)

// Store is the PostgreSQL batuta.Store: durable, and shared by any number of
// orchestrators pointing at the same database and schema. Create it with
// New; it implements batuta.WorkNotifier.
//
// Ownership: the Store does not own the pool or DB (Close leaves it open). New
// starts three goroutines that the Store owns until Close: the listener, on
// one extra connection dialled with the pool's configuration, that LISTENs
// for other processes' work notifications and run ends (see WatchRun); the notifier, that sends this
// Store's own (see WorkAvailable); and the liveness loop, on another
// connection of its own, that renews its instances' liveness rows, measures
// the clock offset, releases lost claims and rescues dead instances' tasks
// (see Config.LivenessInterval). Close stops all three, deletes its
// liveness rows and closes the connections; call it after the orchestrators
// using the store have returned from Run.
//
// All methods are safe for concurrent use.
type Store struct {
	cfg     Config
	conns   conns
	log     *slog.Logger
	schema  string // quoted
	channel string // unquoted channel name, for pg_notify($1)
	// doneChannel carries the IDs of finished runs (see runsFinished).
	doneChannel string
	// self is the payload of this Store's work notifications, random per
	// Store, so that its listener can skip them (see relay).
	self string
	q    queries
	lq   liveQueries
	// noStep turns completeStep off (tests compare it with the general
	// statements); steps counts the completions it recorded.
	noStep bool
	steps  atomic.Int64
	// stepBacklog says the last step saw a ready task waiting: the next
	// uses the full step statement (always with stepFull, for tests).
	stepBacklog atomic.Bool
	stepFull    bool
	// noLink turns the link statement off (the lean step statement then
	// records links too; tests compare the two); links counts the
	// completions it recorded.
	noLink bool
	links  atomic.Int64
	// noCreateClaim turns the claiming create statement off (tests
	// compare it with the general statements); createClaims counts the
	// root tasks it leased; createBacklog says the last one saw a ready task
	// waiting: the next create claims the general way, which takes it.
	noCreateClaim bool
	createClaims  atomic.Int64
	createBacklog atomic.Bool
	// stepSlots bounds the chain steps recorded beside the completion
	// combiner (see completeAndClaim).
	stepSlots chan struct{}
	fq        flowQueries
	oq        opsQueries

	// setBounded configures a combined completion's transaction: generic
	// plans, lock waits bounded by CompletionLockWait.
	setBounded string

	work        chan struct{}
	notifyReq   chan struct{}
	workPending atomic.Bool // a work notification is due
	doneMu      sync.Mutex
	donePending []string      // finished runs to announce
	watch       *runwatch.Set // Wait calls watching runs

	creates   *combiner[createItem, createResult]
	claims    *combiner[batuta.ClaimParams, []batuta.Claim]
	completes *combiner[compItem, compOut]
	ticks     *combiner[tickItem, bool]

	active activeEstimate

	// flowWork: the last claim found concurrency work (a group that can
	// admit, ready tasks of task-level groups); flowCreated: this Store
	// created runs under a limit since. Either makes the next claim use
	// the full statement (see queries.claimPlain).
	flowWork, flowCreated atomic.Bool
	// nextDelayed is when the earliest delayed task is due (Unix ns; the
	// last claim's probe, lowered by delayed tasks this Store wrote
	// since, delayedCreated), and unpark whether a task-level group had
	// parked tasks and room: the next claim promotes when either says so.
	nextDelayed, delayedCreated atomic.Int64
	unpark                      atomic.Bool
	lastProbe                   atomic.Int64 // when the last probe was sent (Unix ns)
	soonAsked                   atomic.Int64 // when NextDue last looked for runs starting soon (wall clock, Unix ns)
	soonCreated                 atomic.Bool  // a run starting soon was created since
	// copySkip: copyable batches left to insert without trying COPY,
	// after a COPY failed (see copyCreates).
	copySkip atomic.Int32

	live liveness

	listening   atomic.Bool   // LISTEN connection up and self-check passed
	listenPID   atomic.Uint32 // backend PID of the latest LISTEN connection
	listenDelay atomic.Int64  // the listener's latest reconnect delay (ns)

	stop      context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

var (
	_ batuta.WorkNotifier = (*Store)(nil)
	_ batuta.RunWatcher   = (*Store)(nil)
)

// New returns a Store on pool, configured by cfg. Unless cfg.ManualMigrate
// is set it applies the schema migrations first (see Migrate). It starts
// the notification listener (unless cfg.DisableListen); release it with
// Close. ctx bounds the migration and checks made here, not the Store's
// lifetime.
//
// Errors: a *batuta.ConfigError or batuta.ErrInvalidIdentifier for a bad
// cfg, or the database error.
func New(ctx context.Context, pool *pgxpool.Pool, cfg Config) (*Store, error) {
	if pool == nil {
		return nil, &batuta.ConfigError{Field: "pool", Reason: "is nil"}
	}
	return newStore(ctx, poolConns{pool}, cfg)
}

// NewFromDB is New for a *sql.DB opened with the pgx stdlib driver
// (github.com/jackc/pgx/v5/stdlib: sql.Open("pgx", dsn), or
// stdlib.OpenDBFromPool). The Store borrows the DB's connections one
// statement batch at a time; the listener dials its own connection with the
// configuration of the DB's connections. Other drivers are refused at the
// first use with an error naming the driver's connection type.
func NewFromDB(ctx context.Context, db *sql.DB, cfg Config) (*Store, error) {
	if db == nil {
		return nil, &batuta.ConfigError{Field: "db", Reason: "is nil"}
	}
	return newStore(ctx, sqlConns{db}, cfg)
}

func newStore(ctx context.Context, cs conns, cfg Config) (*Store, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Store{
		cfg:         cfg,
		conns:       cs,
		log:         cfg.Logger,
		schema:      quoteIdent(cfg.Schema),
		channel:     cfg.Schema + channelSuffix,
		doneChannel: cfg.Schema + doneSuffix,
		self:        "w:" + storeToken(),
		watch:       runwatch.New(0),
		work:        make(chan struct{}, 1),
		notifyReq:   make(chan struct{}, 1),
	}
	s.q = buildQueries(s.schema)
	s.flowWork.Store(true)
	s.unpark.Store(true)
	s.delayedCreated.Store(math.MaxInt64)
	s.lq = buildLiveQueries(s.schema)
	s.fq = buildFlowQueries(s.schema)
	s.oq = buildOpsQueries(s.schema)
	s.setBounded = fmt.Sprintf(setGeneric+", set_config('lock_timeout', '%dms', true)", max(cfg.CompletionLockWait.Milliseconds(), 1))
	err := cs.with(ctx, func(c *pgx.Conn) error {
		if cfg.ManualMigrate {
			return checkVersion(ctx, c, cfg.Schema)
		}
		return MigrateSchema(ctx, c, cfg.Schema)
	})
	if err != nil {
		return nil, err
	}
	s.creates = newCombiner(cfg.MaxBatch, cfg.MaxFlushes, s.flushCreates)
	s.completes = newCombiner(cfg.MaxBatch, cfg.MaxCompletionFlushes, s.flushCompletions)
	s.completes.spill = completionSpill
	s.stepSlots = make(chan struct{}, cfg.MaxCompletionFlushes)
	s.claims = newCombiner(cfg.MaxBatch, cfg.MaxFlushes, s.flushClaims)
	// Claims made for a caller that gave up mid-statement are released.
	s.creates.abandoned = s.abandonedCreates
	s.completes.abandoned = s.abandonedCompletes
	s.claims.abandoned = s.abandonedClaims
	s.ticks = newCombiner(cfg.MaxBatch, 1, s.flushTicks)
	s.active.every = cfg.ActiveRecount

	lctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.notifier(lctx)
	}()
	if !cfg.DisableListen {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.listen(lctx)
		}()
	}
	s.startLiveness(ctx, lctx)
	return s, nil
}

// Migrate applies the store's pending schema migrations (see
// MigrateSchema). New does it already unless Config.ManualMigrate is set.
func (s *Store) Migrate(ctx context.Context) error {
	return s.conns.with(ctx, func(c *pgx.Conn) error { return MigrateSchema(ctx, c, s.cfg.Schema) })
}

// Close stops the notification listener and waits for it. It does not
// close the pool. Calls after the first return nil; other methods keep
// working (they only use the pool), but WorkAvailable no longer reports
// other processes' work.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.stop()
		s.wg.Wait()
	})
	return nil
}

// Durable returns true: accepted runs are in PostgreSQL.
func (s *Store) Durable() bool { return true }

// WorkAvailable returns a channel that receives (buffered 1, never
// blocking the sender) when work may have become ready: at once for runs
// created and tasks made ready through this Store, and through
// LISTEN/NOTIFY for other processes' (this Store notifies them after each
// such commit, from its own short transaction, coalescing bursts). A lost
// signal only costs latency; orchestrators still poll.
func (s *Store) WorkAvailable() <-chan struct{} { return s.work }

// Listening reports whether LISTEN/NOTIFY wake-ups from other processes are
// working: the listener is connected and its self-check passed.
func (s *Store) Listening() bool { return s.listening.Load() }

// Schema returns the schema name the store uses (unquoted).
func (s *Store) Schema() string { return s.cfg.Schema }

func (s *Store) signal() {
	select {
	case s.work <- struct{}{}:
	default:
	}
}

// retryable reports whether err is a transient conflict worth repeating the
// same atomic statement for (deadlock, serialization failure).
func retryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "40P01" || pe.Code == "40001"
	}
	return false
}

// withRetry runs fn until it succeeds, fails with a non-transient error, or
// has tried 5 times.
func withRetry(ctx context.Context, fn func() error) error {
	var err error
	for i := 0; i < 5; i++ {
		if err = fn(); err == nil || !retryable(err) {
			return err
		}
		if ctx.Err() != nil {
			return err
		}
	}
	return err
}

// sendHot runs the statements queue adds as one round trip, in an explicit
// transaction that plans them generically (plan_cache_mode =
// force_generic_plan, local to the transaction): the store's hot statements
// are prepared once per connection, and planning their CTEs afresh for
// each execution, as PostgreSQL's plan cache otherwise often chooses to,
// costs more than executing them. The transaction also turns sequential
// scans off: a connection keeps its generic plan for as long as nothing
// invalidates it, and a plan made while a table was empty (a fresh
// deployment) would read the table through on every call once it is full;
// every hot statement finds its rows through an index. read consumes the
// results of the queued statements in order. On error the transaction is
// rolled back and the connection stays in the pool.
//
// With asyncCommit the transaction also commits without waiting for its
// WAL to reach disk (synchronous_commit = off): for claims and lease
// extensions, whose loss in a server crash only means a task is claimed
// again (its old token void, so the first claimant's writes stay fenced),
// this takes a disk flush off the path from submit to task start.
func (s *Store) sendHot(ctx context.Context, asyncCommit bool, queue func(*pgx.Batch), read func(pgx.BatchResults) error) error {
	set := setGeneric
	if asyncCommit {
		set = setGenericAsync
	}
	return s.sendHotSet(ctx, set, queue, read)
}

// sendHotSet is sendHot with set as the statement that configures the
// transaction.
func (s *Store) sendHotSet(ctx context.Context, set string, queue func(*pgx.Batch), read func(pgx.BatchResults) error) error {
	return s.conns.with(ctx, func(c *pgx.Conn) error {
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		b.Queue(set)
		queue(b)
		b.Queue("COMMIT")
		br := c.SendBatch(ctx, b)
		err := func() error {
			for i := 0; i < 2; i++ {
				if _, err := br.Exec(); err != nil {
					return err
				}
			}
			if err := read(br); err != nil {
				return err
			}
			_, err := br.Exec()
			return err
		}()
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil && !c.IsClosed() && c.PgConn().TxStatus() != 'I' {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_, _ = c.Exec(rctx, "ROLLBACK")
		}
		return err
	})
}

// conns is where a Store gets its connections.
type conns interface {
	// with runs fn on a connection it holds for the duration.
	with(ctx context.Context, fn func(*pgx.Conn) error) error
	// config returns the configuration to dial a connection of one's own.
	config(ctx context.Context) (*pgx.ConnConfig, error)
}

type poolConns struct{ p *pgxpool.Pool }

func (c poolConns) with(ctx context.Context, fn func(*pgx.Conn) error) error {
	return c.p.AcquireFunc(ctx, func(pc *pgxpool.Conn) error { return fn(pc.Conn()) })
}

func (c poolConns) config(context.Context) (*pgx.ConnConfig, error) {
	return c.p.Config().ConnConfig, nil
}

type sqlConns struct{ db *sql.DB }

func (c sqlConns) with(ctx context.Context, fn func(*pgx.Conn) error) error {
	conn, err := c.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("batutapg: the *sql.DB's connections are %T, not the pgx stdlib driver's", dc)
		}
		return fn(sc.Conn())
	})
}

func (c sqlConns) config(ctx context.Context) (*pgx.ConnConfig, error) {
	var cfg *pgx.ConnConfig
	err := c.with(ctx, func(pc *pgx.Conn) error {
		cfg = pc.Config()
		return nil
	})
	return cfg, err
}

// query runs sql and calls each for every row.
func (s *Store) query(ctx context.Context, sql string, args []any, each func(pgx.Rows) error) error {
	return s.conns.with(ctx, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			if err := each(rows); err != nil {
				return err
			}
		}
		return rows.Err()
	})
}

// queryRow runs sql and scans its one row into dest (pgx.ErrNoRows if none).
func (s *Store) queryRow(ctx context.Context, sql string, args []any, dest ...any) error {
	return s.conns.with(ctx, func(c *pgx.Conn) error { return c.QueryRow(ctx, sql, args...).Scan(dest...) })
}

// The per-transaction settings of sendHot.
const (
	setGeneric      = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true), set_config('enable_seqscan', 'off', true)"
	setGenericAsync = setGeneric + ", set_config('synchronous_commit', 'off', true)"
)

// querier is what the store's statements run on: the pool, or a caller's
// transaction (CompleteInTx).
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

var (
	_ querier = (*pgxpool.Pool)(nil)
	_ querier = (*pgx.Conn)(nil)
	_ querier = (pgx.Tx)(nil)
)
