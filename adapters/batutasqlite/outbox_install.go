package batutasqlite

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/internal/outboxsql"
)

// Op is a row operation a capture trigger captures.
type Op string

// The operations a capture trigger can capture.
const (
	OpInsert Op = "insert"
	OpUpdate Op = "update"
	OpDelete Op = "delete"
)

var allOps = []Op{OpInsert, OpUpdate, OpDelete}

// maxCapturedColumns is the widest table a capture can serialise: SQLite's
// json_object takes at most 1000 arguments, two per column.
const maxCapturedColumns = 500

// Capture describes the capture triggers that copy the changes of one user
// table into an outbox: one AFTER ... FOR EACH ROW trigger per operation,
// each writing one outbox row per changed row (operation, table, new and
// old row images as JSON, time).
//
// SQLite cannot serialise a whole row generically, so each trigger lists the
// table's columns as read from PRAGMA table_xinfo at install time:
// json_object('id', NEW."id", ...). CaptureStatus compares the installed
// trigger with the one the table's present columns call for and reports a
// column added, dropped or retyped since (the column list is recorded in
// the batuta_captures table), so a new column is not silently left out:
// install again to regenerate the triggers. A running Trigger also logs a
// warning for each stale capture into its outbox.
//
// Each operation's trigger is its own object, named
// batuta_<table>_<op>_<8 hex digits> (the digits tell outboxes apart):
// InstallCapture with Ops [insert] and later with Ops [update] leaves both
// in place, and a second install of the same operation replaces the first.
// So operations can have different When conditions, installed by separate
// calls. Tables live in the main database; at most 500 columns.
type Capture struct {
	// Outbox receives the changes; its zero value is batuta_outbox.
	Outbox Outbox
	// Table is the user table. Required.
	Table string
	// Ops are the operations to capture. Default: insert, update and delete.
	Ops []Op
	// Columns limits update capture to updates that change the value of at
	// least one of these columns (compared with IS NOT, so NULL-safe, and a
	// no-op SET col = col is not captured). Requires OpUpdate in Ops; does
	// not affect insert and delete. The row images still carry every
	// column. Default: every updated row.
	Columns []string
	// When is an SQL boolean expression over NEW."col" and OLD."col" that
	// must hold for a row to be captured, placed verbatim in the trigger's
	// WHEN (...) clause, e.g. "NEW.status = 'paid'". It is trusted SQL, like
	// a migration: write it in code, never build it from user input.
	// InstallCapture has SQLite compile it (an insert trigger cannot
	// reference OLD, a delete trigger cannot reference NEW, columns must
	// exist) and installs nothing if it does not. Default: every row.
	When string
}

func (c Capture) withDefaults() Capture {
	c.Outbox = c.Outbox.withDefaults()
	c.Ops, c.When = outboxsql.CaptureDefaults(c.Ops, c.When)
	return c
}

func (c Capture) validate() error {
	if err := c.Outbox.validate("Capture.Outbox."); err != nil {
		return err
	}
	if c.Table == "" {
		return &batuta.ConfigError{Field: "Capture.Table", Reason: "required"}
	}
	if err := validIdent("table", c.Table); err != nil {
		return fmt.Errorf("batutasqlite: Capture.Table: %w", err)
	}
	return outboxsql.CheckCapture("batutasqlite", c.Ops, c.Columns, c.When, validIdent)
}

// ops returns c.Ops without duplicates, in the canonical order.
func (c Capture) ops() []Op { return outboxsql.CanonicalOps(c.Ops) }

// triggerName is the name of the capture trigger for op. Trigger names are
// per database, so the name carries the table, and 8 hex digits of
// (table, outbox) keep captures into two outboxes, and long table names
// shortened to fit, apart.
func (c Capture) triggerName(op Op) string {
	sum := sha256.Sum256([]byte(c.Table + "\x00" + c.Outbox.Table))
	suffix := "_" + string(op) + "_" + hex.EncodeToString(sum[:4])
	table := c.Table
	for room := maxIdentLen - len("batuta_") - len(suffix); len(table) > room; {
		_, size := utf8.DecodeLastRuneInString(table)
		table = table[:len(table)-size]
	}
	return "batuta_" + table + suffix
}

// InstallStatus tells whether an outbox or a capture is installed, and
// whether it is current: exactly what installing it again would create.
type InstallStatus struct {
	// Installed: every object exists (whatever its definition).
	Installed bool
	// Current: Installed, and every object matches this version of
	// batutasqlite, the given spec and the table's present columns.
	Current bool
	// Problems lists, when not Current, what is missing or stale.
	Problems []string
}

