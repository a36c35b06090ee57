package main

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/batuta-dev/batuta/adapters/batutapg"
	"github.com/batuta-dev/batuta/adapters/batutasqlite"
)

func (a *app) migrateCommand() *cobra.Command {
	c := groupCommand("migrate", "Apply or show the store's schema migrations",
		`The store's tables are created and upgraded by versioned migrations embedded in
this build. Stores apply them when an orchestrator opens them, unless told not to
(batutapg.Config.ManualMigrate, batutasqlite.Config.ManualMigrate): then run
'batuta migrate up' in a deploy step. The other batuta commands never migrate; they
exit with code 5 when the schema is behind.`)
	c.AddCommand(&cobra.Command{
		Use:   "up",
		Short: "Apply the pending migrations",
		Long: `Apply the store's pending migrations. It is idempotent, and safe while other
processes run it or use the store. A SQLite file that does not exist is created.`,
		Example: `  batuta migrate up --dsn postgres://admin@db/app --schema batuta
  batuta migrate up --dsn sqlite:/var/lib/app/batuta.db`,
		Args: usageArgs(cobra.NoArgs),
		RunE: a.migrateUp,
	}, &cobra.Command{
		Use:   "status",
		Short: "Show the schema version and the pending migrations",
		Long: `Show the store's schema version, the version this build needs and the applied
migrations. Exit code 5 when migrations are pending, so a deploy script can test it.`,
		Example: `  batuta migrate status --dsn sqlite:batuta.db
  batuta migrate status --json | jq .pending`,
		Args: usageArgs(cobra.NoArgs),
		RunE: a.migrateStatus,
	})
	return c
}

func (a *app) migrateUp(cmd *cobra.Command, _ []string) error {
	ctx, cancel := a.context(cmd.Context())
	defer cancel()
	b, err := a.connect(ctx, true)
	if err != nil {
		return err
	}
	defer b.close()
	before, err := b.status(ctx)
	if err != nil {
		return err
	}
	if err := b.migrate(ctx, a); err != nil {
		return err
	}
	after, err := b.status(ctx)
	if err != nil {
		return err
	}
	if a.json {
		return writeJSON(a.out(cmd), struct {
			*schemaStatus
			From    int `json:"from"`
			Applied int `json:"applied_now"`
		}{after, before.Current, len(after.Applied) - len(before.Applied)})
	}
	w := a.out(cmd)
	if n := len(after.Applied) - len(before.Applied); n > 0 {
		printf(w, "%s %s: applied %d migration(s), version %d -> %d\n", after.Store, after.Where, n, before.Current, after.Current)
	} else {
		printf(w, "%s %s: up to date at version %d\n", after.Store, after.Where, after.Current)
	}
	return nil
}

// migrate applies the pending migrations. For SQLite it opens the store,
// which migrates with a's logger and switches the file to WAL mode as an
// orchestrator would.
func (b *backend) migrate(ctx context.Context, a *app) error {
	switch b.kind {
	case "postgres":
		return batutapg.MigrateSchema(ctx, b.pool, b.schema)
	default:
		s, err := batutasqlite.Open(ctx, b.path, batutasqlite.Config{ReadConns: 1, Logger: a.log})
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		return s.Close()
	}
}

func (a *app) migrateStatus(cmd *cobra.Command, _ []string) error {
	ctx, cancel := a.context(cmd.Context())
	defer cancel()
	b, err := a.connect(ctx, false)
	if err != nil {
		return err
	}
	defer b.close()
	st, err := b.status(ctx)
	if err != nil {
		return err
	}
	w := a.out(cmd)
	if a.json {
		if err := writeJSON(w, struct {
			*schemaStatus
			Pending int `json:"pending"`
		}{st, st.Pending()}); err != nil {
			return err
		}
	} else {
		state := "up to date"
		switch {
		case st.Pending() > 0:
			state = fmt.Sprintf("%d migration(s) pending: run 'batuta migrate up'", st.Pending())
		case st.Current > st.Needed:
			state = "newer than this build (upgrade batuta)"
		}
		printf(w, "%s %s: version %d, this build needs %d: %s\n", st.Store, st.Where, st.Current, st.Needed, state)
		if len(st.Applied) > 0 {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			printf(tw, "\nVERSION\tNAME\tAPPLIED\n")
			for _, m := range st.Applied {
				printf(tw, "%d\t%s\t%s\n", m.Version, sanitize(m.Name, 60), m.AppliedAt.UTC().Format(time.RFC3339))
			}
			_ = tw.Flush()
		}
	}
	if st.Pending() > 0 {
		return withCode(exitSchema, fmt.Errorf("%w: %d migration(s) pending", errSchemaBehind, st.Pending()))
	}
	return nil
}

// writeJSON writes v as indented JSON and a newline.
func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}
