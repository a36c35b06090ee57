// Package batutasqlite provides a durable batuta.Store for a single process,
// kept in a SQLite file through modernc.org/sqlite (pure Go, no cgo).
//
// Open a file with Open, or hand New a *sql.DB you opened yourself. Either
// way the schema migrations are applied on open (see Migrate) and the
// database runs in WAL mode.
//
// # Writes
//
// Every write goes through one connection with BEGIN IMMEDIATE, so the
// store's own writers never meet SQLITE_BUSY; writers in other connections or
// processes (your application, the outbox trigger) wait up to
// Config.BusyTimeout for the write lock. Concurrent writes are
// group-committed: one transaction, and one fsync, serves up to 128 of them,
// each in its own savepoint. Reads use other connections and a consistent
// WAL snapshot, so they never wait for writes.
//
// # Cancellation
//
// A method's ctx bounds its wait for the write connection and its reads.
// A write that has begun runs to its commit whatever happens to ctx, so a
// canceled call either wrote everything or nothing, and returns an error
// only in the second case.
//
// # Crashes
//
// Every run CreateRun accepted and every task result CompleteTasks recorded
// survives a process crash (and power loss with Synchronous "FULL", the
// default). On restart an orchestrator picks up unfinished runs: tasks that
// recorded success are not run again; tasks that were running when the
// process died are rescued when their lease expires.
//
// # Flow control
//
// Delayed runs, priorities, workflow and task concurrency groups, debounce,
// pause and rate reservations (batuta.Store's flow-control contract) are
// kept in the database, each change in the write transaction of the call
// that makes it, so every waiting state survives a crash and every limit is
// exact: the single writer reads and updates each counter in one
// transaction. Waiting work is held out of the claim index, so claims do
// not read it. See docs/store-sqlite.md.
package batutasqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Config configures a Store. The zero value is ready to use.
type Config struct {
	// BusyTimeout is how long a write waits for the database's write lock
	// while another connection or process holds it, before failing with
	// SQLITE_BUSY. Default 5s.
	BusyTimeout time.Duration
	// Synchronous is SQLite's synchronous setting for the store's writes:
	// "FULL" (default) makes every committed run and task result survive
	// power loss as well as a process crash; "NORMAL" survives a process
	// crash (kill -9) but may lose the last commits on power loss or an OS
	// crash, in exchange for fewer fsyncs.
	Synchronous string
	// ReadConns is how many connections Open allows for reads (GetRun,
	// ListRuns, FindRun, LastTick), next to the one write connection.
	// Default 4. New ignores it: the *sql.DB's own limits apply.
	ReadConns int
	// ManualMigrate, if true, makes Open and New leave the schema alone:
	// apply the migrations yourself with Migrate (in a deploy step, say).
	// They then fail unless the database is at SchemaVersion(). By default
	// they apply pending migrations, which is idempotent and safe when
	// several processes open the file at once.
	ManualMigrate bool
	// Logger receives migration and rescue messages. Default slog.Default().
	Logger *slog.Logger
}

// Config defaults.
const (
	DefaultBusyTimeout = 5 * time.Second
	DefaultSynchronous = "FULL"
	DefaultReadConns   = 4
)

// WithDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.BusyTimeout == 0 {
		c.BusyTimeout = DefaultBusyTimeout
	}
	if c.Synchronous == "" {
		c.Synchronous = DefaultSynchronous
	}
	if c.ReadConns == 0 {
		c.ReadConns = DefaultReadConns
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	if c.BusyTimeout < 0 {
		return &batuta.ConfigError{Field: "BusyTimeout", Reason: "must not be negative"}
	}
	switch strings.ToUpper(c.Synchronous) {
	case "FULL", "NORMAL", "EXTRA":
	default:
		return &batuta.ConfigError{Field: "Synchronous", Reason: fmt.Sprintf("%q is not FULL, NORMAL or EXTRA", c.Synchronous)}
	}
	if c.ReadConns < 0 {
		return &batuta.ConfigError{Field: "ReadConns", Reason: "must not be negative"}
	}
	return nil
}

