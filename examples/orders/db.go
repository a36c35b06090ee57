package main

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutamysql"
	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
	_ "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// orderDB is the application database: the orders table, the table the
// email step writes to, and the outbox trigger that turns inserted orders
// into events.
type orderDB interface {
	// setup creates the tables if absent and installs the capture trigger.
	setup(ctx context.Context) error
	// insertOrder inserts an order and returns its id.
	insertOrder(ctx context.Context, customer string, totalCents int64) (int64, error)
	// recordEmail records that order id's email was sent, once: it reports
	// whether this call sent it.
	recordEmail(ctx context.Context, orderID int64) (bool, error)
	// trigger returns the outbox trigger.
	trigger() (batuta.Trigger, error)
	close()
}

func defaultDSN(kind string) string {
	switch kind {
	case "postgres":
		return "postgres://postgres@127.0.0.1:5432/test"
	case "mysql":
		return "root@tcp(127.0.0.1:3306)/test?parseTime=true"
	}
	return ""
}

// openDB opens the application database; schema (PostgreSQL only) holds
// its tables and outbox, default public.
func openDB(ctx context.Context, kind, dsn, schema string) (orderDB, error) {
	if schema != "" && kind != "postgres" {
		return nil, fmt.Errorf("-schema is for -db postgres")
	}
	switch kind {
	case "sqlite":
		return openSQLite(ctx, dsn)
	case "postgres":
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		if err := pool.Ping(ctx); err != nil {
			pool.Close()
			return nil, fmt.Errorf("postgres: %w", err)
		}
		if schema == "" {
			schema = "public"
		}
		return &pgDB{pool: pool, schema: schema}, nil
	case "mysql":
		db, err := sql.Open("mysql", dsn)
		if err != nil {
			return nil, fmt.Errorf("mysql: %w", err)
		}
		if err := db.PingContext(ctx); err != nil {
			db.Close()
			return nil, fmt.Errorf("mysql: %w", err)
		}
		return &mysqlDB{db: db}, nil
	}
	return nil, fmt.Errorf("unknown -db %q (want sqlite, postgres or mysql)", kind)
}

// --- SQLite ---

type sqliteDB struct{ db *sql.DB }

func openSQLite(ctx context.Context, path string) (*sqliteDB, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	return &sqliteDB{db: db}, nil
}

func (s *sqliteDB) setup(ctx context.Context) error {
	for _, q := range []string{
		`CREATE TABLE IF NOT EXISTS orders (
			id INTEGER PRIMARY KEY AUTOINCREMENT,
			customer TEXT NOT NULL,
			total_cents INTEGER NOT NULL,
			created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)`,
		`CREATE TABLE IF NOT EXISTS order_emails (order_id INTEGER PRIMARY KEY, sent_at TEXT NOT NULL)`,
	} {
		if _, err := s.db.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return batutasqlite.InstallCapture(ctx, s.db, batutasqlite.Capture{Table: "orders", Ops: []batutasqlite.Op{batutasqlite.OpInsert}})
}

func (s *sqliteDB) insertOrder(ctx context.Context, customer string, total int64) (int64, error) {
	res, err := s.db.ExecContext(ctx, `INSERT INTO orders (customer, total_cents) VALUES (?, ?)`, customer, total)
	if err != nil {
		return 0, err
	}
	return res.LastInsertId()
}

func (s *sqliteDB) recordEmail(ctx context.Context, id int64) (bool, error) {
	res, err := s.db.ExecContext(ctx, `INSERT OR IGNORE INTO order_emails (order_id, sent_at) VALUES (?, CURRENT_TIMESTAMP)`, id)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

func (s *sqliteDB) trigger() (batuta.Trigger, error) {
	return batutasqlite.NewTrigger(batutasqlite.TriggerConfig{DB: s.db})
}

func (s *sqliteDB) close() { s.db.Close() }

// --- PostgreSQL ---

type pgDB struct {
	pool   *pgxpool.Pool
	schema string
}

func (p *pgDB) table(name string) string { return pgx.Identifier{p.schema, name}.Sanitize() }

func (p *pgDB) setup(ctx context.Context) error {
	for _, q := range []string{
		`CREATE SCHEMA IF NOT EXISTS ` + pgx.Identifier{p.schema}.Sanitize(),
		`CREATE TABLE IF NOT EXISTS ` + p.table("orders") + ` (
			id bigserial PRIMARY KEY,
			customer text NOT NULL,
			total_cents bigint NOT NULL,
			created_at timestamptz NOT NULL DEFAULT now())`,
		`CREATE TABLE IF NOT EXISTS ` + p.table("order_emails") + ` (order_id bigint PRIMARY KEY, sent_at timestamptz NOT NULL)`,
	} {
		if _, err := p.pool.Exec(ctx, q); err != nil {
			return err
		}
	}
	return batutapg.InstallCapture(ctx, p.pool, batutapg.Capture{Schema: p.schema, Outbox: p.outbox(), Table: "orders", Ops: []batutapg.Op{batutapg.OpInsert}})
}

func (p *pgDB) outbox() batutapg.Outbox { return batutapg.Outbox{Schema: p.schema} }

func (p *pgDB) insertOrder(ctx context.Context, customer string, total int64) (int64, error) {
	var id int64
	err := p.pool.QueryRow(ctx, `INSERT INTO `+p.table("orders")+` (customer, total_cents) VALUES ($1, $2) RETURNING id`, customer, total).Scan(&id)
	return id, err
}

func (p *pgDB) recordEmail(ctx context.Context, id int64) (bool, error) {
	tag, err := p.pool.Exec(ctx, `INSERT INTO `+p.table("order_emails")+` (order_id, sent_at) VALUES ($1, now()) ON CONFLICT DO NOTHING`, id)
	return tag.RowsAffected() == 1, err
}

func (p *pgDB) trigger() (batuta.Trigger, error) {
	return batutapg.NewTrigger(batutapg.TriggerConfig{Pool: p.pool, Outbox: p.outbox()})
}

func (p *pgDB) close() { p.pool.Close() }

// --- MySQL / MariaDB ---

type mysqlDB struct{ db *sql.DB }

func (m *mysqlDB) setup(ctx context.Context) error {
	for _, q := range []string{
		`CREATE TABLE IF NOT EXISTS orders (
			id BIGINT AUTO_INCREMENT PRIMARY KEY,
			customer TEXT NOT NULL,
			total_cents BIGINT NOT NULL,
			created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)`,
		`CREATE TABLE IF NOT EXISTS order_emails (order_id BIGINT PRIMARY KEY, sent_at TIMESTAMP NOT NULL)`,
	} {
		if _, err := m.db.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return batutamysql.InstallCapture(ctx, m.db, batutamysql.Capture{Table: "orders", Ops: []batutamysql.Op{batutamysql.OpInsert}})
}

func (m *mysqlDB) insertOrder(ctx context.Context, customer string, total int64) (int64, error) {
	res, err := m.db.ExecContext(ctx, `INSERT INTO orders (customer, total_cents) VALUES (?, ?)`, customer, total)
	if err != nil {
		return 0, err
	}
	return res.LastInsertId()
}

func (m *mysqlDB) recordEmail(ctx context.Context, id int64) (bool, error) {
	res, err := m.db.ExecContext(ctx, `INSERT IGNORE INTO order_emails (order_id, sent_at) VALUES (?, CURRENT_TIMESTAMP)`, id)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

func (m *mysqlDB) trigger() (batuta.Trigger, error) {
	return batutamysql.NewTrigger(batutamysql.TriggerConfig{DB: m.db})
}

func (m *mysqlDB) close() { m.db.Close() }
