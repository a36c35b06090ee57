package batutapg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// createItem is one run waiting in the create combiner.
type createItem struct {
	run   *batuta.NewRun
	id    [16]byte
	event []byte
	// startAt is when the run's root tasks become due (zero: at once).
	startAt time.Time
	// admit is the run's place in its workflow-level group: 0 none, 1
	// queued for admission, 2 admitted at creation.
	admit int16
	// rejected, if not empty, records the run canceled at once
	// (ConcurrencyCancelNewest) with this reason.
	rejected string
	// claim, if not nil, is the claim CreateRunAndClaim's caller wants
	// made in the insert's transaction.
	claim *batuta.ClaimParams
}

// readySoon: a run starting at most this long after its creation has its
// root tasks written ready, due at the start, rather than delayed: the
// claims' due_at <= now test holds them back until then, and no promote
// statement has to move them (a second write of each task, at the instant
// a burst of them comes due: a cron tick created ahead). The claims read
// past the entries not due yet in the ready index, which this bounds to
// the runs created in the last readySoon.
const readySoon = 2 * time.Second

// soon reports whether the item's root tasks are written ready, due at its
// start (see readySoon): a run that starts shortly, with no admission
// queue or debounce to pass first.
func (it *createItem) soon() bool {
	return !it.startAt.IsZero() && it.admit == 0 && it.run.Debounce == nil &&
		it.startAt.Sub(it.run.CreatedAt) <= readySoon
}

// plain reports whether the item's run needs none of the create
// statement's steps for child runs, admission queues and concurrency
// groups (see queries.createPlain).
func (it *createItem) plain() bool {
	nr := it.run
	if it.admit != 0 || nr.Concurrency != nil || nr.Parent != nil {
		return false
	}
	for _, ts := range nr.Tasks {
		if ts.Concurrency != nil {
			return false
		}
	}
	return true
}

// createStatement returns the create statement for items[idx...]: the
// plain one when every run is plain.
func (s *Store) createStatement(items []createItem, idx []int) string {
	for _, i := range idx {
		if !items[i].plain() {
			return s.q.createRuns
		}
	}
	return s.q.createPlain
}

// slow reports whether the item needs a transaction of its own (a group
// row or debounce key locked, runs looked up) rather than the combined
// insert.
func (it *createItem) slow() bool {
	nr := it.run
	return nr.Debounce != nil || (nr.Concurrency != nil && nr.Concurrency.Strategy != batuta.ConcurrencyQueue)
}

type createResult struct {
	id      string
	created bool
	claims  []batuta.Claim // for an item with a claim
}

// maxTasks is the most tasks a run may have (a task index fits the low
// bits of a lease token, and a smallint).
const maxTasks = tokenIndexMax

// CreateRun implements batuta.Store. Concurrent calls are combined into one
// INSERT per batch. Dedupe on (workflow, event ID) is a unique constraint.
// MaxActive is enforced against an estimate of the unfinished runs (see
// Config.ActiveRecount): several instances together may overshoot it a
// little.
func (s *Store) CreateRun(ctx context.Context, nr batuta.NewRun) (string, bool, error) {
	id, created, _, err := s.createRun(ctx, nr, nil)
	return id, created, err
}

// createRun is CreateRun, claiming as p says if not nil.
func (s *Store) createRun(ctx context.Context, nr batuta.NewRun, p *batuta.ClaimParams) (string, bool, []batuta.Claim, error) {
	res, created, err := s.createRunClaim(ctx, nr, p)
	if err != nil {
		return "", false, nil, err
	}
	return res.id, created, res.claims, nil
}

