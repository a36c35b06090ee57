package batuta

import (
	"context"
	"encoding/hex"
	"hash/fnv"
	"sort"
	"strconv"
	"sync"
	"time"
)

// A PeerLister is a Store shared by several processes that can tell which
// of them are alive (batutapg does it with the liveness rows its instances
// renew). The orchestrator uses it to share the ticks of cron schedules:
// when several instances bind the same schedules, each tick is fired at
// once by one of them (chosen by a hash of the schedule, the tick and the
// live instances) and by the others only as a fallback, a little later
// (see CronConfig), so that the instances do not all insert the same runs
// at the same instant. Exactly-once still rests on the store's dedupe of
// the tick's event ID; the fallback keeps a tick running when the instance
// that should fire it is gone.
type PeerLister interface {
	Store
	// LivePeers records member as alive in group, for as long as the
	// Store is open or until LeavePeers, and returns the members of group
	// seen alive recently, sorted (member included once its record is
	// written). group and member are 1 to 200 printable ASCII characters, without
	// spaces or '/'.
	LivePeers(ctx context.Context, group, member string) ([]string, error)
	// LeavePeers removes member from group.
	LeavePeers(ctx context.Context, group, member string) error
}

const (
	// cronPeersEvery is how often an orchestrator refreshes the live
	// members of its cron group.
	cronPeersEvery = time.Second
	// cronPeersStale: a member list older than this is not trusted (every
	// tick is then fired at once, as without a PeerLister).
	cronPeersStale = 5 * time.Second
	// cronFallbackMax bounds the delay after which an instance that is not
	// the tick's preferred one fires it anyway.
	cronFallbackMax = 2 * time.Second
)

// cronFleet is an orchestrator's view of the instances that bind the same
// cron schedules (its group: a hash of its cron bindings).
type cronFleet struct {
	mu      sync.Mutex
	ctx     context.Context // the trigger context the refresh loop runs on
	group   string
	peers   []string
	self    bool // peers holds this node
	fetched time.Time
	// groupFor is cronGroup's answer when the orchestrator had groupOf
	// bindings.
	groupOf  int
	groupFor string
}

// tickPreferrer is implemented by the orchestrator's Runs: it says how long
// a cron trigger waits before firing a tick that another instance is
// preferred to fire (0: fire at once).
type tickPreferrer interface {
	joinFleet()
	fireDelay(schedule string, tick, next time.Time) time.Duration
}

func (r *runsView) joinFleet() { r.o.joinCronFleet() }

func (r *runsView) fireDelay(schedule string, tick, next time.Time) time.Duration {
	return r.o.cronFireDelay(schedule, tick, next)
}

// joinCronFleet starts the refresh loop of the cron group, once per Run, if
// the store can list its peers.
func (o *Orchestrator) joinCronFleet() {
	pl, ok := o.store.(PeerLister)
	if !ok {
		return
	}
	o.mu.RLock()
	ctx, wg := o.trigCtx, o.trigWG
	o.mu.RUnlock()
	if ctx == nil || ctx.Err() != nil {
		return
	}
	f := &o.fleet
	f.mu.Lock()
	if f.ctx == ctx {
		f.mu.Unlock()
		return
	}
	f.ctx, f.peers, f.self, f.fetched = ctx, nil, false, time.Time{}
	f.mu.Unlock()
	// The caller is a trigger counted in wg, so wg is above zero here.
	wg.Add(1)
	go func() {
		defer wg.Done()
		o.cronFleetLoop(ctx, pl)
	}()
}

