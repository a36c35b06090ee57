package batutapg

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"
)

// copyTestRuns returns n runs of assorted shapes (a DAG, fire-on rules, a
// signal wait, a deadline, a priority, start times soon and later, a
// paused workflow), created at now.
func copyTestRuns(n int, now time.Time) []batuta.NewRun {
	runs := make([]batuta.NewRun, n)
	for i := range runs {
		id := newRunID()
		nr := batuta.NewRun{ID: id, Workflow: "wf", CreatedAt: now,
			Event: batuta.Event{ID: fmt.Sprintf("ev-%04d", i), Data: []byte(fmt.Sprintf(`{"i":%d}`, i)), Time: now, Subject: "s"}}
		switch i % 6 {
		case 0:
			nr.Tasks = []batuta.TaskSpec{{Name: "only"}}
		case 1:
			nr.Tasks = []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{0}},
				{Name: "d", Deps: []int{1, 2}, FireOn: batuta.TaskFailed}}
			nr.Deadline = now.Add(time.Hour)
		case 2:
			nr.Tasks = []batuta.TaskSpec{{Name: "wait", Signal: "go"}}
			nr.Priority = 7
		case 3:
			nr.Tasks = []batuta.TaskSpec{{Name: "later"}, {Name: "after", Deps: []int{0}}}
			nr.StartAt = now.Add(time.Hour)
		case 4:
			nr.Tasks = []batuta.TaskSpec{{Name: "soon"}}
			nr.StartAt = now.Add(500 * time.Millisecond)
		case 5:
			nr.Workflow = "paused"
			nr.Tasks = []batuta.TaskSpec{{Name: "p1"}, {Name: "p2", Deps: []int{0}}}
		}
		runs[i] = nr
	}
	return runs
}

// tableRows returns every row of schema.table as JSON text, sorted,
// without the columns named in drop.
func tableRows(t *testing.T, pool *pgxpool.Pool, schema, table string, drop ...string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT (to_jsonb(x) - coalesce($1::text[], '{}'))::text FROM `+quoteIdent(schema)+`.`+table+` x`, drop)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	sort.Strings(out)
	return out
}

// TestCopyCreatesMatchesInsert: the COPY path and the plain insert
// statement write the very rows the full insert statement writes, column
// for column (the COPY on a schema whose name needs quoting).
func TestCopyCreatesMatchesInsert(t *testing.T) {
	pool := storeTestPool(t, 8)
	ctx := context.Background()
	sc := newTestStore(t, pool, Config{Schema: `batuta cp"y_` + storeSuffix()})
	si := newTestStore(t, pool, Config{Schema: "batuta_ins_" + storeSuffix()})
	// And the full insert statement, with the steps the plain one leaves
	// out (they find nothing to do here).
	sf := newTestStore(t, pool, Config{Schema: "batuta_full_" + storeSuffix()})
	sf.q.createPlain = sf.q.createRuns
	for _, s := range []*Store{sc, si, sf} {
		_, err := s.SetPaused(ctx, "paused", true)
		require.NoError(t, err)
	}
	runs := copyTestRuns(300, time.Now().UTC().Truncate(time.Microsecond))
	prep := func(s *Store) []createItem {
		items := make([]createItem, len(runs))
		for i := range runs {
			nr := runs[i]
			it, err := s.prepareRun(&nr)
			require.NoError(t, err)
			items[i] = it
		}
		return items
	}
	citems := prep(sc)
	require.True(t, copyable(citems))
	require.NoError(t, sc.copyCreates(ctx, citems))
	for _, s := range []*Store{si, sf} {
		res, err := s.flushCreates(ctx, prep(s))
		require.NoError(t, err)
		for _, r := range res {
			require.True(t, r.created)
		}
	}
	for _, table := range []string{"runs", "run_states", "tasks"} {
		c, i, f := tableRows(t, pool, sc.cfg.Schema, table), tableRows(t, pool, si.cfg.Schema, table), tableRows(t, pool, sf.cfg.Schema, table)
		require.Len(t, c, len(f), table)
		require.Equal(t, f, i, "rows of %s: plain and full insert statements", table)
		require.Equal(t, f, c, "rows of %s: COPY and the full insert statement", table)
	}
	// And the store reads them back alike: a root task held for the
	// paused workflow, ready ones claimable.
	for _, s := range []*Store{sc, si} {
		cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "t", Limit: 1000, Now: time.Now(), LeaseUntil: time.Now().Add(time.Minute)})
		require.NoError(t, err)
		for _, c := range cs {
			require.NotEqual(t, "paused", c.Workflow)
		}
		require.Len(t, cs, 300/6*3, "the roots of the plain, DAG and signal runs: not those starting later or paused")
	}
}

// TestCopyCreatesDuplicates: a batch holding an event ID already recorded
// falls back to the insert statement, which answers the existing run for
// it and creates the others; on a pool and on a *sql.DB.
func TestCopyCreatesDuplicates(t *testing.T) {
	pool := storeTestPool(t, 8)
	t.Run("pool", func(t *testing.T) { testCopyDuplicates(t, pool, newTestStore(t, pool, Config{})) })
	t.Run("sql.DB", func(t *testing.T) {
		db := stdlib.OpenDBFromPool(pool)
		t.Cleanup(func() { require.NoError(t, db.Close()) })
		schema := "batuta_cpdb_" + storeSuffix()
		dropSchemaAtCleanup(t, pool, schema)
		s, err := NewFromDB(context.Background(), db, Config{Schema: schema})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, s.Close()) })
		testCopyDuplicates(t, pool, s)
	})
}

