package batuta

import (
	"context"
	"fmt"
	"time"
)

// reserveWorkers takes up to n free workers for claims made outside the
// dispatcher (create-and-claim), counting them busy, and returns how many
// it took: none when the executor is draining.
func (ex *executor) reserveWorkers(n int) int {
	for {
		b := ex.busy.Load()
		k := min(int64(n), ex.nwork-b)
		if k <= 0 || ex.draining.Load() {
			return 0
		}
		if ex.busy.CompareAndSwap(b, b+k) {
			return int(k)
		}
	}
}

// releaseWorkers gives back n workers reserveWorkers took and no claim
// used.
func (ex *executor) releaseWorkers(n int) {
	if n <= 0 {
		return
	}
	if b := ex.busy.Add(-int64(n)); b < ex.nwork && b+int64(n) >= ex.nwork {
		ex.poke() // the dispatcher may be waiting for a free worker
	}
}

// handOff gives c to a worker reserveWorkers took for it (the send never
// blocks: work has room for twice the workers, see newExecutor). Once shutdown closed the
// workers' channel, c is released back to the store instead.
func (ex *executor) handOff(c Claim) {
	ex.handMu.RLock()
	if !ex.workClosed {
		ex.work <- c
		ex.handMu.RUnlock()
		return
	}
	ex.handMu.RUnlock()
	ex.busy.Add(-1)
	ex.releaseClaims([]Claim{c}, "claimed while shutting down")
}

// releaseClaims hands claims no worker will run back to the store (outcome
// release: no attempt counted), so that they are claimed again at once
// rather than when their leases expire; why says what left them over.
func (ex *executor) releaseClaims(cs []Claim, why string) {
	if len(cs) == 0 {
		return
	}
	now := ex.o.clock.Now()
	comps := make([]Completion, len(cs))
	for i := range cs {
		comps[i] = Completion{ClaimRef: cs[i].Ref(), Attempt: cs[i].Attempt, Outcome: OutcomeRelease, FinishedAt: now}
	}
	if _, err := ex.storeComplete(comps); err != nil {
		ex.o.log.Warn("batuta: releasing tasks "+why+" failed; they are rescued when their leases expire",
			"tasks", len(cs), "run", cs[0].RunID, "task", cs[0].Task, "error", err)
	}
}

// reservedClaim reserves up to n free workers and returns the claim
// parameters for them (nil and 0 when none is free, or no workflow can be
// claimed for): release what the claims do not use with releaseWorkers.
func (ex *executor) reservedClaim(n int, now time.Time) (*ClaimParams, int) {
	o := ex.o
	o.mu.RLock()
	free := o.uncapped
	o.mu.RUnlock()
	if len(free) == 0 {
		return nil, 0
	}
	k := ex.reserveWorkers(n)
	if k == 0 {
		return nil, 0
	}
	return &ClaimParams{Owner: o.cfg.NodeID, Workflows: free, Limit: k, Now: now, LeaseUntil: now.Add(o.cfg.LeaseDuration)}, k
}

// handOffAll hands up to reserved of cs to the workers reserved for them
// and returns how many it handed. A store returns no more than asked; if
// one did, the extra claims are released, not dropped.
func (ex *executor) handOffAll(cs []Claim, reserved int) int {
	n := min(len(cs), reserved)
	for i := range cs[:n] {
		ex.handOff(cs[i])
	}
	if n < len(cs) {
		ex.o.log.Error("batuta: the store claimed more tasks than asked; releasing the extra ones", "asked", reserved, "claimed", len(cs))
		ex.releaseClaims(cs[n:], "claimed over the limit")
	}
	return n
}

// createAndClaim records runs through the store's CreatingClaimer and,
// with workers free (up to one per run), claims tasks for them in the same
// transaction (often the new runs' first tasks) and hands them over. It
// returns how many it claimed; ok is false when it did not call the store
// (no free worker, or no workflow to claim for): the caller creates the
// runs as usual.
func (ex *executor) createAndClaim(ctx context.Context, runs []NewRun, now time.Time) (res []CreateResult, claimed int, ok bool, err error) {
	o := ex.o
	p, n := ex.reservedClaim(len(runs), now)
	if p == nil {
		return nil, 0, false, nil
	}
	var t0 time.Time
	if len(o.storeHooks) > 0 {
		t0 = time.Now()
	}
	res, cs, err := ex.creator.CreateRunsAndClaim(ctx, runs, *p)
	if err == nil && len(res) != len(runs) {
		err = fmt.Errorf("the store answered %d results for %d runs", len(res), len(runs))
	}
	if err != nil {
		ex.releaseWorkers(n)
		return nil, 0, true, err
	}
	if len(o.storeHooks) > 0 && len(cs) > 0 {
		observeStore(o.storeHooks, StoreOpClaim, t0, len(cs), nil)
	}
	k := ex.handOffAll(cs, n)
	ex.releaseWorkers(n - k)
	return res, k, true, nil
}