// cronFleetLoop refreshes the live members of the group until ctx ends,
// then leaves the group.
func (o *Orchestrator) cronFleetLoop(ctx context.Context, pl PeerLister) {
	f := &o.fleet
	joined := ""
	leave := func(group string) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := pl.LeavePeers(lctx, group, o.cfg.NodeID); err != nil {
			o.log.Debug("batuta: leaving the cron group failed", "error", err)
		}
	}
	t := time.NewTicker(cronPeersEvery)
	defer t.Stop()
	for {
		group := o.cronGroup()
		if joined != "" && joined != group {
			leave(joined)
			joined = ""
		}
		if group != "" {
			peers, err := pl.LivePeers(ctx, group, o.cfg.NodeID)
			if err != nil {
				if ctx.Err() == nil {
					o.log.Debug("batuta: listing the cron group failed; firing every tick at once meanwhile", "error", err)
				}
			} else {
				joined = group
				self := false
				for _, p := range peers {
					self = self || p == o.cfg.NodeID
				}
				f.mu.Lock()
				f.group, f.peers, f.self, f.fetched = group, peers, self, time.Now()
				f.mu.Unlock()
			}
		}
		select {
		case <-ctx.Done():
			f.mu.Lock()
			f.peers, f.self = nil, false
			f.mu.Unlock()
			if joined != "" {
				leave(joined)
			}
			return
		case <-t.C:
		}
	}
}

// cronGroup names the set of cron schedules this orchestrator binds (each
// workflow, schedule name and spec): instances with the same set share the
// ticks. "" if it binds none.
func (o *Orchestrator) cronGroup() string {
	o.mu.RLock()
	n := len(o.bindings)
	f := &o.fleet
	f.mu.Lock()
	if f.groupOf == n && f.groupFor != "" {
		// Bindings are only ever added, so their count names the set:
		// the fleet loop asks every second, and hashing a thousand
		// bindings each time was a quarter of the Go CPU of an
		// instance with 1,000 schedules.
		g := f.groupFor
		f.mu.Unlock()
		o.mu.RUnlock()
		return g
	}
	f.mu.Unlock()
	var keys []string
	for _, b := range o.bindings {
		if c, ok := b.trigger.(*CronTrigger); ok {
			keys = append(keys, b.workflow+"\x00"+c.cfg.Name+"\x00"+c.cfg.Spec+"\x00"+strconv.FormatBool(c.cfg.QuartzWeekdays))
		}
	}
	o.mu.RUnlock()
	if len(keys) == 0 {
		return ""
	}
	sort.Strings(keys)
	h := fnv.New64a()
	for _, k := range keys {
		h.Write([]byte(k))
		h.Write([]byte{0xff})
	}
	g := "cron-" + hex.EncodeToString(h.Sum(nil))
	f.mu.Lock()
	f.groupOf, f.groupFor = n, g
	f.mu.Unlock()
	return g
}

// cronFireDelay returns 0 if this instance fires the tick at once: it is
// the tick's preferred instance among the live members of its group, or it
// does not know the group. Otherwise it returns how long to wait before
// firing it as a fallback: a quarter of the time to the next tick, at most
// cronFallbackMax.
func (o *Orchestrator) cronFireDelay(schedule string, tick, next time.Time) time.Duration {
	f := &o.fleet
	f.mu.Lock()
	peers, self, fetched := f.peers, f.self, f.fetched
	f.mu.Unlock()
	if len(peers) < 2 || !self || time.Since(fetched) > cronPeersStale {
		return 0
	}
	if preferredPeer(peers, schedule, tick) == o.cfg.NodeID {
		return 0
	}
	d := cronFallbackMax
	if !next.IsZero() && next.After(tick) {
		d = min(d, next.Sub(tick)/4)
	}
	if d < time.Millisecond {
		return 0
	}
	return d
}

// preferredPeer picks the instance that fires a tick at once: the highest
// hash of (peer, schedule, tick), so that every instance with the same
// peers picks the same one, and a peer that leaves moves only its own ticks.
func preferredPeer(peers []string, schedule string, tick time.Time) string {
	suffix := "\x00" + schedule + "\x00" + strconv.FormatInt(tick.UnixNano(), 10)
	best, bestH := "", uint64(0)
	for _, p := range peers {
		h := fnv.New64a()
		h.Write([]byte(p))
		h.Write([]byte(suffix))
		if v := h.Sum64(); best == "" || v > bestH {
			best, bestH = p, v
		}
	}
	return best
}
