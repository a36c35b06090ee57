package batutamysql

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

// Capture describes the capture triggers that copy the changes of one user
// table into an outbox: one AFTER ... FOR EACH ROW trigger per operation,
// each writing one outbox row per changed row (operation, schema, table,
// new and old row images as JSON, time).
//
// MySQL cannot serialise a whole row generically, so each trigger lists the
// table's columns as read from information_schema at install time:
// JSON_OBJECT('id', NEW.`id`, ...). InstallCapture records the column list
// in the batuta_captures table next to the outbox, and CaptureStatus
// reports when the table has changed since (a column added, dropped or
// retyped), so a new column is not silently left out: install again to
// regenerate the triggers. A running Trigger also logs a warning for each
// stale capture into its outbox.
//
// Each operation's trigger is its own object, named
// batuta_<table>_<op>_<8 hex digits> (the digits tell outboxes apart):
// InstallCapture with Ops [insert] and later with Ops [update] leaves both
// in place, and a second install of the same operation replaces the first.
// So operations can have different When conditions, installed by separate
// calls.
type Capture struct {
	// Outbox receives the changes; its zero value is batuta_outbox in the
	// connection's current database.
	Outbox Outbox
	// Schema is the database holding the user table. Default: the
	// connection's current database.
	Schema string
	// Table is the user table. Required.
	Table string
	// Ops are the operations to capture. Default: insert, update and delete.
	Ops []Op
	// Columns limits update capture to updates that change the value of at
	// least one of these columns (compared NULL-safely with <=>, so a no-op
	// SET col = col is not captured). Requires OpUpdate in Ops; does not
	// affect insert and delete. The row images still carry every column.
	// Default: every updated row.
	Columns []string
	// When is an SQL boolean expression over NEW.<col> and OLD.<col> that
	// must hold for a row to be captured, e.g. "NEW.status = 'paid'". It is
	// placed verbatim in the trigger body: trusted SQL, like a migration;
	// write it in code, never build it from user input. MySQL checks it at
	// install time (an insert trigger cannot reference OLD, a delete trigger
	// cannot reference NEW). Default: every row.
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
	if c.Schema != "" {
		if err := validIdent("schema", c.Schema); err != nil {
			return fmt.Errorf("batutamysql: Capture.Schema: %w", err)
		}
	}
	if c.Table == "" {
		return &batuta.ConfigError{Field: "Capture.Table", Reason: "required"}
	}
	if err := validIdent("table", c.Table); err != nil {
		return fmt.Errorf("batutamysql: Capture.Table: %w", err)
	}
	return outboxsql.CheckCapture("batutamysql", c.Ops, c.Columns, c.When, validIdent)
}

// ops returns c.Ops without duplicates, in the canonical order.
func (c Capture) ops() []Op { return outboxsql.CanonicalOps(c.Ops) }

// triggerName is the name of the capture trigger for op (c resolved).
// Trigger names are per database, so the name carries the table, and 8 hex
// digits of (table, outbox) keep captures into two outboxes, and long
// table names shortened to fit 64 characters, apart.
func (c Capture) triggerName(op Op) string {
	sum := sha256.Sum256([]byte(c.Table + "\x00" + c.Outbox.Schema + "\x00" + c.Outbox.Table))
	suffix := "_" + string(op) + "_" + hex.EncodeToString(sum[:4])
	table := []rune(c.Table)
	if room := maxIdentLen - len("batuta_") - len(suffix); len(table) > room {
		table = table[:room]
	}
	return "batuta_" + string(table) + suffix
}

// InstallStatus tells whether an outbox or a capture is installed, and
// whether it is current: exactly what installing it again would create.
type InstallStatus struct {
	// Installed: every object exists (whatever its definition).
	Installed bool
	// Current: Installed, and every object matches this version of
	// batutamysql, the given spec and the table's present columns.
	Current bool
	// Problems lists, when not Current, what is missing or stale.
	Problems []string
}