// Store is a durable batuta.Store in a SQLite database. Create it with Open
// or New and release it with Close. All methods are safe for concurrent use.
// It also implements batuta.WorkNotifier for changes made through itself.
type Store struct {
	db     *sql.DB
	ownsDB bool
	path   string // as given to Open; "" for New
	cfg    Config
	log    *slog.Logger

	// wsem serialises writes: the token in it is the right to use wconn
	// and lead a group commit (see store_write.go).
	wsem  chan struct{}
	wconn *sql.Conn // the one write connection, pinned out of the pool
	st    *statements
	queue []*writeReq // guarded by mu: writes waiting for a leader

	work chan struct{}
	// wake is set inside a write that freed a concurrency slot; the
	// writer signals work once it committed.
	wake       atomic.Bool
	rateWrites atomic.Uint64

	mu     sync.Mutex
	closed bool
}

var (
	_ batuta.Store        = (*Store)(nil)
	_ batuta.WorkNotifier = (*Store)(nil)
)

// Open opens (creating if needed) the SQLite database at path with WAL
// mode, the busy timeout, foreign keys and cfg.Synchronous, applies the
// schema migrations and returns a Store that owns the database: Close closes
// it.
//
// path is a file name ("batuta.db", "/var/lib/app/batuta.db") or a SQLite
// URI ("file:batuta.db?mode=rwc"); query parameters it carries are passed to
// modernc.org/sqlite. An in-memory database (":memory:", mode=memory) is
// refused: it is neither durable nor shared between connections, so use
// batuta.NewMemoryStore instead.
func Open(ctx context.Context, path string, cfg Config) (*Store, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if path == "" {
		return nil, &batuta.ConfigError{Field: "path", Reason: "is empty"}
	}
	if path == ":memory:" || strings.Contains(path, "mode=memory") || strings.HasPrefix(path, "file::memory:") {
		return nil, &batuta.ConfigError{Field: "path", Reason: "an in-memory SQLite database is not durable; use batuta.NewMemoryStore"}
	}
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", cfg.BusyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous("+strings.ToUpper(cfg.Synchronous)+")")
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	db, err := sql.Open("sqlite", path+sep+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("batutasqlite: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(cfg.ReadConns + 1)
	db.SetMaxIdleConns(cfg.ReadConns + 1)
	s, err := newStore(ctx, db, cfg, true)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("%w (database %s)", err, path)
	}
	s.path = path
	return s, nil
}

// New returns a Store on a database the caller opened with the
// modernc.org/sqlite driver ("sqlite") and keeps owning: Close leaves db
// open. New applies the schema migrations, switches the database to WAL
// mode, and pins one connection of db for the store's writes (set
// db.SetMaxOpenConns to at least 2: a limit of 1 is refused), on which it
// sets busy_timeout and synchronous from cfg.
func New(ctx context.Context, db *sql.DB, cfg Config) (*Store, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if db == nil {
		return nil, &batuta.ConfigError{Field: "db", Reason: "is nil"}
	}
	if n := db.Stats().MaxOpenConnections; n == 1 {
		return nil, &batuta.ConfigError{Field: "db", Reason: "allows one connection (SetMaxOpenConns(1)); the store pins one for writes and reads need another"}
	}
	return newStore(ctx, db, cfg, false)
}