func (s *Store) createRunClaim(ctx context.Context, nr batuta.NewRun, p *batuta.ClaimParams) (createResult, bool, error) {
	it, err := s.prepareRun(&nr)
	if err != nil {
		return createResult{}, false, err
	}
	if it.slow() {
		res, err := s.createSlow(ctx, []createItem{it}, nr.MaxActive)
		if err != nil {
			return createResult{}, false, err
		}
		return createResult{id: res[0].ID}, res[0].Created, nil
	}
	if nr.MaxActive > 0 {
		busy, err := s.overCap(ctx, nr.MaxActive)
		if err != nil {
			return createResult{}, false, err
		}
		if busy {
			// A duplicate of an existing run is not refused as busy.
			if id, ok, err := s.existing(ctx, nr.Workflow, nr.Event.ID); err != nil {
				return createResult{}, false, err
			} else if ok {
				return createResult{id: id}, false, nil
			}
			return createResult{}, false, fmt.Errorf("batutapg: %w: %d or more unfinished runs", batuta.ErrBusy, nr.MaxActive)
		}
	}
	it.claim = p
	res, err := s.creates.do(ctx, []createItem{it})
	if err != nil {
		return createResult{}, false, err
	}
	return res[0], res[0].created, nil
}

func (s *Store) prepareRun(nr *batuta.NewRun) (createItem, error) {
	id, ok := parseUUID(nr.ID)
	if !ok {
		return createItem{}, fmt.Errorf("batutapg: run ID %q is not a UUID", nr.ID)
	}
	switch {
	case len(nr.Tasks) == 0:
		return createItem{}, fmt.Errorf("batutapg: run %s has no tasks", nr.ID)
	case len(nr.Tasks) > maxTasks:
		return createItem{}, fmt.Errorf("batutapg: run %s has %d tasks, over %d", nr.ID, len(nr.Tasks), maxTasks)
	}
	for _, f := range []struct{ what, v string }{{"workflow name", nr.Workflow}, {"event ID", nr.Event.ID}} {
		if err := checkText(f.what, f.v); err != nil {
			return createItem{}, err
		}
	}
	for i, ts := range nr.Tasks {
		if err := checkText("task name", ts.Name); err != nil {
			return createItem{}, err
		}
		for _, d := range ts.Deps {
			if d < 0 || d >= len(nr.Tasks) || d == i {
				return createItem{}, fmt.Errorf("batutapg: task %q has invalid dependency index %d", ts.Name, d)
			}
		}
	}
	if err := checkFlow(nr); err != nil {
		return createItem{}, err
	}
	if p := nr.Parent; p != nil {
		if _, ok := parseUUID(p.RunID); !ok {
			return createItem{}, fmt.Errorf("batutapg: %w: run %s: parent run ID %q is not a UUID", batuta.ErrInvalidPayload, nr.ID, p.RunID)
		}
		if err := checkText("parent task name", p.Task); err != nil {
			return createItem{}, err
		}
	}
	for _, ts := range nr.Tasks {
		if err := checkText("signal name", ts.Signal); err != nil {
			return createItem{}, err
		}
	}
	ev, err := encodeEvent(&nr.Event)
	if err != nil {
		return createItem{}, err
	}
	it := createItem{run: nr, id: id, event: ev}
	if nr.StartAt.After(nr.CreatedAt) {
		it.startAt = nr.StartAt
	}
	if nr.Debounce != nil {
		if st := nr.CreatedAt.Add(nr.Debounce.Window); st.After(it.startAt) {
			it.startAt = st
		}
	}
	if it.soon() {
		s.soonCreated.Store(true) // NextDue looks for it
	} else if !it.startAt.IsZero() {
		s.noteDelayed(it.startAt)
	}
	if c := nr.Concurrency; c != nil && c.Strategy == batuta.ConcurrencyQueue {
		it.admit = 1
	}
	if nr.Concurrency != nil {
		s.flowCreated.Store(true)
		s.flowWork.Store(true)
	}
	for _, ts := range nr.Tasks {
		if ts.Concurrency != nil {
			s.flowCreated.Store(true)
			s.flowWork.Store(true)
			break
		}
	}
	return it, nil
}

// maxKeyLen bounds concurrency, debounce and rate keys.
const maxKeyLen = 255

