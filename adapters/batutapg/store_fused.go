package batutapg

import (
	"context"

	"github.com/batuta-dev/batuta"
)

// fusedClaim is the claim a completion transaction makes for the callers
// of CompleteTasksAndClaim it serves (see completeBatch).
type fusedClaim struct {
	ps     []batuta.ClaimParams
	groups []*claimGroup
	pl     *claimPlan
	out    [][]batuta.Claim // out[k]: the claims for ps[k]
	// lean: the claim was made by the claiming create statement (see
	// Store.createClaimable), not by the claim statements.
	lean bool
}

func (s *Store) newFusedClaim(ctx context.Context, ps []batuta.ClaimParams) (*fusedClaim, error) {
	groups := groupClaims(ps)
	if err := s.registerOwners(ctx, groups); err != nil {
		return nil, err
	}
	return &fusedClaim{ps: ps, groups: groups, pl: s.newClaimPlan(len(groups), 0), out: make([][]batuta.Claim, len(ps))}, nil
}

// reset prepares fc for a (new) try of its transaction.
func (fc *fusedClaim) reset() {
	fc.pl.reset()
	clear(fc.out)
}

// tookReady reports whether fc's claims took, run by run, at least as
// many tasks as the completions in made ready (res): then none of those
// is left for anyone else to claim. (A claim of a run's task that was
// ready before, instead of one just made ready, can fool it; the task
// left over is claimed by the next claim of any worker, or at the next
// poll.)
func (fc *fusedClaim) tookReady(in *compInput, res []compResult) bool {
	var ready map[[16]byte]int
	for k := range res {
		if n := res[k].ready; n > 0 {
			if ready == nil {
				ready = make(map[[16]byte]int, 1)
			}
			ready[in.runs[k]] += n
		}
	}
	return fc.covers(ready)
}

// covers reports whether fc's claims include, for each run of need, at
// least need[run] tasks of that run.
func (fc *fusedClaim) covers(need map[[16]byte]int) bool {
	for _, cs := range fc.out {
		for i := range cs {
			if id, ok := parseUUID(cs[i].RunID); ok {
				if _, counted := need[id]; counted {
					need[id]--
				}
			}
		}
	}
	for _, n := range need {
		if n > 0 {
			return false
		}
	}
	return true
}

// tookRoots reports whether the claims of fc took every root task (one
// with no dependency) of the runs of items[idx...] that were created, none
// of which starts later: then nobody needs waking for them.
func tookRoots(items []createItem, idx []int, created map[[16]byte]bool, fc *fusedClaim) bool {
	roots := make(map[[16]byte]int, len(idx))
	for _, i := range idx {
		it := &items[i]
		if !created[it.id] {
			continue
		}
		if !it.startAt.IsZero() || it.admit != 0 {
			return false
		}
		for k := range it.run.Tasks {
			if len(it.run.Tasks[k].Deps) == 0 {
				roots[it.id]++
			}
		}
	}
	return fc.covers(roots)
}