func newStore(ctx context.Context, db *sql.DB, cfg Config, owns bool) (*Store, error) {
	// Several processes opening a new file at once can meet SQLITE_BUSY
	// while one switches it to WAL (not every step waits on busy_timeout;
	// the driver applies the DSN's journal_mode pragma when it connects):
	// retry the connect and the setup within the busy timeout.
	deadline := time.Now().Add(cfg.BusyTimeout)
	pause := 10 * time.Millisecond
	backoff := func(err error) bool {
		if !isBusy(err) || time.Now().Add(pause).After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(pause) // backoff between attempts
		pause = min(2*pause, 200*time.Millisecond)
		return true
	}
	var wconn *sql.Conn
	for {
		var err error
		if wconn, err = db.Conn(ctx); err == nil {
			break
		}
		if !backoff(err) {
			return nil, fmt.Errorf("batutasqlite: connect: %w", err)
		}
	}
	s := &Store{
		db:     db,
		ownsDB: owns,
		cfg:    cfg,
		log:    cfg.Logger,
		wsem:   make(chan struct{}, 1),
		wconn:  wconn,
		work:   make(chan struct{}, 1),
	}
	for {
		err := s.setup(ctx)
		if err == nil {
			return s, nil
		}
		if s.st != nil {
			s.st.close()
			s.st = nil
		}
		if !backoff(err) {
			_ = wconn.Close()
			return nil, err
		}
	}
}

// isBusy reports whether err is SQLite's "database is locked" (SQLITE_BUSY).
func isBusy(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "database is locked") || strings.Contains(msg, "SQLITE_BUSY")
}

// setup configures the write connection, migrates and prepares statements.
func (s *Store) setup(ctx context.Context) error {
	pragmas := []string{
		fmt.Sprintf("PRAGMA busy_timeout = %d", s.cfg.BusyTimeout.Milliseconds()),
		"PRAGMA synchronous = " + strings.ToUpper(s.cfg.Synchronous),
	}
	for _, p := range pragmas {
		if _, err := s.wconn.ExecContext(ctx, p); err != nil {
			return fmt.Errorf("batutasqlite: %s: %w", p, err)
		}
	}
	var mode string
	if err := s.wconn.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode); err != nil {
		return fmt.Errorf("batutasqlite: PRAGMA journal_mode = WAL: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("batutasqlite: database refused WAL mode (journal_mode is %q); is it in memory?", mode)
	}
	if s.cfg.ManualMigrate {
		if err := checkVersion(ctx, s.wconn); err != nil {
			return err
		}
	} else if err := migrate(ctx, s.wconn, s.log); err != nil {
		return err
	}
	st, err := prepareStatements(ctx, s.wconn)
	if err != nil {
		return err
	}
	s.st = st
	return nil
}

// Durable reports true: accepted runs survive a process crash.
func (s *Store) Durable() bool { return true }

// WorkAvailable returns a channel that receives a value when a run was
// created or a task became ready through this Store. Changes made by other
// processes sharing the file are not signalled; workers find them by polling.
func (s *Store) WorkAvailable() <-chan struct{} { return s.work }

func (s *Store) signalWork() {
	select {
	case s.work <- struct{}{}:
	default:
	}
}

// Close releases the write connection and, for a Store made by Open, closes
// the database. It waits for a write in progress to finish. Later calls
// return batuta.ErrClosed. Close is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	queued := s.queue
	s.queue = nil
	s.mu.Unlock()
	for _, r := range queued {
		r.done <- errClosed
	}
	s.wsem <- struct{}{} // wait for the write in progress; never released
	s.st.close()
	err := s.wconn.Close()
	if s.ownsDB {
		err = errors.Join(err, s.db.Close())
	}
	if err != nil {
		return fmt.Errorf("batutasqlite: close: %w", err)
	}
	return nil
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

var errClosed = fmt.Errorf("batutasqlite: %w", batuta.ErrClosed)

// readTx runs fn in a read transaction (a consistent snapshot under WAL) on a
// pooled connection.
func (s *Store) readTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	if s.isClosed() {
		return errClosed
	}
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return s.wrapErr("begin read", err)
	}
	defer func() { _ = tx.Rollback() }()
	return fn(tx)
}

func (s *Store) wrapErr(what string, err error) error {
	if s.isClosed() {
		return errClosed
	}
	return fmt.Errorf("batutasqlite: %s: %w", what, err)
}

// nanos encodes t as unix nanoseconds, or NULL for the zero time.
func nanos(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixNano()
}

// fromNanos decodes a nanos column.
func fromNanos(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}
