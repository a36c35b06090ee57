package batutapg

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/batuta-dev/batuta/internal/outboxsql"
	"github.com/jackc/pgx/v5"
)

// Installing outboxes and capture triggers.
//
// Everything here is idempotent and transactional: an installer takes an
// advisory lock for the outbox (so instances starting together do not
// race), checks what exists, creates or replaces only what is missing or
// stale, and commits; on any error nothing changes. Each object it creates
// carries a comment with a fingerprint of its definition, which is how
// OutboxStatus and CaptureStatus tell "installed" from "current". DDL is
// sent with the extended protocol, which accepts a single statement, so
// even a When condition cannot smuggle in a second statement.

// The installers take a Beginner (declared with the Store's migrations):
// *pgxpool.Pool, *pgx.Conn or pgx.Tx. With a pgx.Tx they run inside it (as
// a savepoint), so they can be part of a migration of your own.

// Op is a row operation a capture trigger fires on.
type Op string

// The operations InstallCapture can capture. TRUNCATE is not captured (it
// has no rows to report).
const (
	OpInsert Op = "insert"
	OpUpdate Op = "update"
	OpDelete Op = "delete"
)

// allOps is the default of Capture.Ops, in the order triggers are made.
var allOps = []Op{OpInsert, OpUpdate, OpDelete}

func (op Op) sqlEvent() string { return strings.ToUpper(string(op)) }

// Capture describes the database triggers that copy the changes of one
// user table into an outbox: one AFTER ... FOR EACH ROW trigger per
// operation, each writing one outbox row per changed row (operation,
// schema, table, new and old row images as jsonb, time) and notifying the
// outbox's channel with the new row's id.
//
// Each operation's trigger is its own object, named batuta_<op>_<8 hex
// digits of the outbox name>: InstallCapture with Ops [insert] and later
// with Ops [update] leaves both in place, and a second install of the same
// operation replaces the first. So operations can have different When
// conditions, installed by separate calls.
type Capture struct {
	// Outbox receives the changes; its zero value is public.batuta_outbox.
	Outbox Outbox
	// Schema of the user table. Default "public".
	Schema string
	// Table is the user table. Required.
	Table string
	// Ops are the operations to capture. Default: insert, update and delete.
	Ops []Op
	// Columns limits update capture to updates that change at least one of
	// these columns (the trigger is declared UPDATE OF the columns and
	// fires only when their values are DISTINCT FROM the old ones, so a
	// no-op SET col = col is not captured). Requires OpUpdate in Ops; does
	// not affect insert and delete. The columns' types need an equality
	// operator (json does not have one; jsonb does). Default: every update.
	Columns []string
	// When is an SQL boolean expression over NEW and OLD that must hold for
	// a row to be captured, placed verbatim in the trigger's WHEN (...)
	// clause, e.g. "NEW.status = 'paid'". It is trusted SQL, like a
	// migration: write it in code, never build it from user input.
	// PostgreSQL checks it at install time (an insert trigger cannot
	// reference OLD, a delete trigger cannot reference NEW, no subqueries).
	// Default: every row.
	When string
}

func (c Capture) withDefaults() Capture {
	c.Outbox = c.Outbox.withDefaults()
	if c.Schema == "" {
		c.Schema = "public"
	}
	c.Ops, c.When = outboxsql.CaptureDefaults(c.Ops, c.When)
	return c
}

func (c Capture) validate() error {
	if err := c.Outbox.validate("Capture.Outbox."); err != nil {
		return err
	}
	if err := validIdent("schema", c.Schema); err != nil {
		return fmt.Errorf("batutapg: Capture.Schema: %w", err)
	}
	if err := validIdent("table", c.Table); err != nil {
		return fmt.Errorf("batutapg: Capture.Table: %w", err)
	}
	return outboxsql.CheckCapture("batutapg", c.Ops, c.Columns, c.When, validIdent)
}

// ops returns c.Ops without duplicates, in the canonical order.
func (c Capture) ops() []Op { return outboxsql.CanonicalOps(c.Ops) }

// triggerName is the name of the capture trigger for op. Trigger names are
// per table, so the outbox's hash keeps captures into two outboxes apart.
func (c Capture) triggerName(op Op) string { return "batuta_" + string(op) + "_" + c.Outbox.hash() }

