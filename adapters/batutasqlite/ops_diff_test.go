package batutasqlite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// TestOpsAgreeWithMemoryStore drives the SQLite store and the in-memory
// store with the same random operations on waits, signals, child runs,
// cancels and retries (claims held across steps, so signals and child ends
// also meet claimed tasks) and checks that they answer alike at every step
// (errors, deliveries, readiness, run ends) and hold the same runs at the
// end: states, outputs, wait records, parent and child links, retries.
func TestOpsAgreeWithMemoryStore(t *testing.T) {
	t.Parallel()
	seeds, steps := 6, 300
	if raceEnabled {
		seeds, steps = 2, 200
	}
	for seed := 1; seed <= seeds; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			opsDiff(t, uint64(seed), steps)
		})
	}
}

type diffKey struct{ run, task string }

func errClass(err error) string {
	for _, e := range []error{batuta.ErrRunNotFound, batuta.ErrNoWaiter, batuta.ErrSignalBufferFull, batuta.ErrNotRetryable, batuta.ErrLeaseLost} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	if err != nil {
		return "other: " + err.Error()
	}
	return ""
}

func opsDiff(t *testing.T, seed uint64, steps int) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 13))
	sq, _ := openTemp(t)
	mem := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	stores := []batuta.Store{sq, mem}
	now := fbase
	var runs []string
	claims := []map[diffKey]batuta.Claim{{}, {}}
	n := 0
	both := func(what string, f func(s batuta.Store) string) {
		t.Helper()
		a, b := f(sq), f(mem)
		require.Equal(t, b, a, "%s: SQLite (got) and memory (want) disagree", what)
	}
	for step := 0; step < steps; step++ {
		switch op := rng.IntN(10); {
		case op < 2 || len(runs) == 0: // create
			n++
			nt := 1 + rng.IntN(3)
			specs := make([]batuta.TaskSpec, nt)
			for i := range specs {
				specs[i].Name = fmt.Sprintf("t%d", i)
				if i > 0 && rng.IntN(2) == 0 {
					specs[i].Deps = []int{rng.IntN(i)}
				}
				if rng.IntN(2) == 0 {
					specs[i].Signal = fmt.Sprintf("s%d", rng.IntN(2))
				}
			}
			nr := newFlowRun("wf", fmt.Sprint(n), now, specs)
			if len(runs) > 0 && rng.IntN(2) == 0 {
				nr.Parent = &batuta.RunLink{RunID: runs[rng.IntN(len(runs))], Task: fmt.Sprintf("t%d", rng.IntN(3))}
			}
			runs = append(runs, nr.ID)
			both("create", func(s batuta.Store) string {
				_, created, err := s.CreateRun(ctx, nr)
				return fmt.Sprint(created, errClass(err))
			})
		case op < 4: // claim everything due
			both("claim", func(s batuta.Store) string {
				i := slices.Index(stores, s)
				cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "d", Limit: 1000, Now: now, LeaseUntil: now.Add(time.Hour)})
				require.NoError(t, err)
				var got []string
				for _, c := range cs {
					claims[i][diffKey{c.RunID, c.Task}] = c
					sig := "-"
					if c.Signal != nil {
						sig = c.Signal.Name + string(c.Signal.Data.(json.RawMessage))
					}
					got = append(got, fmt.Sprintf("%s/%s a%d w%v %s", c.RunID, c.Task, c.Attempt, !c.WaitingSince.IsZero(), sig))
				}
				slices.Sort(got)
				return fmt.Sprint(got)
			})
		case op < 6: // complete the held claims, each with a random outcome
			keys := make([]diffKey, 0, len(claims[0]))
			for k := range claims[0] {
				keys = append(keys, k)
			}
			slices.SortFunc(keys, func(a, b diffKey) int { return cmpKey(a, b) })
			for _, k := range keys {
				oc := []batuta.Outcome{batuta.OutcomeSucceeded, batuta.OutcomeWait, batuta.OutcomeWait, batuta.OutcomeFailed, batuta.OutcomeRetry}[rng.IntN(5)]
				var retryAt time.Time
				if oc == batuta.OutcomeRetry || rng.IntN(2) == 0 {
					retryAt = now.Add(time.Duration(1+rng.IntN(5)) * time.Second)
				}
				child := ""
				if oc == batuta.OutcomeWait && rng.IntN(3) == 0 {
					child = runs[rng.IntN(len(runs))]
				}
				consume := rng.IntN(3) > 0
				both("complete "+k.run+"/"+k.task, func(s batuta.Store) string {
					i := slices.Index(stores, s)
					c := claims[i][k]
					delete(claims[i], k)
					comp := batuta.Completion{ClaimRef: c.Ref(), Outcome: oc, Attempt: c.Attempt, StartedAt: now, FinishedAt: now,
						RetryAt: retryAt, WaitFor: "w", Child: child, Output: json.RawMessage(`"out"`), Error: "boom"}
					if consume && c.Signal != nil {
						comp.ConsumeSignal = c.Signal.Seq
						comp.Output = c.Signal.Data
					}
					res, err := s.CompleteTasks(ctx, []batuta.Completion{comp})
					require.NoError(t, err)
					return fmt.Sprint(errClass(res[0].Err), res[0].Ready, res[0].RunFinished)
				})
			}
		case op < 8: // signal
			id := runs[rng.IntN(len(runs))]
			name := fmt.Sprintf("s%d", rng.IntN(2))
			data := json.RawMessage(fmt.Sprintf(`{"step":%d}`, step))
			both("signal "+id+" "+name, func(s batuta.Store) string {
				res, err := s.SendSignal(ctx, batuta.SignalSend{RunID: id, Name: name, Data: data, SentAt: now, MaxBuffered: 3})
				return fmt.Sprint(res, errClass(err))
			})
		case op < 9: // cancel or retry
			id := runs[rng.IntN(len(runs))]
			if rng.IntN(2) == 0 {
				both("cancel "+id, func(s batuta.Store) string {
					ok, err := s.CancelRun(ctx, id, "stop", now)
					return fmt.Sprint(ok, errClass(err))
				})
			} else {
				from := ""
				if rng.IntN(3) == 0 {
					from = fmt.Sprintf("t%d", rng.IntN(3))
				}
				both("retry "+id, func(s batuta.Store) string {
					res, err := s.RetryRun(ctx, id, batuta.RetryParams{Now: now, From: from})
					return fmt.Sprint(res.Reset, errClass(err))
				})
			}
		default:
			now = now.Add(time.Duration(1+rng.IntN(3)) * time.Second)
		}
	}
	for _, id := range runs {
		both("snapshot "+id, func(s batuta.Store) string {
			r, err := s.GetRun(ctx, id)
			require.NoError(t, err)
			out := fmt.Sprintf("%s retries=%d parent=%v finished=%v error=%q\n", r.State, r.Retries, r.Parent, r.FinishedAt, r.Error)
			for _, tr := range r.Tasks {
				if tr.State == batuta.TaskCanceled {
					// The stores word a canceled task's reason
					// differently (older than this change).
					tr.Error = ""
				}
				o, _ := batuta.OutputAs[json.RawMessage](tr.Output)
				out += fmt.Sprintf("  %s %s out=%s since=%v for=%q child=%q attempts=%d error=%q\n",
					tr.Name, tr.State, o, tr.WaitingSince, tr.WaitingFor, tr.Child, len(tr.Attempts), tr.Error)
			}
			return out
		})
	}
}

func cmpKey(a, b diffKey) int {
	if a.run != b.run {
		if a.run < b.run {
			return -1
		}
		return 1
	}
	if a.task < b.task {
		return -1
	} else if a.task > b.task {
		return 1
	}
	return 0
}
