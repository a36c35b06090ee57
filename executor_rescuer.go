package batuta

import (
	"context"
	"time"
)

// rescuer returns tasks whose lease expired (their worker died) to the
// ready set.
func (ex *executor) rescuer(ctx context.Context) {
	o := ex.o
	everyTick(ctx, max(o.cfg.LeaseDuration/2, time.Millisecond), func() {
		var t0 time.Time
		if len(o.storeHooks) > 0 {
			t0 = time.Now()
		}
		n, failed, err := ex.store.RescueExpired(ctx, o.clock.Now(), o.cfg.MaxRescues)
		if len(o.storeHooks) > 0 {
			observeStore(o.storeHooks, StoreOpRescue, t0, n+failed, err)
			if err == nil && (n > 0 || failed > 0) {
				for _, h := range o.storeHooks {
					h.Rescued(n, failed)
				}
			}
		}
		if err != nil {
			if ctx.Err() == nil { // not cut short by stop
				o.log.Warn("batuta: rescuing expired leases failed", "error", err)
			}
			return
		}
		if n > 0 || failed > 0 {
			o.log.Warn("batuta: rescued tasks whose worker was lost", "rescued", n, "failed_after_max_rescues", failed)
			ex.poke()
		}
	})
}