// InstallStatus tells whether an outbox or a capture is installed, and
// whether it is current: exactly what installing it again would create.
type InstallStatus struct {
	// Installed: every object exists (whatever its definition).
	Installed bool
	// Current: Installed, and every object matches this version of
	// batutapg and the given spec (and every trigger is enabled).
	Current bool
	// Problems lists, when not Current, what is missing or stale.
	Problems []string
}

const (
	outboxMarker   = "batuta outbox v1"
	functionMarker = "batuta capture function v1 "
	triggerMarker  = "batuta capture trigger v1 "
)

func fingerprint(ddl string) string {
	sum := sha256.Sum256([]byte(ddl))
	return hex.EncodeToString(sum[:16])
}

// outboxTableDDL creates the outbox table. Rows are claimed under a lease
// (claimed_until, claimed_by) and deleted once delivered; dead_at marks rows
// that can never be delivered (see Trigger).
func outboxTableDDL(ob Outbox) string {
	return `CREATE TABLE IF NOT EXISTS ` + ob.quoted() + ` (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	op text NOT NULL CHECK (op IN ('insert', 'update', 'delete', 'emit')),
	schema_name text,
	table_name text,
	new_row jsonb,
	old_row jsonb,
	event_id text,
	source text,
	type text,
	subject text,
	data bytea,
	metadata jsonb,
	event_time timestamptz,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	claimed_until timestamptz,
	claimed_by text,
	deliveries integer NOT NULL DEFAULT 0,
	dead_at timestamptz,
	last_error text
) WITH (fillfactor = 80)`
}

// captureFunctionDDL creates the trigger function shared by every capture
// into ob. The outbox's name is quoted and the channel is a literal; the
// body's dollar-quote tag is chosen so that neither can end it. Each
// trigger passes the captured table's schema and name as arguments, so rows
// of a partitioned table are reported under the table the capture was
// installed on, not under the partition.
func captureFunctionDDL(ob Outbox) string {
	// One notification per transaction: a transaction-local flag (reverted
	// with the notification if a subtransaction rolls back) skips
	// pg_notify for every row after the first, so a statement touching
	// many rows queues one notification, not one per row.
	notify := `	IF current_setting(` + quoteLiteral(ob.notifiedFlag()) + `, true) IS DISTINCT FROM '1' THEN
		PERFORM set_config(` + quoteLiteral(ob.notifiedFlag()) + `, '1', true);
		PERFORM pg_notify(` + quoteLiteral(ob.Channel) + `, row_id::text);
	END IF;
`
	if ob.NoNotify {
		notify = ""
	}
	body := `
DECLARE
	row_id bigint;
BEGIN
	IF TG_OP = 'INSERT' THEN
		INSERT INTO ` + ob.quoted() + ` (op, schema_name, table_name, new_row)
		VALUES ('insert', coalesce(TG_ARGV[0], TG_TABLE_SCHEMA), coalesce(TG_ARGV[1], TG_TABLE_NAME), to_jsonb(NEW))
		RETURNING id INTO row_id;
	ELSIF TG_OP = 'UPDATE' THEN
		INSERT INTO ` + ob.quoted() + ` (op, schema_name, table_name, new_row, old_row)
		VALUES ('update', coalesce(TG_ARGV[0], TG_TABLE_SCHEMA), coalesce(TG_ARGV[1], TG_TABLE_NAME), to_jsonb(NEW), to_jsonb(OLD))
		RETURNING id INTO row_id;
	ELSE
		INSERT INTO ` + ob.quoted() + ` (op, schema_name, table_name, old_row)
		VALUES ('delete', coalesce(TG_ARGV[0], TG_TABLE_SCHEMA), coalesce(TG_ARGV[1], TG_TABLE_NAME), to_jsonb(OLD))
		RETURNING id INTO row_id;
	END IF;
` + notify + `	RETURN NULL;
END
`
	tag := "$batuta$"
	for i := 0; strings.Contains(body, tag); i++ {
		tag = fmt.Sprintf("$batuta%d$", i)
	}
	return `CREATE OR REPLACE FUNCTION ` + quoteQualified(ob.Schema, ob.functionName()) +
		`() RETURNS trigger LANGUAGE plpgsql AS ` + tag + body + tag
}

