package batuta

import (
	"context"
	"time"
)

// heartbeat renews the leases of running attempts and stops those whose
// lease was lost or whose run was canceled elsewhere.
func (ex *executor) heartbeat(ctx context.Context) {
	o := ex.o
	everyTick(ctx, max(o.cfg.LeaseDuration/3, time.Millisecond), func() {
		ex.mu.Lock()
		refs := make([]ClaimRef, 0, len(ex.inflight))
		for _, sl := range ex.inflight {
			if sl.claim != nil {
				refs = append(refs, sl.claim.Ref())
			}
		}
		ex.mu.Unlock()
		if len(refs) == 0 {
			return
		}
		sts, err := ex.store.ExtendLeases(ctx, refs, o.clock.Now().Add(o.cfg.LeaseDuration))
		if err != nil {
			if ctx.Err() == nil { // not cut short by stop
				o.log.Warn("batuta: renewing leases failed", "error", err)
			}
			return
		}
		ex.mu.Lock()
		for i, st := range sts {
			if i >= len(refs) {
				break
			}
			sl := ex.inflight[refs[i].Token]
			if sl == nil || sl.tctx == nil {
				continue
			}
			switch st {
			case LeaseLost:
				sl.tctx.cancel(errLeaseLost)
			case LeaseCanceled:
				sl.tctx.cancel(errRunCanceled)
			}
		}
		ex.mu.Unlock()
	})
}

// everyTick calls fn every interval until ctx ends: the loop of the
// executor's periodic services.
func everyTick(ctx context.Context, every time.Duration, fn func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}
