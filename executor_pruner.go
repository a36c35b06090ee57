package batuta

import "context"

// pruner deletes finished runs past the retention, in small batches.
func (ex *executor) pruner(ctx context.Context) {
	o := ex.o
	if o.cfg.Retention < 0 && o.cfg.RetentionCount == 0 {
		return
	}
	everyTick(ctx, o.cfg.RetentionInterval, func() {
		p := PrunePolicy{KeepLast: o.cfg.RetentionCount, BatchSize: 500}
		if o.cfg.Retention > 0 {
			p.Before = o.clock.Now().Add(-o.cfg.Retention)
		}
		n, err := ex.store.Prune(ctx, p)
		if err != nil && ctx.Err() == nil { // not cut short by stop
			o.log.Warn("batuta: pruning finished runs failed", "error", err)
		} else if err == nil && n > 0 {
			o.log.Debug("batuta: pruned finished runs", "deleted", n)
		}
	})
}