// columnInfo is one column of a captured table, as read from the catalog.
type columnInfo struct {
	Name     string `json:"name"`
	Type     string `json:"type"` // COLUMN_TYPE, e.g. "varchar(20)"
	dataType string // DATA_TYPE, e.g. "varchar"
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// resolveSchema returns schema, or the connection's current database when
// schema is "".
func resolveSchema(ctx context.Context, q queryer, schema string) (string, error) {
	if schema != "" {
		return schema, nil
	}
	var cur sql.NullString
	if err := q.QueryRowContext(ctx, "SELECT DATABASE()").Scan(&cur); err != nil {
		return "", fmt.Errorf("batutamysql: read current database: %w", err)
	}
	if !cur.Valid || cur.String == "" {
		return "", &batuta.ConfigError{Field: "Schema", Reason: "empty and the connection has no current database"}
	}
	if err := validIdent("schema", cur.String); err != nil {
		return "", err
	}
	return cur.String, nil
}

// loadColumns reads a table's columns in order; none means no such table.
func loadColumns(ctx context.Context, q queryer, schema, table string) ([]columnInfo, error) {
	rows, err := q.QueryContext(ctx, `SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`, schema, table)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", schema, table, err)
	}
	defer rows.Close()
	var cols []columnInfo
	for rows.Next() {
		var c columnInfo
		if err := rows.Scan(&c.Name, &c.dataType, &c.Type); err != nil {
			return nil, fmt.Errorf("read columns of %s.%s: %w", schema, table, err)
		}
		c.dataType = strings.ToLower(c.dataType)
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", schema, table, err)
	}
	return cols, nil
}

// columnExpr renders column c of row ref (NEW or OLD) for JSON_OBJECT:
// binary strings as hex (JSON cannot hold raw bytes), BIT as a number,
// spatial types as WKT; everything else as the server renders it.
func columnExpr(ref string, c columnInfo) string {
	v := ref + "." + quoteIdent(c.Name)
	switch c.dataType {
	case "binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob":
		return "HEX(" + v + ")"
	case "bit":
		return "CAST(" + v + " AS UNSIGNED)"
	case "geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
		"multipolygon", "geometrycollection", "geomcollection":
		return "ST_AsText(" + v + ")"
	}
	return v
}

func jsonObjectExpr(ref string, cols []columnInfo) string {
	parts := make([]string, 0, 2*len(cols))
	for _, c := range cols {
		parts = append(parts, quoteLiteral(c.Name), columnExpr(ref, c))
	}
	return "JSON_OBJECT(" + strings.Join(parts, ", ") + ")"
}

// captureTriggerDDL is the CREATE TRIGGER statement for op (c resolved): one
// INSERT ... SELECT into the outbox, filtered by When and, for updates, by
// Columns. A single statement, so no BEGIN ... END and no delimiter games.
func captureTriggerDDL(c Capture, op Op, cols []columnInfo, orReplace bool) string {
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
			changed[i] = "NOT (OLD." + q + " <=> NEW." + q + ")"
		}
		conds = append(conds, "("+strings.Join(changed, " OR ")+")")
	}
	if c.When != "" {
		conds = append(conds, "("+c.When+")")
	}
	create := "CREATE TRIGGER "
	if orReplace {
		create = "CREATE OR REPLACE TRIGGER "
	}
	ddl := create + quoteQualified(c.Schema, c.triggerName(op)) +
		" AFTER " + strings.ToUpper(string(op)) + " ON " + quoteQualified(c.Schema, c.Table) +
		" FOR EACH ROW INSERT INTO " + c.Outbox.quoted() +
		" (op, schema_name, table_name, new_row, old_row, created_at) SELECT '" + string(op) + "', " +
		quoteLiteral(c.Schema) + ", " + quoteLiteral(c.Table) + ", " + newImg + ", " + oldImg +
		", UTC_TIMESTAMP(6) FROM DUAL"
	if len(conds) > 0 {
		ddl += " WHERE " + strings.Join(conds, " AND ")
	}
	return ddl
}

// fingerprint identifies the DDL of a capture trigger; a trigger whose
// recorded fingerprint differs from the one its DDL would have today is
// stale (the table's columns, the spec or this package changed).
func fingerprint(ddl string) string {
	sum := sha256.Sum256([]byte("batuta capture trigger v1\x00" + ddl))
	return hex.EncodeToString(sum[:])
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

// withConn pins one connection (GET_LOCK and LOCK TABLES are per
// connection) and runs fn on it.
func withConn(ctx context.Context, db *sql.DB, fn func(conn *sql.Conn) error) error {
	if db == nil {
		return &batuta.ConfigError{Field: "db", Reason: "nil *sql.DB"}
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return fn(conn)
}

// withLock runs fn holding the named GET_LOCK, which serialises installers
// of one outbox across connections and instances.
func withLock(ctx context.Context, conn *sql.Conn, ob Outbox, fn func() error) error {
	sum := sha256.Sum256([]byte("batuta outbox install\x00" + ob.Schema + "\x00" + ob.Table))
	name := "batuta_" + hex.EncodeToString(sum[:16])
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 60)", name).Scan(&got); err != nil {
		return err
	}
	if got.Int64 != 1 {
		return fmt.Errorf("another installer held the install lock for 60s: %w", batuta.ErrBusy)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", name)
	}()
	return fn()
}