// captureTriggerDDL creates the trigger for op.
func captureTriggerDDL(c Capture, op Op) string {
	var b strings.Builder
	b.WriteString(`CREATE TRIGGER ` + quoteIdent(c.triggerName(op)) + ` AFTER ` + op.sqlEvent())
	var conds []string
	if op == OpUpdate && len(c.Columns) > 0 {
		cols := make([]string, len(c.Columns))
		olds := make([]string, len(c.Columns))
		news := make([]string, len(c.Columns))
		for i, col := range c.Columns {
			cols[i] = quoteIdent(col)
			olds[i] = "OLD." + quoteIdent(col)
			news[i] = "NEW." + quoteIdent(col)
		}
		b.WriteString(` OF ` + strings.Join(cols, ", "))
		conds = append(conds, `ROW(`+strings.Join(olds, ", ")+`) IS DISTINCT FROM ROW(`+strings.Join(news, ", ")+`)`)
	}
	b.WriteString(` ON ` + quoteQualified(c.Schema, c.Table) + ` FOR EACH ROW`)
	if c.When != "" {
		conds = append(conds, "("+c.When+")")
	}
	if len(conds) > 0 {
		b.WriteString(` WHEN (` + strings.Join(conds, " AND ") + `)`)
	}
	b.WriteString(` EXECUTE FUNCTION ` + quoteQualified(c.Outbox.Schema, c.Outbox.functionName()) +
		`(` + quoteLiteral(c.Schema) + `, ` + quoteLiteral(c.Table) + `)`)
	return b.String()
}

// execDDL runs one statement with the extended protocol, which refuses
// more than one statement.
func execDDL(ctx context.Context, tx pgx.Tx, sql string) error {
	_, err := tx.Conn().PgConn().ExecParams(ctx, sql, nil, nil, nil, nil).Close()
	return err
}

// inTx runs fn in a transaction of db holding the outbox's install lock.
func inTx(ctx context.Context, db Beginner, ob Outbox, fn func(tx pgx.Tx) error) (err error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if _, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, ob.lockKey()); err != nil {
		return err
	}
	if err = fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// InstallOutbox creates the outbox table and its capture function if they
// are missing, and replaces the function if it is stale (another version of
// batutapg, another channel). Idempotent; safe to call at every start from
// every instance (installers of one outbox are serialised by an advisory
// lock). The schema must exist. It refuses to adopt an existing table of
// that name that is not a batuta outbox.
func InstallOutbox(ctx context.Context, db Beginner, ob Outbox) error {
	ob = ob.withDefaults()
	if err := ob.validate("Outbox."); err != nil {
		return err
	}
	err := inTx(ctx, db, ob, func(tx pgx.Tx) error { return ensureOutbox(ctx, tx, ob) })
	if err != nil {
		return fmt.Errorf("batutapg: install outbox %s: %w", ob, err)
	}
	return nil
}