func testCopyDuplicates(t *testing.T, pool *pgxpool.Pool, s *Store) {
	ctx := context.Background()
	now := time.Now()
	runs := copyTestRuns(400, now)
	first, err := s.CreateRuns(ctx, runs[10:11])
	require.NoError(t, err)
	require.True(t, first[0].Created)
	again := append([]batuta.NewRun(nil), runs...)
	again[10].ID = newRunID() // a new run for an event already recorded
	res, err := s.CreateRuns(ctx, again)
	require.NoError(t, err)
	require.Len(t, res, len(again))
	for i, r := range res {
		if i == 10 {
			require.False(t, r.Created)
			require.Equal(t, runs[10].ID, r.ID)
			continue
		}
		require.True(t, r.Created, i)
		require.Equal(t, again[i].ID, r.ID)
	}
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM `+s.schema+`.runs`).Scan(&n))
	require.Equal(t, len(runs), n)
	require.Positive(t, s.copySkip.Load(), "the duplicate made the next batches skip COPY")
	// A batch of new events, COPY skipped: inserted all the same.
	more := copyTestRuns(200, now)
	for i := range more {
		more[i].Event.ID = "more-" + more[i].Event.ID
	}
	res, err = s.CreateRuns(ctx, more)
	require.NoError(t, err)
	for _, r := range res {
		require.True(t, r.Created)
	}
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM `+s.schema+`.runs`).Scan(&n))
	require.Equal(t, len(runs)+len(more), n)
}

// TestCopyCreatesOverlapping: batches from concurrent callers sharing
// event IDs neither deadlock nor lose or double a run; every caller gets
// the one run recorded for each of its events.
func TestCopyCreatesOverlapping(t *testing.T) {
	pool := storeTestPool(t, 16)
	ctx := context.Background()
	s := newTestStore(t, pool, Config{})
	const callers, per, step = 4, 400, 200
	now := time.Now()
	got := make([]map[string]string, callers) // event ID -> run ID, per caller
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs := make([]batuta.NewRun, per)
			for i := range runs {
				runs[i] = batuta.NewRun{ID: newRunID(), Workflow: "wf", CreatedAt: now,
					Event: batuta.Event{ID: fmt.Sprintf("e%05d", g*step+i), Time: now}, Tasks: []batuta.TaskSpec{{Name: "t"}}}
			}
			res, err := s.CreateRuns(ctx, runs)
			if err != nil {
				errs <- err
				return
			}
			m := map[string]string{}
			for i, r := range res {
				m[runs[i].Event.ID] = r.ID
			}
			got[g] = m
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	rows, err := pool.Query(ctx, `SELECT event_id, id::text FROM `+s.schema+`.runs`)
	require.NoError(t, err)
	recorded := map[string]string{}
	for rows.Next() {
		var e, id string
		require.NoError(t, rows.Scan(&e, &id))
		require.NotContains(t, recorded, e, "event %s recorded twice", e)
		recorded[e] = id
	}
	require.NoError(t, rows.Err())
	require.Len(t, recorded, (callers-1)*step+per)
	for g := range got {
		for e, id := range got[g] {
			require.Equal(t, recorded[e], id, "caller %d, event %s", g, e)
		}
	}
}

// TestCopyCreatesConnectionKilled: the backend running a batch's COPY is
// terminated mid-way; the batch is written by the insert statement on
// another connection, whole, and the call succeeds.
func TestCopyCreatesConnectionKilled(t *testing.T) {
	pool := storeTestPool(t, 8)
	ctx := context.Background()
	s := newTestStore(t, pool, Config{Logger: quiet()})
	runs := make([]batuta.NewRun, 20000)
	now := time.Now()
	for i := range runs {
		runs[i] = batuta.NewRun{ID: newRunID(), Workflow: "wf", CreatedAt: now,
			Event: batuta.Event{ID: fmt.Sprintf("k%05d", i), Data: []byte(`{"n":1}`), Time: now}, Tasks: []batuta.TaskSpec{{Name: "t"}}}
	}
	stop := make(chan struct{})
	killed := make(chan int32, 1)
	go func() {
		// Terminate the first backend seen copying into this schema.
		for {
			select {
			case <-stop:
				return
			default:
			}
			var pid int32
			err := pool.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE query ILIKE 'copy %' AND position($1 in query) > 0 LIMIT 1`, s.cfg.Schema).Scan(&pid)
			if err == nil {
				var ok bool
				if pool.QueryRow(ctx, "SELECT pg_terminate_backend($1)", pid).Scan(&ok) == nil && ok {
					killed <- pid
					return
				}
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	res, err := s.CreateRuns(ctx, runs)
	close(stop)
	require.NoError(t, err)
	select {
	case <-killed:
	default:
		t.Fatal("the COPY ended before its backend could be terminated: nothing was tested")
	}
	require.Len(t, res, len(runs))
	for i, r := range res {
		require.True(t, r.Created, i)
		require.Equal(t, runs[i].ID, r.ID)
	}
	var nRuns, nTasks, nStates int
	require.NoError(t, pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+s.schema+`.runs), (SELECT count(*) FROM `+s.schema+`.tasks), (SELECT count(*) FROM `+s.schema+`.run_states)`).Scan(&nRuns, &nTasks, &nStates))
	require.Equal(t, []int{len(runs), len(runs), len(runs)}, []int{nRuns, nTasks, nStates})
	require.Positive(t, s.copySkip.Load(), "the failed COPY made the next batches skip it")
}