// checkFlow refuses bad flow-control fields of a new run.
func checkFlow(nr *batuta.NewRun) error {
	checkKey := func(what, key string) error {
		if len(key) > maxKeyLen {
			return fmt.Errorf("batutapg: %w: %s is %d bytes, over %d", batuta.ErrInvalidPayload, what, len(key), maxKeyLen)
		}
		return checkText(what, key)
	}
	if c := nr.Concurrency; c != nil {
		if c.Max < 1 {
			return fmt.Errorf("batutapg: %w: run %s: concurrency Max %d, must be at least 1", batuta.ErrInvalidConfig, nr.ID, c.Max)
		}
		if c.Strategy > batuta.ConcurrencyCancelNewest {
			return fmt.Errorf("batutapg: %w: run %s: unknown concurrency strategy %v", batuta.ErrInvalidConfig, nr.ID, c.Strategy)
		}
		if err := checkKey("concurrency key", c.Key); err != nil {
			return err
		}
	}
	if d := nr.Debounce; d != nil {
		if d.Window <= 0 || d.MaxWait < d.Window {
			return fmt.Errorf("batutapg: %w: run %s: debounce window %v and MaxWait %v (need 0 < Window <= MaxWait)", batuta.ErrInvalidConfig, nr.ID, d.Window, d.MaxWait)
		}
		if err := checkKey("debounce key", d.Key); err != nil {
			return err
		}
	}
	for _, ts := range nr.Tasks {
		if c := ts.Concurrency; c != nil {
			if c.Max < 1 {
				return fmt.Errorf("batutapg: %w: task %s: concurrency Max %d, must be at least 1", batuta.ErrInvalidConfig, ts.Name, c.Max)
			}
			if err := checkKey("task concurrency key", c.Key); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkText refuses strings a text column cannot hold.
func checkText(what, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("batutapg: %w: %s is not valid UTF-8", batuta.ErrInvalidPayload, what)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("batutapg: %w: %s contains a NUL byte", batuta.ErrInvalidPayload, what)
	}
	return nil
}

// existing returns the ID of the run of workflow for eventID, if any.
func (s *Store) existing(ctx context.Context, workflow, eventID string) (string, bool, error) {
	var id string
	found := false
	err := s.query(ctx, s.q.findExisting, []any{[]string{workflow}, []string{eventID}}, func(rows pgx.Rows) error {
		var ord int64
		var u [16]byte
		if err := rows.Scan(&ord, &u); err != nil {
			return err
		}
		id, found = formatUUID(u), true
		return nil
	})
	if err != nil {
		return "", false, fmt.Errorf("batutapg: find run: %w", err)
	}
	return id, found, nil
}

// flushCreates inserts a batch of runs and tells each item whether its run
// was created or which existing run has its key.
func (s *Store) flushCreates(ctx context.Context, items []createItem) ([]createResult, error) {
	out := make([]createResult, len(items))
	pending := make([]int, len(items)) // indexes of items not answered yet
	for i := range pending {
		pending[i] = i
	}
	// The claims of the items that want one are made with the first
	// insert only.
	var ps []batuta.ClaimParams
	var who []int
	for i := range items {
		if p := items[i].claim; p != nil {
			ps = append(ps, *p)
			who = append(who, i)
		}
	}
	var fc *fusedClaim
	if len(ps) > 0 {
		var err error
		if fc, err = s.newFusedClaim(ctx, ps); err != nil {
			s.log.Debug("batutapg: creating runs without a claim", "schema", s.cfg.Schema, "error", err)
			fc = nil
		}
	}
	for try := 0; len(pending) > 0; try++ {
		if try == 5 {
			return nil, fmt.Errorf("batutapg: create runs: duplicate keys kept vanishing (concurrent prune?)")
		}
		created, err := s.insertRuns(ctx, items, pending, fc)
		if err != nil {
			return nil, err
		}
		var dups []int
		for _, i := range pending {
			if created[items[i].id] {
				out[i].id, out[i].created = items[i].run.ID, true
			} else {
				dups = append(dups, i)
			}
		}
		if fc != nil {
			for k, i := range who {
				out[i].claims = fc.out[k]
			}
			if fc.lean {
				// No claim statement ran: the hints stand as they were.
				s.createClaims.Add(int64(len(fc.out[0])))
			} else {
				s.claimHints(fc.pl, ps, fc.out)
				// A claim short of its limit found the ready set empty:
				// the next run created can be claimed as it is inserted.
				for k := range ps {
					if len(fc.out[k]) < ps[k].Limit && s.createBacklog.Load() {
						s.createBacklog.Store(false)
					}
				}
			}
		}
		if len(created) > 0 {
			s.active.add(len(created))
			if fc == nil || !tookRoots(items, pending, created, fc) {
				s.workAppeared()
			}
		}
		fc = nil
		if len(dups) == 0 {
			break
		}
		// Existing keys: read them in a new statement, which sees rows
		// committed by concurrent inserters the insert waited for.
		wfs := make([]string, len(dups))
		eids := make([]string, len(dups))
		for k, i := range dups {
			wfs[k], eids[k] = items[i].run.Workflow, items[i].run.Event.ID
		}
		found := make(map[int]string, len(dups))
		err = s.query(ctx, s.q.findExisting, []any{wfs, eids}, func(rows pgx.Rows) error {
			var ord int64
			var u [16]byte
			if err := rows.Scan(&ord, &u); err != nil {
				return err
			}
			found[int(ord)-1] = formatUUID(u)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("batutapg: create runs: find duplicates: %w", err)
		}
		pending = pending[:0]
		for k, i := range dups {
			if id, ok := found[k]; ok {
				// Keep the item's claims: the claim of a call whose run
				// already existed still took tasks (other runs'), and a
				// task taken and not handed back waits out its lease.
				out[i].id, out[i].created = id, false
			} else {
				pending = append(pending, i) // the key vanished: insert again
			}
		}
	}
	return out, nil
}

// insertRuns inserts items[idx...] and returns the IDs of the runs
// created. With fc, fc's claims are made after the insert, in its
// transaction.
func (s *Store) insertRuns(ctx context.Context, items []createItem, idx []int, fc *fusedClaim) (map[[16]byte]bool, error) {
	args := s.createArgs(items, idx)
	stmt := s.createStatement(items, idx)
	lean := s.createClaimable(items, idx, fc)
	if lean {
		stmt = s.q.createClaim
		fc.lean = true
	}
	created := make(map[[16]byte]bool, len(idx))
	err := withRetry(ctx, func() error {
		clear(created)
		if fc != nil {
			fc.reset()
		}
		err := s.sendHot(ctx, false, func(b *pgx.Batch) {
			if lean {
				p := &fc.ps[0]
				var wfs []string
				if len(p.Workflows) > 0 {
					wfs = p.Workflows
				}
				b.Queue(stmt, append(args[:len(args):len(args)], p.Now, wfs, p.Owner, s.toDB(p.LeaseUntil), fc.pl.reqs[0])...)
				return
			}
			b.Queue(stmt, args...)
			if fc != nil {
				s.queueClaims(b, fc.groups, fc.pl)
			}
		}, func(br pgx.BatchResults) error {
			rows, err := br.Query()
			if err != nil {
				return err
			}
			if lean {
				waited, err := readCreateClaim(rows, created, fc)
				if err == nil && len(created) > 0 {
					s.createBacklog.Store(waited)
				}
				return err
			}
			if err := readCreated(rows, created); err != nil {
				return err
			}
			if fc != nil {
				return fc.pl.read(br, fc.groups, fc.ps, fc.out)
			}
			return nil
		})
		if err != nil && fc != nil && !retryable(err) {
			// The transaction may have committed with its reply lost:
			// release whatever its claims took.
			s.lostClaims(fc.pl.reqs)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("batutapg: create runs: %w", err)
	}
	return created, nil
}

// readCreated reads the run IDs the create statement returns into created.
func readCreated(rows pgx.Rows, created map[[16]byte]bool) error {
	defer rows.Close()
	for rows.Next() {
		var u [16]byte
		if err := rows.Scan(&u); err != nil {
			return err
		}
		created[u] = true
	}
	return rows.Err()
}

// createArgs returns the arguments of the create statement for
// items[idx...].
func (s *Store) createArgs(items []createItem, idx []int) []any {
	n := len(idx)
	ids := make([][16]byte, n)
	wfs := make([]string, n)
	eids := make([]string, n)
	evs := make([][]byte, n)
	cas := make([]time.Time, n)
	dls := make([]pgtype.Timestamptz, n)
	counts := make([]int32, n)
	sas := make([]pgtype.Timestamptz, n)
	prios := make([]int32, n)
	ckeys := make([]pgtype.Text, n)
	admits := make([]int16, n)
	dkeys := make([]pgtype.Text, n)
	rejs := make([]pgtype.Text, n)
	ntasks := 0
	for _, i := range idx {
		ntasks += len(items[i].run.Tasks)
	}
	tRun := make([][16]byte, 0, ntasks)
	tIdx := make([]int16, 0, ntasks)
	tName := make([]string, 0, ntasks)
	tWf := make([]string, 0, ntasks)
	tDeps := make([]string, 0, ntasks)
	tDependents := make([]string, 0, ntasks)
	tNDeps := make([]int32, 0, ntasks)
	tSolo := make([]bool, 0, ntasks)
	tDue := make([]time.Time, 0, ntasks)
	tFire := make([]string, 0, ntasks)
	tPrio := make([]int32, 0, ntasks)
	tHold := make([]int16, 0, ntasks)
	tKey := make([]pgtype.Text, 0, ntasks)
	tRej := make([]pgtype.Text, 0, ntasks)
	tRGroup := make([]bool, 0, ntasks)
	tSignal := make([]string, 0, ntasks)
	tSub := make([]bool, 0, ntasks)
	pids := make([]pgtype.UUID, n)
	ptasks := make([]pgtype.Text, n)
	var gKeys, gWfs []string
	var gMax []int32
	var tgKeys []string
	var tgMax []int32
	gSeen := map[string]bool{}
	tgSeen := map[string]bool{}
	var dependents [][]int
	for k, i := range idx {
		it := &items[i]
		nr := it.run
		ids[k], wfs[k], eids[k], evs[k] = it.id, nr.Workflow, nr.Event.ID, it.event
		cas[k] = nr.CreatedAt
		if !nr.Deadline.IsZero() {
			dls[k] = pgtype.Timestamptz{Time: nr.Deadline, Valid: true}
		}
		counts[k] = int32(len(nr.Tasks))
		sas[k] = ts(it.startAt)
		prios[k] = int32(nr.Priority)
		admits[k] = it.admit
		if c := nr.Concurrency; c != nil {
			ckeys[k] = pgtype.Text{String: c.Key, Valid: true}
			if !gSeen[c.Key] {
				gSeen[c.Key] = true
				gKeys, gWfs, gMax = append(gKeys, c.Key), append(gWfs, nr.Workflow), append(gMax, int32(c.Max))
			}
		}
		if d := nr.Debounce; d != nil {
			dkeys[k] = pgtype.Text{String: d.Key, Valid: true}
		}
		if p := nr.Parent; p != nil {
			pid, _ := parseUUID(p.RunID) // checked by prepareRun
			pids[k] = pgtype.UUID{Bytes: pid, Valid: true}
			ptasks[k] = pgtype.Text{String: p.Task, Valid: true}
		}
		rej := pgtype.Text{String: it.rejected, Valid: it.rejected != ""}
		rejs[k] = rej
		dependents = dependents[:0]
		for range nr.Tasks {
			dependents = append(dependents, nil)
		}
		for t, ts := range nr.Tasks {
			for _, d := range ts.Deps {
				dependents[d] = append(dependents[d], t)
			}
		}
		for t, ts := range nr.Tasks {
			tRun = append(tRun, it.id)
			tIdx = append(tIdx, int16(t))
			tName = append(tName, ts.Name)
			tWf = append(tWf, nr.Workflow)
			tDeps = append(tDeps, intArrayLiteral(ts.Deps))
			tDependents = append(tDependents, intArrayLiteral(dependents[t]))
			tNDeps = append(tNDeps, int32(len(ts.Deps)))
			// A task waiting for a signal locks its run row when it
			// completes, as SendSignal does (see queueCompletion).
			tSolo = append(tSolo, len(nr.Tasks) == 1 && ts.Signal == "")
			tSignal = append(tSignal, ts.Signal)
			tSub = append(tSub, nr.Parent != nil)
			tFire = append(tFire, string(ts.FireOn))
			tPrio = append(tPrio, int32(nr.Priority))
			tRej = append(tRej, rej)
			tRGroup = append(tRGroup, nr.Concurrency != nil)
			d, hold := it.taskDue(s.cfg.ClockSkew, len(ts.Deps) == 0)
			tDue = append(tDue, d)
			tHold = append(tHold, hold)
			if c := ts.Concurrency; c != nil {
				tKey = append(tKey, pgtype.Text{String: c.Key, Valid: true})
				if !tgSeen[c.Key] {
					tgSeen[c.Key] = true
					tgKeys, tgMax = append(tgKeys, c.Key), append(tgMax, int32(c.Max))
				}
			} else {
				tKey = append(tKey, pgtype.Text{})
			}
		}
	}
	return []any{ids, wfs, eids, evs, cas, dls, counts,
		tRun, tIdx, tName, tWf, tDeps, tDependents, tNDeps, tSolo, tDue, tFire,
		sas, prios, ckeys, admits, dkeys, rejs,
		tPrio, tHold, tKey, tRej,
		gKeys, gWfs, gMax, tgKeys, tgMax, tRGroup, pids, ptasks, tSignal, tSub}
}

// intArrayLiteral renders ints as a PostgreSQL array literal ("{1,2}").
func intArrayLiteral(xs []int) string {
	if len(xs) == 0 {
		return "{}"
	}
	b := make([]byte, 0, 2+4*len(xs))
	b = append(b, '{')
	for i, x := range xs {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(x), 10)
	}
	return string(append(b, '}'))
}

// activeEstimate tracks the number of unfinished runs for MaxActive without
// counting them on every CreateRun: a count (over the ready and running
// tasks, see queries.countActive) at most every Config.ActiveRecount, and
// when a call would be refused on a count older than a few milliseconds,
// adjusted in between by the runs this Store created and finished. Other
// instances' runs are seen at the next count, so the cap is approximate
// across instances, as NewRun.MaxActive allows.
type activeEstimate struct {
	every time.Duration

	mu       sync.Mutex
	counting bool
	at       time.Time // when base was counted (zero: never)
	base     int64
	delta    int64 // created - finished here since the count
}

func (a *activeEstimate) add(n int) {
	a.mu.Lock()
	a.delta += int64(n)
	a.mu.Unlock()
}

// overCap reports whether at least max runs are unfinished, by the estimate.
func (s *Store) overCap(ctx context.Context, max int) (bool, error) {
	a := &s.active
	a.mu.Lock()
	now := time.Now()
	est := a.base + a.delta
	stale := a.at.IsZero() || now.Sub(a.at) >= a.every
	// Near the cap, do not refuse on an old count: recount (but at most
	// every few milliseconds, so a saturated store does not count on
	// every call).
	nearStale := est >= int64(max) && now.Sub(a.at) >= 5*time.Millisecond
	if (!stale && !nearStale) || a.counting {
		a.mu.Unlock()
		return est >= int64(max), nil
	}
	a.counting = true
	a.mu.Unlock()

	var n int64
	err := s.queryRow(ctx, s.q.countActive, nil, &n)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.counting = false
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return false, err
		}
		return false, fmt.Errorf("batutapg: count unfinished runs: %w", err)
	}
	a.at, a.base, a.delta = now, n, 0
	return n >= int64(max), nil
}