func ensureOutbox(ctx context.Context, tx pgx.Tx, ob Outbox) error {
	st, err := outboxStatus(ctx, tx, ob)
	if err != nil {
		return err
	}
	if st.Current {
		return nil
	}
	var exists bool
	var comment *string
	if err := tx.QueryRow(ctx, `SELECT true, obj_description(c.oid, 'pg_class') FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
		ob.Schema, ob.Table).Scan(&exists, &comment); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if exists && (comment == nil || *comment != outboxMarker) {
		return fmt.Errorf("relation %s exists and is not a batuta outbox (its comment is not %q)", ob, outboxMarker)
	}
	if !exists {
		if err := execDDL(ctx, tx, outboxTableDDL(ob)); err != nil {
			return err
		}
		if err := execDDL(ctx, tx, `COMMENT ON TABLE `+ob.quoted()+` IS `+quoteLiteral(outboxMarker)); err != nil {
			return err
		}
	}
	fn := captureFunctionDDL(ob)
	if err := execDDL(ctx, tx, fn); err != nil {
		return err
	}
	return execDDL(ctx, tx, `COMMENT ON FUNCTION `+quoteQualified(ob.Schema, ob.functionName())+`() IS `+
		quoteLiteral(functionMarker+fingerprint(fn)))
}

// OutboxStatus reports whether the outbox table and its capture function
// exist and are current.
func OutboxStatus(ctx context.Context, db Beginner, ob Outbox) (InstallStatus, error) {
	ob = ob.withDefaults()
	if err := ob.validate("Outbox."); err != nil {
		return InstallStatus{}, err
	}
	var st InstallStatus
	err := readOnly(ctx, db, func(tx pgx.Tx) (err error) {
		st, err = outboxStatus(ctx, tx, ob)
		return err
	})
	if err != nil {
		return InstallStatus{}, fmt.Errorf("batutapg: outbox status %s: %w", ob, err)
	}
	return st, nil
}

func readOnly(ctx context.Context, db Beginner, fn func(tx pgx.Tx) error) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	return fn(tx)
}

func outboxStatus(ctx context.Context, tx pgx.Tx, ob Outbox) (InstallStatus, error) {
	st := InstallStatus{Installed: true}
	var tableComment, fnComment *string
	var tableExists, fnExists bool
	err := tx.QueryRow(ctx, `SELECT
		EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $2),
		(SELECT obj_description(c.oid, 'pg_class') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $2),
		EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
			WHERE n.nspname = $1 AND p.proname = $3 AND p.pronargs = 0),
		(SELECT obj_description(p.oid, 'pg_proc') FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
			WHERE n.nspname = $1 AND p.proname = $3 AND p.pronargs = 0)`,
		ob.Schema, ob.Table, ob.functionName()).Scan(&tableExists, &tableComment, &fnExists, &fnComment)
	if err != nil {
		return st, err
	}
	switch {
	case !tableExists:
		st.Installed = false
		st.Problems = append(st.Problems, fmt.Sprintf("table %s is missing", ob))
	case tableComment == nil || *tableComment != outboxMarker:
		st.Installed = false
		st.Problems = append(st.Problems, fmt.Sprintf("table %s is not a batuta outbox (its comment is not %q)", ob, outboxMarker))
	}
	switch want := functionMarker + fingerprint(captureFunctionDDL(ob)); {
	case !fnExists:
		st.Installed = false
		st.Problems = append(st.Problems, fmt.Sprintf("function %s() is missing", displayName(ob.Schema, ob.functionName())))
	case fnComment == nil || *fnComment != want:
		st.Problems = append(st.Problems, fmt.Sprintf("function %s() is stale", displayName(ob.Schema, ob.functionName())))
	}
	st.Current = st.Installed && len(st.Problems) == 0
	return st, nil
}

// UninstallOutbox drops the outbox's capture function with every capture
// trigger that uses it (on any table), then the outbox table with any rows
// not yet delivered. Idempotent: missing objects are fine. It refuses to
// drop a table of that name that is not a batuta outbox.
func UninstallOutbox(ctx context.Context, db Beginner, ob Outbox) error {
	ob = ob.withDefaults()
	if err := ob.validate("Outbox."); err != nil {
		return err
	}
	err := inTx(ctx, db, ob, func(tx pgx.Tx) error {
		var comment *string
		err := tx.QueryRow(ctx, `SELECT obj_description(c.oid, 'pg_class') FROM pg_class c
			JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
			ob.Schema, ob.Table).Scan(&comment)
		tableExists := err == nil
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if tableExists && (comment == nil || *comment != outboxMarker) {
			return fmt.Errorf("relation %s is not a batuta outbox; not dropping it", ob)
		}
		if err := execDDL(ctx, tx, `DROP FUNCTION IF EXISTS `+quoteQualified(ob.Schema, ob.functionName())+`() CASCADE`); err != nil {
			return err
		}
		if tableExists {
			return execDDL(ctx, tx, `DROP TABLE `+ob.quoted())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("batutapg: uninstall outbox %s: %w", ob, err)
	}
	return nil
}