// tableComment returns whether schema.table exists and its comment.
func tableComment(ctx context.Context, q queryer, schema, table string) (exists bool, comment string, err error) {
	err = q.QueryRowContext(ctx, `SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?`,
		schema, table).Scan(&comment)
	if errors.Is(err, sql.ErrNoRows) {
		return false, "", nil
	}
	return err == nil, comment, err
}

// InstallOutbox creates the outbox table (and the batuta_captures
// bookkeeping table next to it) if missing. Idempotent; safe to call at
// every start from every instance (installers of one outbox are
// serialised with GET_LOCK). It refuses to adopt an existing table of that
// name that is not a batuta outbox.
func InstallOutbox(ctx context.Context, db *sql.DB, ob Outbox) error {
	ob = ob.withDefaults()
	if err := ob.validate("Outbox."); err != nil {
		return err
	}
	err := withConn(ctx, db, func(conn *sql.Conn) error {
		var err error
		if ob.Schema, err = resolveSchema(ctx, conn, ob.Schema); err != nil {
			return err
		}
		return withLock(ctx, conn, ob, func() error { return ensureOutbox(ctx, conn, ob) })
	})
	if err != nil {
		return fmt.Errorf("batutamysql: install outbox %s: %w", ob, err)
	}
	return nil
}

// ensureOutbox creates the outbox and bookkeeping tables if missing (ob
// resolved).
func ensureOutbox(ctx context.Context, conn *sql.Conn, ob Outbox) error {
	exists, comment, err := tableComment(ctx, conn, ob.Schema, ob.Table)
	if err != nil {
		return err
	}
	if exists && comment != outboxMarker {
		return fmt.Errorf("table %s exists and is not a batuta outbox (its comment is not %q)", ob, outboxMarker)
	}
	if !exists {
		if _, err := conn.ExecContext(ctx, fmt.Sprintf(outboxDDL, ob.quoted(), time.Now().UnixMicro())); err != nil {
			return err
		}
	}
	_, err = conn.ExecContext(ctx, fmt.Sprintf(capturesDDL, quoteQualified(ob.Schema, capturesTable)))
	return err
}

// OutboxStatus reports whether the outbox table and its bookkeeping table
// exist. It changes nothing.
func OutboxStatus(ctx context.Context, db *sql.DB, ob Outbox) (InstallStatus, error) {
	ob = ob.withDefaults()
	if err := ob.validate("Outbox."); err != nil {
		return InstallStatus{}, err
	}
	var st InstallStatus
	err := withConn(ctx, db, func(conn *sql.Conn) error {
		var err error
		if ob.Schema, err = resolveSchema(ctx, conn, ob.Schema); err != nil {
			return err
		}
		st, err = outboxStatus(ctx, conn, ob)
		return err
	})
	if err != nil {
		return InstallStatus{}, fmt.Errorf("batutamysql: outbox status of %s: %w", ob, err)
	}
	return st, nil
}

func outboxStatus(ctx context.Context, q queryer, ob Outbox) (InstallStatus, error) {
	st := InstallStatus{Installed: true}
	exists, comment, err := tableComment(ctx, q, ob.Schema, ob.Table)
	if err != nil {
		return st, err
	}
	switch {
	case !exists:
		st.Installed = false
		st.Problems = append(st.Problems, fmt.Sprintf("table %s is missing", ob))
	case comment != outboxMarker:
		st.Installed = false
		st.Problems = append(st.Problems, fmt.Sprintf("table %s is not a %s table", ob, outboxMarker))
	}
	if exists, _, err = tableComment(ctx, q, ob.Schema, capturesTable); err != nil {
		return st, err
	}
	if !exists {
		st.Installed = false
		st.Problems = append(st.Problems, fmt.Sprintf("table %s.%s is missing", ob.Schema, capturesTable))
	}
	st.Current = st.Installed && len(st.Problems) == 0
	return st, nil
}