// columnInfo is one column of a captured table, from PRAGMA table_xinfo.
type columnInfo struct {
	Name      string `json:"name"`
	Type      string `json:"type"` // declared type, may be ""
	generated bool
}

// loadColumns reads a table's columns in order (generated ones included);
// none means no such table.
func loadColumns(ctx context.Context, q queryer, table string) ([]columnInfo, error) {
	rows, err := q.QueryContext(ctx, "SELECT name, type, hidden IN (2, 3) FROM pragma_table_xinfo(?) WHERE hidden <> 1 ORDER BY cid", table)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	defer rows.Close()
	var cols []columnInfo
	for rows.Next() {
		var c columnInfo
		if err := rows.Scan(&c.Name, &c.Type, &c.generated); err != nil {
			return nil, fmt.Errorf("read columns of %s: %w", table, err)
		}
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	return cols, nil
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// jsonObjectExpr renders row ref (NEW or OLD) as json_object(...). A BLOB
// value, which JSON cannot hold, becomes its hex string; SQLite is
// dynamically typed, so this is decided per value.
func jsonObjectExpr(ref string, cols []columnInfo) string {
	parts := make([]string, 0, 2*len(cols))
	for _, c := range cols {
		v := ref + "." + quoteIdent(c.Name)
		parts = append(parts, quoteLiteral(c.Name), "CASE WHEN typeof("+v+") = 'blob' THEN hex("+v+") ELSE "+v+" END")
	}
	return "json_object(" + strings.Join(parts, ", ") + ")"
}

// captureTriggerDDL is the CREATE TRIGGER statement for op.
func captureTriggerDDL(c Capture, op Op, cols []columnInfo) string {
	newImg, oldImg := "NULL", "NULL"
	if op != OpDelete {
		newImg = jsonObjectExpr("NEW", cols)
	}
	if op != OpInsert {
		oldImg = jsonObjectExpr("OLD", cols)
	}
	var conds []string
	if op == OpUpdate && len(c.Columns) > 0 {
		changed := make([]string, len(c.Columns))
		for i, col := range c.Columns {
			q := quoteIdent(col)
			changed[i] = "OLD." + q + " IS NOT NEW." + q
		}
		conds = append(conds, "("+strings.Join(changed, " OR ")+")")
	}
	if c.When != "" {
		conds = append(conds, "("+c.When+")")
	}
	ddl := "CREATE TRIGGER " + quoteIdent(c.triggerName(op)) + " AFTER " + strings.ToUpper(string(op)) +
		" ON " + quoteIdent(c.Table) + " FOR EACH ROW"
	if len(conds) > 0 {
		ddl += " WHEN " + strings.Join(conds, " AND ")
	}
	return ddl + " BEGIN INSERT INTO " + c.Outbox.quoted() +
		" (op, table_name, new_row, old_row, created_at) VALUES ('" + string(op) + "', " + quoteLiteral(c.Table) +
		", " + newImg + ", " + oldImg + ", " + nowSQL + "); END"
}

// columnDrift describes how the columns a trigger was generated from differ
// from the table's present ones ("" if they do not).
func columnDrift(installedJSON string, now []columnInfo) string {
	return outboxsql.ColumnDrift(installedJSON, recorded(now))
}

func columnsJSON(cols []columnInfo) string { return outboxsql.ColumnsJSON(recorded(cols)) }

// recorded returns cols as a capture records them.
func recorded(cols []columnInfo) []outboxsql.Column {
	out := make([]outboxsql.Column, len(cols))
	for i, c := range cols {
		out[i] = outboxsql.Column{Name: c.Name, Type: c.Type}
	}
	return out
}

// inTx runs fn in a BEGIN IMMEDIATE transaction on one connection: SQLite's
// DDL is transactional, so an install either happens whole or not at all,
// and a trigger is replaced (DROP, CREATE) without a write slipping in
// between.
func inTx(ctx context.Context, db *sql.DB, fn func(conn *sql.Conn) error) (err error) {
	if db == nil {
		return &batuta.ConfigError{Field: "db", Reason: "nil *sql.DB"}
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_, _ = conn.ExecContext(rctx, "ROLLBACK")
		}
	}()
	if err = fn(conn); err != nil {
		return err
	}
	_, err = conn.ExecContext(ctx, "COMMIT")
	return err
}

// schemaSQL returns whether the named object of the given type exists in
// the main database, its table, and its CREATE statement.
func schemaSQL(ctx context.Context, q queryer, typ, name string) (exists bool, table, ddl string, err error) {
	var s sql.NullString
	err = q.QueryRowContext(ctx, "SELECT tbl_name, sql FROM sqlite_schema WHERE type = ? AND name = ?", typ, name).Scan(&table, &s)
	if errors.Is(err, sql.ErrNoRows) {
		return false, "", "", nil
	}
	if err != nil {
		return false, "", "", err
	}
	return true, table, s.String, nil
}

// InstallOutbox creates the outbox table (and the batuta_captures
// bookkeeping table) if missing, in one transaction. Idempotent; safe to
// call at every start. It refuses to adopt an existing table of that name
// that is not a batuta outbox.
func InstallOutbox(ctx context.Context, db *sql.DB, ob Outbox) error {
	ob = ob.withDefaults()
	if err := ob.validate("Outbox."); err != nil {
		return err
	}
	if err := inTx(ctx, db, func(conn *sql.Conn) error { return ensureOutbox(ctx, conn, ob) }); err != nil {
		return fmt.Errorf("batutasqlite: install outbox %s: %w", ob, err)
	}
	return nil
}

func ensureOutbox(ctx context.Context, conn *sql.Conn, ob Outbox) error {
	exists, _, ddl, err := schemaSQL(ctx, conn, "table", ob.Table)
	if err != nil {
		return err
	}
	if exists && !strings.Contains(ddl, outboxMarker) {
		return fmt.Errorf("table %s exists and is not a batuta outbox (its definition lacks %q)", ob, outboxMarker)
	}
	if !exists {
		if _, err := conn.ExecContext(ctx, fmt.Sprintf(outboxDDL, ob.quoted())); err != nil {
			return err
		}
		// Seed the AUTOINCREMENT counter (see outboxDDL).
		if _, err := conn.ExecContext(ctx, "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)",
			ob.Table, time.Now().UnixMicro()); err != nil {
			return err
		}
	}
	_, err = conn.ExecContext(ctx, capturesDDL)
	return err
}

// OutboxStatus reports whether the outbox table and its bookkeeping table
// exist. It changes nothing.
func OutboxStatus(ctx context.Context, db *sql.DB, ob Outbox) (InstallStatus, error) {
	ob = ob.withDefaults()
	if err := ob.validate("Outbox."); err != nil {
		return InstallStatus{}, err
	}
	if db == nil {
		return InstallStatus{}, &batuta.ConfigError{Field: "db", Reason: "nil *sql.DB"}
	}
	st, err := outboxStatus(ctx, db, ob)
	if err != nil {
		return InstallStatus{}, fmt.Errorf("batutasqlite: outbox status of %s: %w", ob, err)
	}
	return st, nil
}

func outboxStatus(ctx context.Context, q queryer, ob Outbox) (InstallStatus, error) {
	st := InstallStatus{Installed: true}
	exists, _, ddl, err := schemaSQL(ctx, q, "table", ob.Table)
	if err != nil {
		return st, err
	}
	switch {
	case !exists:
		st.Installed = false
		st.Problems = append(st.Problems, fmt.Sprintf("table %s is missing", ob))
	case !strings.Contains(ddl, outboxMarker):
		st.Installed = false
		st.Problems = append(st.Problems, fmt.Sprintf("table %s is not a %s table", ob, outboxMarker))
	}
	if exists, _, _, err = schemaSQL(ctx, q, "table", capturesTable); err != nil {
		return st, err
	}
	if !exists {
		st.Installed = false
		st.Problems = append(st.Problems, fmt.Sprintf("table %s is missing", capturesTable))
	}
	st.Current = st.Installed && len(st.Problems) == 0
	return st, nil
}

// UninstallOutbox drops the outbox table, with the rows still in it, and
// the capture triggers recorded as writing into it (a trigger left behind
// would make every write to its table fail), in one transaction.
// Idempotent. It refuses to drop a table of that name that is not a batuta
// outbox.
func UninstallOutbox(ctx context.Context, db *sql.DB, ob Outbox) error {
	ob = ob.withDefaults()
	if err := ob.validate("Outbox."); err != nil {
		return err
	}
	err := inTx(ctx, db, func(conn *sql.Conn) error {
		exists, _, ddl, err := schemaSQL(ctx, conn, "table", ob.Table)
		if err != nil {
			return err
		}
		if exists && !strings.Contains(ddl, outboxMarker) {
			return fmt.Errorf("table %s is not a batuta outbox; not dropping it", ob)
		}
		if err := dropRecordedCaptures(ctx, conn, ob); err != nil {
			return err
		}
		if exists {
			_, err = conn.ExecContext(ctx, "DROP TABLE "+ob.quoted())
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("batutasqlite: uninstall outbox %s: %w", ob, err)
	}
	return nil
}

func dropRecordedCaptures(ctx context.Context, conn *sql.Conn, ob Outbox) error {
	exists, _, _, err := schemaSQL(ctx, conn, "table", capturesTable)
	if err != nil || !exists {
		return err
	}
	rows, err := conn.QueryContext(ctx, "SELECT trigger_name FROM "+quoteIdent(capturesTable)+" WHERE outbox = ?", ob.Table)
	if err != nil {
		return err
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return err
		}
		names = append(names, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, n := range names {
		if validIdent("trigger", n) != nil {
			continue // not written by us
		}
		if _, err := conn.ExecContext(ctx, "DROP TRIGGER IF EXISTS "+quoteIdent(n)); err != nil {
			return err
		}
	}
	_, err = conn.ExecContext(ctx, "DELETE FROM "+quoteIdent(capturesTable)+" WHERE outbox = ?", ob.Table)
	return err
}

// capturedColumns reads and checks the columns of c's table.
func capturedColumns(ctx context.Context, q queryer, c Capture) ([]columnInfo, error) {
	cols, err := loadColumns(ctx, q, c.Table)
	if err != nil {
		return nil, err
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("table %s does not exist", c.Table)
	}
	if len(cols) > maxCapturedColumns {
		return nil, fmt.Errorf("table %s has %d columns; a capture serialises at most %d (json_object takes at most 1000 arguments)",
			c.Table, len(cols), maxCapturedColumns)
	}
	for _, col := range cols {
		if err := validIdent("column", col.Name); err != nil {
			return nil, err
		}
	}
	for _, want := range c.Columns {
		if !slices.ContainsFunc(cols, func(col columnInfo) bool { return strings.EqualFold(col.Name, want) }) {
			return nil, &batuta.ConfigError{Field: "Capture.Columns", Reason: fmt.Sprintf("table %s has no column %q", c.Table, want)}
		}
	}
	return cols, nil
}

// InstallCapture installs (or replaces, if stale) the capture triggers of c
// on the user table, and the outbox they write to (see InstallOutbox), in
// one BEGIN IMMEDIATE transaction: all or nothing, and a stale trigger is
// replaced without a write slipping in between. Idempotent: when
// everything is current it changes nothing. Triggers of operations not in
// c.Ops are left alone.
//
// Every identifier is validated and quoted, the table's column names
// included; c.When is trusted SQL (see Capture). An error (an unknown table
// or column, a When that does not compile) rolls everything back.
func InstallCapture(ctx context.Context, db *sql.DB, c Capture) error {
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return err
	}
	err := inTx(ctx, db, func(conn *sql.Conn) error {
		if err := ensureOutbox(ctx, conn, c.Outbox); err != nil {
			return err
		}
		cols, err := capturedColumns(ctx, conn, c)
		if err != nil {
			return err
		}
		for _, op := range c.ops() {
			name := c.triggerName(op)
			ddl := captureTriggerDDL(c, op, cols)
			exists, table, have, err := schemaSQL(ctx, conn, "trigger", name)
			if err != nil {
				return err
			}
			if exists && table != c.Table {
				return fmt.Errorf("a trigger named %s already exists on table %s", name, table)
			}
			if exists && have == ddl {
				continue
			}
			if _, err := conn.ExecContext(ctx, "DROP TRIGGER IF EXISTS "+quoteIdent(name)); err != nil {
				return err
			}
			if _, err := conn.ExecContext(ctx, ddl); err != nil {
				return fmt.Errorf("create %s trigger: %w", op, err)
			}
			if err := probeTrigger(ctx, conn, c, op, cols); err != nil {
				return fmt.Errorf("create %s trigger: %w", op, err)
			}
			if _, err := conn.ExecContext(ctx, "INSERT INTO "+quoteIdent(capturesTable)+
				` (trigger_name, table_name, outbox, op, columns_json, installed_at) VALUES (?, ?, ?, ?, ?, `+nowSQL+`)
ON CONFLICT (trigger_name) DO UPDATE SET table_name = excluded.table_name, outbox = excluded.outbox, op = excluded.op,
 columns_json = excluded.columns_json, installed_at = excluded.installed_at`,
				name, c.Table, c.Outbox.Table, string(op), columnsJSON(cols)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("batutasqlite: install capture of %s into %s: %w", c.Table, c.Outbox, err)
	}
	return nil
}

// probeTrigger compiles, without running it, a statement that fires the
// trigger of op. SQLite checks a trigger's body and WHEN clause (a column
// that does not exist, NEW in a delete trigger) only when a statement
// firing it is prepared: without the probe a bad When would be accepted
// here and make every later write to the table fail.
func probeTrigger(ctx context.Context, conn *sql.Conn, c Capture, op Op, cols []columnInfo) error {
	tbl := quoteIdent(c.Table)
	var probe string
	switch op {
	case OpInsert:
		probe = "INSERT INTO " + tbl + " DEFAULT VALUES"
	case OpDelete:
		probe = "DELETE FROM " + tbl + " WHERE 0"
	default:
		i := slices.IndexFunc(cols, func(c columnInfo) bool { return !c.generated })
		if i < 0 {
			return nil
		}
		col := quoteIdent(cols[i].Name)
		probe = "UPDATE " + tbl + " SET " + col + " = " + col + " WHERE 0"
	}
	rows, err := conn.QueryContext(ctx, "EXPLAIN "+probe)
	if err != nil {
		return err
	}
	for rows.Next() {
	}
	rows.Close()
	return rows.Err()
}

// CaptureStatus reports whether c's triggers (only the operations in
// c.Ops) and its outbox exist and are current: exactly the triggers
// InstallCapture would create now, from this spec and the table's present
// columns. A column added, dropped or retyped since makes them stale, and
// Problems names it. It changes nothing.
func CaptureStatus(ctx context.Context, db *sql.DB, c Capture) (InstallStatus, error) {
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return InstallStatus{}, err
	}
	if db == nil {
		return InstallStatus{}, &batuta.ConfigError{Field: "db", Reason: "nil *sql.DB"}
	}
	st, err := captureStatus(ctx, db, c)
	if err != nil {
		return InstallStatus{}, fmt.Errorf("batutasqlite: capture status of %s: %w", c.Table, err)
	}
	return st, nil
}

func captureStatus(ctx context.Context, q queryer, c Capture) (InstallStatus, error) {
	st, err := outboxStatus(ctx, q, c.Outbox)
	if err != nil {
		return st, err
	}
	cols, err := loadColumns(ctx, q, c.Table)
	if err != nil {
		return st, err
	}
	if len(cols) == 0 {
		st.Installed = false
		st.Problems = append(st.Problems, fmt.Sprintf("table %s is missing", c.Table))
	}
	recorded, _, _, err := schemaSQL(ctx, q, "table", capturesTable)
	if err != nil {
		return st, err
	}
	for _, op := range c.ops() {
		name := c.triggerName(op)
		exists, _, have, err := schemaSQL(ctx, q, "trigger", name)
		if err != nil {
			return st, err
		}
		switch {
		case !exists:
			st.Installed = false
			st.Problems = append(st.Problems, fmt.Sprintf("%s trigger %s is missing", op, name))
		case len(cols) == 0:
		case have != captureTriggerDDL(c, op, cols):
			drift := ""
			if recorded {
				var was string
				err := q.QueryRowContext(ctx, "SELECT columns_json FROM "+quoteIdent(capturesTable)+" WHERE trigger_name = ?", name).Scan(&was)
				if err != nil && !errors.Is(err, sql.ErrNoRows) {
					return st, err
				}
				if err == nil {
					drift = columnDrift(was, cols)
				}
			}
			if drift != "" {
				st.Problems = append(st.Problems, fmt.Sprintf("%s trigger %s is stale: table %s changed since install (%s)", op, name, c.Table, drift))
			} else {
				st.Problems = append(st.Problems, fmt.Sprintf("%s trigger %s is stale", op, name))
			}
		}
	}
	st.Current = st.Installed && len(st.Problems) == 0
	return st, nil
}

// UninstallCapture drops c's capture triggers for the operations in c.Ops
// (default all three) and their records, in one transaction. The outbox
// and rows already captured stay. Idempotent: missing triggers are fine.
func UninstallCapture(ctx context.Context, db *sql.DB, c Capture) error {
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return err
	}
	err := inTx(ctx, db, func(conn *sql.Conn) error {
		recorded, _, _, err := schemaSQL(ctx, conn, "table", capturesTable)
		if err != nil {
			return err
		}
		for _, op := range c.ops() {
			name := c.triggerName(op)
			if _, err := conn.ExecContext(ctx, "DROP TRIGGER IF EXISTS "+quoteIdent(name)); err != nil {
				return err
			}
			if recorded {
				if _, err := conn.ExecContext(ctx, "DELETE FROM "+quoteIdent(capturesTable)+" WHERE trigger_name = ?", name); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("batutasqlite: uninstall capture of %s: %w", c.Table, err)
	}
	return nil
}