// InstallCapture installs (or replaces, if stale) the capture triggers of
// c on the user table, and the outbox they write to (see InstallOutbox),
// in one transaction. Idempotent: when everything is current it changes
// nothing and takes no lock on the user table; otherwise creating a
// trigger briefly takes a SHARE ROW EXCLUSIVE lock on it. Triggers of
// operations not in c.Ops are left alone.
//
// Every identifier is validated and quoted; c.When is trusted SQL (see
// Capture). An error (an unknown table or column, a When that does not
// compile) rolls everything back.
func InstallCapture(ctx context.Context, db Beginner, c Capture) error {
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return err
	}
	err := inTx(ctx, db, c.Outbox, func(tx pgx.Tx) error {
		if err := ensureOutbox(ctx, tx, c.Outbox); err != nil {
			return err
		}
		existing, err := captureTriggers(ctx, tx, c)
		if err != nil {
			return err
		}
		for _, op := range c.ops() {
			ddl := captureTriggerDDL(c, op)
			want := triggerMarker + fingerprint(ddl)
			if t, ok := existing[c.triggerName(op)]; ok && t.comment == want && t.enabled {
				continue
			}
			table := quoteQualified(c.Schema, c.Table)
			name := quoteIdent(c.triggerName(op))
			if err := execDDL(ctx, tx, `DROP TRIGGER IF EXISTS `+name+` ON `+table); err != nil {
				return err
			}
			if err := execDDL(ctx, tx, ddl); err != nil {
				return fmt.Errorf("create %s trigger: %w", op, err)
			}
			if err := execDDL(ctx, tx, `COMMENT ON TRIGGER `+name+` ON `+table+` IS `+quoteLiteral(want)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("batutapg: install capture of %s into %s: %w", displayName(c.Schema, c.Table), c.Outbox, err)
	}
	return nil
}

type existingTrigger struct {
	comment string
	enabled bool
}

// captureTriggers returns c's capture triggers that exist, by name. A
// missing table is not an error here (CREATE TRIGGER reports it).
func captureTriggers(ctx context.Context, tx pgx.Tx, c Capture) (map[string]existingTrigger, error) {
	names := make([]string, 0, len(allOps))
	for _, op := range allOps {
		names = append(names, c.triggerName(op))
	}
	rows, err := tx.Query(ctx, `SELECT t.tgname, coalesce(obj_description(t.oid, 'pg_trigger'), ''), t.tgenabled <> 'D'
		FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND t.tgname = ANY($3)`, c.Schema, c.Table, names)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]existingTrigger{}
	for rows.Next() {
		var name string
		var t existingTrigger
		if err := rows.Scan(&name, &t.comment, &t.enabled); err != nil {
			return nil, err
		}
		out[name] = t
	}
	return out, rows.Err()
}

// CaptureStatus reports whether c's triggers (only the operations in
// c.Ops), its outbox table and capture function exist and are current.
func CaptureStatus(ctx context.Context, db Beginner, c Capture) (InstallStatus, error) {
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return InstallStatus{}, err
	}
	var st InstallStatus
	err := readOnly(ctx, db, func(tx pgx.Tx) error {
		var err error
		if st, err = outboxStatus(ctx, tx, c.Outbox); err != nil {
			return err
		}
		existing, err := captureTriggers(ctx, tx, c)
		if err != nil {
			return err
		}
		for _, op := range c.ops() {
			t, ok := existing[c.triggerName(op)]
			switch {
			case !ok:
				st.Installed = false
				st.Problems = append(st.Problems, fmt.Sprintf("%s trigger %s is missing", op, c.triggerName(op)))
			case t.comment != triggerMarker+fingerprint(captureTriggerDDL(c, op)):
				st.Problems = append(st.Problems, fmt.Sprintf("%s trigger %s is stale", op, c.triggerName(op)))
			case !t.enabled:
				st.Problems = append(st.Problems, fmt.Sprintf("%s trigger %s is disabled", op, c.triggerName(op)))
			}
		}
		st.Current = st.Installed && len(st.Problems) == 0
		return nil
	})
	if err != nil {
		return InstallStatus{}, fmt.Errorf("batutapg: capture status of %s: %w", displayName(c.Schema, c.Table), err)
	}
	return st, nil
}

// UninstallCapture drops c's capture triggers for the operations in c.Ops
// (default all three). The outbox and rows already captured stay.
// Idempotent: missing triggers are fine; a missing table is an error.
func UninstallCapture(ctx context.Context, db Beginner, c Capture) error {
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return err
	}
	err := inTx(ctx, db, c.Outbox, func(tx pgx.Tx) error {
		for _, op := range c.ops() {
			if err := execDDL(ctx, tx, `DROP TRIGGER IF EXISTS `+quoteIdent(c.triggerName(op))+` ON `+
				quoteQualified(c.Schema, c.Table)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("batutapg: uninstall capture of %s: %w", displayName(c.Schema, c.Table), err)
	}
	return nil
}
