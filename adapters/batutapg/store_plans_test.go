package batutapg

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// TestHotPlansUseIndexesOnEmptyTables plans the store's hot statements as
// a connection does the first time it runs them: generically (sendHot's
// settings), on a schema whose tables are still empty, as on a fresh
// deployment. Each such plan stays with its connection for as long as the
// connection lives, so a plan that scanned a table sequentially because
// the table was empty then would scan it on every call once it holds
// thousands of rows: a completion once took 0.4 ms per task, most of it
// reading the tasks table through, where looking the task up by its key
// takes microseconds. None of these plans may scan the tables that grow
// with the work.
func TestHotPlansUseIndexesOnEmptyTables(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 2)
	s := newTestStore(t, pool, Config{DisableListen: true, Logger: quiet()})
	ctx := testCtx(t)

	stmts := map[string]string{
		"createRuns":       s.q.createRuns,
		"createPlain":      s.q.createPlain,
		"createClaim":      s.q.createClaim,
		"claim":            s.q.claim,
		"claimPlain":       s.q.claimPlain,
		"probe":            s.q.probe,
		"promote":          s.q.promote,
		"extend":           s.q.extend,
		"lockRuns":         s.q.lockRuns,
		"complete":         s.q.complete,
		"completePlain":    s.q.completePlain,
		"completeStep":     s.q.completeStep,
		"completeStepFull": s.q.completeStepFull,
		"completeLink":     s.q.completeLink,
	}
	grows := regexp.MustCompile(`Seq Scan on (tasks|runs|run_states|run_queue|run_groups|task_groups|signals)\b`)
	// A task looked up by its run alone reads every task of the run (10,000
	// in a large DAG) to keep one: a claim's dependencies, a completion's
	// dependents are each looked up by the whole key.
	wholeRun := regexp.MustCompile(`Index Scan using tasks_pkey on tasks \w+ [^\n]*\n *Index Cond: \(run_id = [^()\n]*\)\n`)
	param := regexp.MustCompile(`\$(\d+)`)
	for _, set := range []string{setGeneric, setGenericAsync, s.setBounded} {
		for name, sql := range stmts {
			n := 0
			for _, m := range param.FindAllStringSubmatch(sql, -1) {
				k, err := strconv.Atoi(m[1])
				require.NoError(t, err)
				n = max(n, k)
			}
			nulls := strings.TrimSuffix(strings.Repeat("NULL,", n), ",")
			var plan []string
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, set); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, "PREPARE hot_plan AS "+sql); err != nil {
					return err
				}
				explain := "EXPLAIN EXECUTE hot_plan"
				if n > 0 {
					explain += "(" + nulls + ")"
				}
				rows, err := tx.Query(ctx, explain)
				if err != nil {
					return err
				}
				plan, err = pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					return err
				}
				_, err = tx.Exec(ctx, "DEALLOCATE hot_plan")
				return err
			})
			require.NoError(t, err, "%s under %q", name, set)
			text := strings.Join(plan, "\n")
			if m := grows.FindString(text); m != "" {
				t.Errorf("%s, planned under %q on empty tables: %s\n%s", name, set, m, text)
			}
			if os.Getenv("BATUTA_SHOW_PLANS") != "" && set == setGeneric {
				t.Logf("%s: %d plan nodes\n%s", name, strings.Count(text, "->")+1, text)
			}
			if m := wholeRun.FindString(text + "\n"); m != "" && (name == "claimPlain" || name == "completeLink" || strings.HasPrefix(name, "completeStep")) {
				// (Other statements read a run's tasks whole where they
				// mean to: an admitted run's first tasks, a parent run's
				// task found by name, a repeated completion's dependents.)
				t.Errorf("%s, planned under %q: a task looked up by its run alone:\n%s\n%s", name, set, m, text)
			}
		}
	}
}
