package batuta

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// completers is how many goroutines batch completions for a durable store.
const completers = 2

// storeComplete calls CompleteTasks, retrying failed calls with backoff for
// up to a lease duration past the last renewal of the claims' leases: while
// it retries, it renews them (every LeaseDuration/3; the heartbeat no
// longer does once the attempt is over), so a completion that takes several
// tries is not rescued and run again meanwhile. It gives up after
// maxCompleteLeases lease durations in all.
func (ex *executor) storeComplete(comps []Completion) ([]CompleteResult, error) {
	res, _, err := ex.storeCompleteWith(comps, ClaimParams{})
	return res, err
}

// storeCompleteWith is storeComplete that also claims up to p.Limit tasks
// in the completion's transaction (through ex.claimer; p.Limit 0, or no
// claimer: none). A retry claims again: a failed call claimed nothing.
func (ex *executor) storeCompleteWith(comps []Completion, p ClaimParams) ([]CompleteResult, []Claim, error) {
	o := ex.o
	backoff := 20 * time.Millisecond
	start := time.Now()
	deadline := start.Add(o.cfg.LeaseDuration)
	var renewed time.Time
	for {
		var t0 time.Time
		if len(o.storeHooks) > 0 {
			t0 = time.Now()
		}
		var res []CompleteResult
		var cs []Claim
		var err error
		if ex.claimer != nil {
			res, cs, err = ex.claimer.CompleteTasksAndClaim(ex.bgCtx, comps, p)
		} else {
			res, err = ex.store.CompleteTasks(ex.bgCtx, comps)
		}
		if len(o.storeHooks) > 0 {
			observeStore(o.storeHooks, StoreOpComplete, t0, len(comps), err)
		}
		if err == nil && len(res) == len(comps) {
			return res, cs, nil
		}
		if err == nil {
			err = fmt.Errorf("store returned %d results for %d completions", len(res), len(comps))
			// The retry claims again: what this call claimed goes back.
			ex.releaseClaims(cs, "claimed by a completion answered wrongly")
		}
		if time.Since(renewed) >= o.cfg.LeaseDuration/3 && time.Since(start) < maxCompleteLeases*o.cfg.LeaseDuration {
			renewed = time.Now()
			refs := make([]ClaimRef, len(comps))
			for i := range comps {
				refs[i] = comps[i].ClaimRef
			}
			sts, xerr := ex.store.ExtendLeases(ex.bgCtx, refs, o.clock.Now().Add(o.cfg.LeaseDuration))
			if xerr == nil && slices.Contains(sts, LeaseHeld) {
				deadline = renewed.Add(o.cfg.LeaseDuration)
			}
		}
		wait := min(backoff, max(o.cfg.LeaseDuration/3, time.Millisecond)) // renew in time
		if time.Now().Add(wait).After(deadline) {
			return nil, nil, err
		}
		o.log.Warn("batuta: recording task results failed; retrying", "completions", len(comps), "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		<-t.C
		backoff = min(backoff*2, 2*time.Second)
	}
}

// maxCompleteLeases bounds, in lease durations, how long storeComplete
// keeps renewing the leases of a completion it retries.
const maxCompleteLeases = 10

type batchReq struct {
	comp  *Completion
	reply chan batchResp
}

type batchResp struct {
	res CompleteResult
	err error
}

// maxCompletionBatch bounds one CompleteTasks call made by a completer.
const maxCompletionBatch = 256

// completer turns concurrent completions into batched store calls: it
// takes one request, then whatever else is already waiting.
func (ex *executor) completer(ctx context.Context) {
	reqs := make([]batchReq, 0, maxCompletionBatch)
	comps := make([]Completion, 0, maxCompletionBatch)
	flush := func() {
		comps = comps[:0]
		for _, rq := range reqs {
			comps = append(comps, *rq.comp)
		}
		res, err := ex.storeComplete(comps)
		for i, rq := range reqs {
			if err != nil {
				rq.reply <- batchResp{err: err}
			} else {
				rq.reply <- batchResp{res: res[i]}
			}
		}
		clear(comps)
		reqs = reqs[:0]
	}
	for {
		select {
		case rq := <-ex.batch:
			reqs = append(reqs, rq)
		more:
			for len(reqs) < maxCompletionBatch {
				select {
				case rq := <-ex.batch:
					reqs = append(reqs, rq)
				default:
					break more
				}
			}
			flush()
		case <-ctx.Done():
			for {
				select {
				case rq := <-ex.batch:
					reqs = append(reqs, rq)
					flush()
				default:
					return
				}
			}
		}
	}
}