// UninstallOutbox drops the outbox table, with the rows still in it, and
// the capture triggers recorded as writing into it (a trigger left behind
// would make every write to its table fail). Idempotent. It refuses to drop
// a table of that name that is not a batuta outbox.
func UninstallOutbox(ctx context.Context, db *sql.DB, ob Outbox) error {
	ob = ob.withDefaults()
	if err := ob.validate("Outbox."); err != nil {
		return err
	}
	err := withConn(ctx, db, func(conn *sql.Conn) error {
		var err error
		if ob.Schema, err = resolveSchema(ctx, conn, ob.Schema); err != nil {
			return err
		}
		return withLock(ctx, conn, ob, func() error {
			exists, comment, err := tableComment(ctx, conn, ob.Schema, ob.Table)
			if err != nil {
				return err
			}
			if exists && comment != outboxMarker {
				return fmt.Errorf("table %s is not a batuta outbox; not dropping it", ob)
			}
			if err := dropRecordedCaptures(ctx, conn, ob); err != nil {
				return err
			}
			if exists {
				_, err = conn.ExecContext(ctx, "DROP TABLE IF EXISTS "+ob.quoted())
			}
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("batutamysql: uninstall outbox %s: %w", ob, err)
	}
	return nil
}

// dropRecordedCaptures drops the triggers batuta_captures records as
// writing into ob, and their records.
func dropRecordedCaptures(ctx context.Context, conn *sql.Conn, ob Outbox) error {
	exists, _, err := tableComment(ctx, conn, ob.Schema, capturesTable)
	if err != nil || !exists {
		return err
	}
	captures := quoteQualified(ob.Schema, capturesTable)
	rows, err := conn.QueryContext(ctx, "SELECT table_schema, trigger_name FROM "+captures+" WHERE outbox = ?", ob.Table)
	if err != nil {
		return err
	}
	type trig struct{ schema, name string }
	var trigs []trig
	for rows.Next() {
		var t trig
		if err := rows.Scan(&t.schema, &t.name); err != nil {
			rows.Close()
			return err
		}
		trigs = append(trigs, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, t := range trigs {
		if validIdent("schema", t.schema) != nil || validIdent("trigger", t.name) != nil {
			continue // not written by us
		}
		if _, err := conn.ExecContext(ctx, "DROP TRIGGER IF EXISTS "+quoteQualified(t.schema, t.name)); err != nil {
			return err
		}
	}
	_, err = conn.ExecContext(ctx, "DELETE FROM "+captures+" WHERE outbox = ?", ob.Table)
	return err
}

// existingTrigger is what the catalog and batuta_captures say about a
// capture trigger.
type existingTrigger struct {
	exists      bool
	onTable     string // EVENT_OBJECT_TABLE
	hasRecord   bool
	columnsJSON string
	fingerprint string
}

func loadTrigger(ctx context.Context, q queryer, c Capture, op Op) (existingTrigger, error) {
	var t existingTrigger
	name := c.triggerName(op)
	err := q.QueryRowContext(ctx, `SELECT EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS
WHERE TRIGGER_SCHEMA = ? AND TRIGGER_NAME = ?`, c.Schema, name).Scan(&t.onTable)
	switch {
	case err == nil:
		t.exists = true
	case !errors.Is(err, sql.ErrNoRows):
		return t, err
	}
	exists, _, err := tableComment(ctx, q, c.Outbox.Schema, capturesTable)
	if err != nil || !exists {
		return t, err
	}
	err = q.QueryRowContext(ctx, "SELECT columns_json, fingerprint FROM "+quoteQualified(c.Outbox.Schema, capturesTable)+
		" WHERE table_schema = ? AND trigger_name = ?", c.Schema, name).Scan(&t.columnsJSON, &t.fingerprint)
	switch {
	case err == nil:
		t.hasRecord = true
	case !errors.Is(err, sql.ErrNoRows):
		return t, err
	}
	return t, nil
}

// resolve fills in the default schemas from the connection.
func (c Capture) resolve(ctx context.Context, q queryer) (Capture, error) {
	var err error
	if c.Schema, err = resolveSchema(ctx, q, c.Schema); err != nil {
		return c, err
	}
	if c.Outbox.Schema, err = resolveSchema(ctx, q, c.Outbox.Schema); err != nil {
		return c, err
	}
	return c, nil
}

// capturedColumns reads and checks the columns of c's table.
func capturedColumns(ctx context.Context, q queryer, c Capture) ([]columnInfo, error) {
	cols, err := loadColumns(ctx, q, c.Schema, c.Table)
	if err != nil {
		return nil, err
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("table %s.%s does not exist", c.Schema, c.Table)
	}
	for _, col := range cols {
		if err := validIdent("column", col.Name); err != nil {
			return nil, err
		}
	}
	for _, want := range c.Columns {
		if !slices.ContainsFunc(cols, func(col columnInfo) bool { return strings.EqualFold(col.Name, want) }) {
			return nil, &batuta.ConfigError{Field: "Capture.Columns", Reason: fmt.Sprintf("table %s.%s has no column %q", c.Schema, c.Table, want)}
		}
	}
	return cols, nil
}

// InstallCapture installs (or replaces, if stale) the capture triggers of c
// on the user table, and the outbox they write to (see InstallOutbox).
// Idempotent: a trigger that is current is left alone, no DDL run. A stale
// trigger is replaced atomically: with CREATE OR REPLACE TRIGGER on
// MariaDB, and on MySQL, which lacks it, with DROP and CREATE under LOCK
// TABLES ... WRITE, so no write slips between the old and the new trigger.
// Triggers of operations not in c.Ops are left alone. MySQL's DDL is not
// transactional: an error part way leaves the operations done so far
// installed; run it again.
//
// Every identifier is validated and quoted, the table's column names
// included; c.When is trusted SQL (see Capture). An unknown table or
// column, or a When that does not compile, is an error.
func InstallCapture(ctx context.Context, db *sql.DB, c Capture) error {
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return err
	}
	err := withConn(ctx, db, func(conn *sql.Conn) error {
		var err error
		if c, err = c.resolve(ctx, conn); err != nil {
			return err
		}
		return withLock(ctx, conn, c.Outbox, func() error { return installCapture(ctx, conn, c) })
	})
	if err != nil {
		return fmt.Errorf("batutamysql: install capture of %s.%s into %s: %w", c.Schema, c.Table, c.Outbox, err)
	}
	return nil
}

func installCapture(ctx context.Context, conn *sql.Conn, c Capture) error {
	if err := ensureOutbox(ctx, conn, c.Outbox); err != nil {
		return err
	}
	cols, err := capturedColumns(ctx, conn, c)
	if err != nil {
		return err
	}
	var version string
	if err := conn.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		return err
	}
	mariadb := strings.Contains(strings.ToLower(version), "mariadb")
	for _, op := range c.ops() {
		name := c.triggerName(op)
		t, err := loadTrigger(ctx, conn, c, op)
		if err != nil {
			return err
		}
		if t.exists && t.onTable != c.Table {
			return fmt.Errorf("a trigger named %s.%s already exists on table %s", c.Schema, name, t.onTable)
		}
		fp := fingerprint(captureTriggerDDL(c, op, cols, false))
		if t.exists && t.hasRecord && t.fingerprint == fp {
			continue
		}
		if err := createTrigger(ctx, conn, c, op, cols, t.exists, mariadb); err != nil {
			return fmt.Errorf("create %s trigger: %w", op, err)
		}
		if _, err := conn.ExecContext(ctx, "INSERT INTO "+quoteQualified(c.Outbox.Schema, capturesTable)+
			` (table_schema, trigger_name, table_name, outbox, op, columns_json, fingerprint, installed_at)
VALUES (?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))
ON DUPLICATE KEY UPDATE table_name = VALUES(table_name), outbox = VALUES(outbox), op = VALUES(op),
 columns_json = VALUES(columns_json), fingerprint = VALUES(fingerprint), installed_at = VALUES(installed_at)`,
			c.Schema, name, c.Table, c.Outbox.Table, string(op), columnsJSON(cols), fp); err != nil {
			return err
		}
	}
	return nil
}

// createTrigger creates the trigger of op or atomically replaces it.
func createTrigger(ctx context.Context, conn *sql.Conn, c Capture, op Op, cols []columnInfo, exists, mariadb bool) error {
	if !exists || mariadb {
		_, err := conn.ExecContext(ctx, captureTriggerDDL(c, op, cols, exists))
		return err
	}
	// MySQL: hold the table's write lock across DROP and CREATE so no
	// write runs without a trigger.
	if _, err := conn.ExecContext(ctx, "LOCK TABLES "+quoteQualified(c.Schema, c.Table)+" WRITE, "+
		c.Outbox.quoted()+" WRITE"); err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = conn.ExecContext(ctx, "UNLOCK TABLES")
	}()
	if _, err := conn.ExecContext(ctx, "DROP TRIGGER "+quoteQualified(c.Schema, c.triggerName(op))); err != nil {
		return err
	}
	_, err := conn.ExecContext(ctx, captureTriggerDDL(c, op, cols, false))
	return err
}

// CaptureStatus reports whether c's triggers (only the operations in
// c.Ops) and its outbox exist and are current: generated by this version of
// batutamysql from this spec and from the table's present columns. A column
// added, dropped or retyped since InstallCapture makes them stale, and
// Problems names it. It changes nothing.
func CaptureStatus(ctx context.Context, db *sql.DB, c Capture) (InstallStatus, error) {
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return InstallStatus{}, err
	}
	var st InstallStatus
	err := withConn(ctx, db, func(conn *sql.Conn) error {
		var err error
		if c, err = c.resolve(ctx, conn); err != nil {
			return err
		}
		if st, err = outboxStatus(ctx, conn, c.Outbox); err != nil {
			return err
		}
		cols, err := loadColumns(ctx, conn, c.Schema, c.Table)
		if err != nil {
			return err
		}
		if len(cols) == 0 {
			st.Installed = false
			st.Problems = append(st.Problems, fmt.Sprintf("table %s.%s is missing", c.Schema, c.Table))
		}
		for _, op := range c.ops() {
			name := c.triggerName(op)
			t, err := loadTrigger(ctx, conn, c, op)
			if err != nil {
				return err
			}
			switch {
			case !t.exists:
				st.Installed = false
				st.Problems = append(st.Problems, fmt.Sprintf("%s trigger %s is missing", op, name))
			case len(cols) == 0:
			case !t.hasRecord:
				st.Problems = append(st.Problems, fmt.Sprintf("%s trigger %s has no record in %s", op, name, capturesTable))
			case t.fingerprint != fingerprint(captureTriggerDDL(c, op, cols, false)):
				if d := columnDrift(t.columnsJSON, cols); d != "" {
					st.Problems = append(st.Problems, fmt.Sprintf("%s trigger %s is stale: table %s changed since install (%s)", op, name, c.Table, d))
				} else {
					st.Problems = append(st.Problems, fmt.Sprintf("%s trigger %s is stale", op, name))
				}
			}
		}
		st.Current = st.Installed && len(st.Problems) == 0
		return nil
	})
	if err != nil {
		return InstallStatus{}, fmt.Errorf("batutamysql: capture status of %s.%s: %w", c.Schema, c.Table, err)
	}
	return st, nil
}

// UninstallCapture drops c's capture triggers for the operations in c.Ops
// (default all three) and their records. The outbox and rows already
// captured stay. Idempotent: missing triggers are fine.
func UninstallCapture(ctx context.Context, db *sql.DB, c Capture) error {
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return err
	}
	err := withConn(ctx, db, func(conn *sql.Conn) error {
		var err error
		if c, err = c.resolve(ctx, conn); err != nil {
			return err
		}
		return withLock(ctx, conn, c.Outbox, func() error {
			recorded, _, err := tableComment(ctx, conn, c.Outbox.Schema, capturesTable)
			if err != nil {
				return err
			}
			for _, op := range c.ops() {
				name := c.triggerName(op)
				if _, err := conn.ExecContext(ctx, "DROP TRIGGER IF EXISTS "+quoteQualified(c.Schema, name)); err != nil {
					return err
				}
				if recorded {
					if _, err := conn.ExecContext(ctx, "DELETE FROM "+quoteQualified(c.Outbox.Schema, capturesTable)+
						" WHERE table_schema = ? AND trigger_name = ?", c.Schema, name); err != nil {
						return err
					}
				}
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("batutamysql: uninstall capture of %s.%s: %w", c.Schema, c.Table, err)
	}
	return nil
}
