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
		slots := append([]*slot(nil), ex.slots...)
		ex.mu.Unlock()
		refs := make([]ClaimRef, 0, len(slots))
		held := make([]*slot, 0, len(slots))
		for _, sl := range slots {
			sl.mu.Lock()
			if sl.claim != nil {
				refs = append(refs, sl.claim.Ref())
				held = append(held, sl)
			}
			sl.mu.Unlock()
		}
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
		for i, st := range sts {
			if i >= len(refs) {
				break
			}
			sl := held[i]
			sl.mu.Lock()
			// The slot may have moved on to another attempt meanwhile.
			if sl.claim != nil && sl.claim.Token == refs[i].Token && sl.tctx != nil {
				switch st {
				case LeaseLost:
					sl.tctx.cancel(errLeaseLost)
				case LeaseCanceled:
					sl.tctx.cancel(errRunCanceled)
				}
			}
			sl.mu.Unlock()
		}
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
