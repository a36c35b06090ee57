package batuta

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/batuta-dev/batuta/internal/cronexpr"
)

// ErrInvalidSchedule means a cron spec could not be parsed. The concrete error
// is a *ScheduleError.
var ErrInvalidSchedule = errors.New("batuta: invalid schedule")

// ScheduleError reports why a cron spec was rejected.
type ScheduleError struct {
	// Spec is the whole spec as given.
	Spec string
	// Field is the part that is wrong: "second", "minute", "hour",
	// "day-of-month", "month", "day-of-week", "time zone", "descriptor",
	// "@every", or "spec" for the spec as a whole (empty, wrong number of
	// fields, too long).
	Field string
	// Token is the offending text within the field.
	Token string
	// Reason says what is wrong with it.
	Reason string
}

// Error returns "batuta: invalid schedule <spec>: <field> <token>: <reason>".
func (e *ScheduleError) Error() string {
	return fmt.Sprintf("batuta: invalid schedule %q: %s %q: %s", e.Spec, e.Field, e.Token, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidSchedule) true.
func (e *ScheduleError) Is(target error) bool { return target == ErrInvalidSchedule }

// CronEventType is the Type of the events a cron trigger fires.
const CronEventType = "batuta.cron.tick"

// Metadata keys of the events a cron trigger fires.
const (
	// CronMetaSchedule holds the schedule name.
	CronMetaSchedule = "batuta.cron.schedule"
	// CronMetaTick holds the tick time in UTC, RFC 3339 with nanoseconds.
	CronMetaTick = "batuta.cron.tick"
	// CronMetaCatchUp is "true" on events of missed ticks run late by the
	// missed-tick policy.
	CronMetaCatchUp = "batuta.cron.catchup"
)

// CronEventID returns the Event ID of the tick of the named schedule at tick:
// "cron/<name>/<tick in UTC, RFC 3339 with nanoseconds>". The ID depends
// only on the schedule name and the tick time, so a store sees each tick once
// however many processes fire it, and however often.
func CronEventID(name string, tick time.Time) string {
	return "cron/" + name + "/" + tick.UTC().Format(time.RFC3339Nano)
}

// MissedAction is what a cron trigger does with missed ticks. See MissedPolicy.
type MissedAction int

// Missed-tick actions.
const (
	// MissedSkip runs no missed tick: the schedule resumes with the next
	// tick that comes due while the trigger runs. The zero value.
	MissedSkip MissedAction = iota
	// MissedRunLatest runs the most recent missed tick within the window,
	// once. After downtime, one run catches up; while running, a trigger
	// that falls behind fires only the latest due tick (as MissedSkip does).
	MissedRunLatest
	// MissedRunAll runs every missed tick within the window, oldest first,
	// at most MissedPolicy.Max of them (the most recent ones).
	MissedRunAll
)

// String returns "skip", "run-latest" or "run-all".
func (a MissedAction) String() string {
	switch a {
	case MissedSkip:
		return "skip"
	case MissedRunLatest:
		return "run-latest"
	case MissedRunAll:
		return "run-all"
	}
	return "MissedAction(" + strconv.Itoa(int(a)) + ")"
}

// Defaults of MissedPolicy, OverlapPolicy and CronConfig.Ahead.
const (
	DefaultCatchUpWindow = time.Hour
	DefaultMissedMax     = 10
	DefaultOverlapBuffer = 10
	// DefaultCronAhead is CronConfig.Ahead's default with a durable
	// store: a tick's run is created up to a second before the tick.
	DefaultCronAhead = time.Second
	// cronMinAhead: a lead shorter than this is not worth a wake-up of
	// its own (the tick fires at its time).
	cronMinAhead          = 10 * time.Millisecond
	cronRetryInitialDelay = 100 * time.Millisecond
	cronRetryMaxDelay     = 10 * time.Second
	// cronBurst: ticks less than this before the latest due tick are due
	// together with it, on time, and never missed. These are the catch-up
	// ticks of a jump forward of the clock (a fixed-time schedule runs each
	// matching time the jump skipped, right after it; ParseSchedule puts
	// them nanoseconds apart). It is below the shortest "@every" (1ms).
	cronBurst = 100 * time.Microsecond
	// cronMaxBurst bounds one burst: a jump of under 3 hours skips at most
	// 10,800 whole seconds.
	cronMaxBurst = 3*3600 + 1
)

// MissedPolicy says what a cron trigger does with missed ticks.
//
// A tick is missed when it came due while the trigger was not running (the
// process was down: the ticks after the last one recorded with
// Runs.RecordTick and up to the start), or when the trigger was busy (firing
// or waiting on a previous tick, the store refusing events) until a later
// tick came due too. The latest due tick of a running trigger is never
// missed: it fires, however late.
//
// Missed ticks older than Window (measured from the moment the trigger finds
// them) are dropped whatever the action. Missed ticks that run are subject to
// the overlap policy like any other: with the default OverlapSkip,
// MissedRunAll starts the first one and skips those that come due while it
// runs; combine it with OverlapBufferAll or OverlapAllow to run them all. Catch-up after downtime needs a
// Runs whose LastTick survives restarts (a durable store); with the
// in-memory store, or with plain Run, only ticks missed while running are
// seen.
type MissedPolicy struct {
	// Action is what to do with the missed ticks within the window.
	// Default (zero value): MissedSkip.
	Action MissedAction
	// Window is how old a missed tick may be and still run.
	// Default (0): DefaultCatchUpWindow, one hour.
	Window time.Duration
	// Max caps the missed ticks MissedRunAll runs (the most recent Max).
	// Default (0): DefaultMissedMax, 10.
	Max int
}

// OverlapAction is what a cron trigger does when a tick comes due while the
// run of a previous tick is still unfinished. See OverlapPolicy.
type OverlapAction int

// Overlap actions. They mirror Temporal's schedule overlap policies.
const (
	// OverlapSkip drops the tick (it is recorded as handled, so it does
	// not run later). The zero value, as in Temporal.
	OverlapSkip OverlapAction = iota
	// OverlapAllow starts a run for every tick; runs may overlap. The only
	// action plain Run (without run tracking) supports.
	OverlapAllow
	// OverlapBufferOne keeps the first overlapping tick and runs it as
	// soon as the previous run finishes; further ticks are dropped while
	// one is buffered.
	OverlapBufferOne
	// OverlapBufferAll keeps overlapping ticks, up to OverlapPolicy.Buffer,
	// and runs them one after the other, each after the previous run
	// finished. Ticks beyond the cap are dropped.
	OverlapBufferAll
	// OverlapCancelPrevious cancels the unfinished run, waits until it has
	// finished (canceled), then starts the new one. When several ticks are
	// due at once (catch-up after downtime or after a busy spell, with
	// MissedRunAll, or the catch-up ticks of a DST jump), only the latest
	// starts; the earlier ones are dropped (recorded as handled) instead of
	// being started only to be canceled.
	OverlapCancelPrevious
)

// String returns "skip", "allow-all", "buffer-one", "buffer-all" or
// "cancel-previous".
func (a OverlapAction) String() string {
	switch a {
	case OverlapSkip:
		return "skip"
	case OverlapAllow:
		return "allow-all"
	case OverlapBufferOne:
		return "buffer-one"
	case OverlapBufferAll:
		return "buffer-all"
	case OverlapCancelPrevious:
		return "cancel-previous"
	}
	return "OverlapAction(" + strconv.Itoa(int(a)) + ")"
}

// OverlapPolicy says what a cron trigger does when a tick comes due while the
// run of the previous tick is unfinished.
//
// The trigger follows the last run it started (through Runs.Get, Wait and
// Cancel), so every action but OverlapAllow needs RunTracking; the
// orchestrator calls it for a bound CronTrigger. A run started before a
// restart is not followed after it.
type OverlapPolicy struct {
	// Action is what to do. Default (zero value): OverlapSkip.
	Action OverlapAction
	// Buffer caps OverlapBufferAll. Default (0): DefaultOverlapBuffer, 10.
	Buffer int
}

// CronConfig configures a cron trigger. The zero values of the optional
// fields select the documented defaults.
type CronConfig struct {
	// Name identifies the schedule (required): tick event IDs are
	// "cron/<Name>/<tick>" and the last tick is recorded under it. 1 to
	// 128 bytes of ASCII letters, digits, '.', '_' and '-', starting with
	// a letter or digit. Give each schedule its own name, and the same
	// name on every node that runs it.
	Name string
	// Spec is a cron spec, parsed with ParseSchedule. Exactly one of Spec
	// and Schedule must be set.
	Spec string
	// QuartzWeekdays parses Spec with Quartz's weekday numbers, 1 = Sunday
	// to 7 = Saturday (see ScheduleOptions.QuartzWeekdays): "6L" is then
	// the last Friday. Default: Unix numbering, 0 or 7 = Sunday, where
	// "6L" is the last Saturday.
	QuartzWeekdays bool
	// Schedule is used instead of Spec, e.g. a ScheduleFunc.
	Schedule Schedule
	// Missed is the missed-tick policy. Default: skip missed ticks.
	Missed MissedPolicy
	// Overlap is the overlap policy. Default: skip a tick while the
	// previous run is unfinished.
	Overlap OverlapPolicy
	// Jitter, if > 0, delays each on-time firing by a random duration in
	// [0, Jitter), to spread load when many schedules share a tick. The
	// tick time, and so the event ID, is unchanged. Keep it well below the
	// schedule's period: a delay past the next tick makes the earlier tick
	// missed. Default: 0.
	Jitter time.Duration
	// Ahead is how long before a tick its run is created: as a delayed
	// run (StartAt the tick), so that the insert and its commit are off
	// the tick's path and the first task starts at the tick, however many
	// schedules share it. The run exists from then on (it is listed,
	// deduplicated by the tick's event ID, and can be canceled). A tick
	// is created ahead only when nothing stands in its way at that
	// moment: the workflow is not paused and, for every overlap action
	// but OverlapAllow, the previous tick's run has finished. Otherwise
	// the tick fires at its time, as with Ahead off. The lead is at most
	// half the time since the previous tick. A run created ahead belongs
	// to its tick: pausing the workflow or stopping the trigger before
	// the tick does not withdraw it (it starts after the resume, or on
	// any instance). Default (0): DefaultCronAhead with a durable store
	// under an orchestrator; off with the in-memory store (its insert
	// costs microseconds) and under Run. Negative: off. Not together
	// with Jitter.
	Ahead time.Duration
	// Data is the payload of every tick's event. Default: none.
	Data []byte
	// Clock is the time source. Default: the orchestrator's clock
	// (Runs.Clock) under RunTracking, SystemClock under Run.
	Clock Clock
	// Logger receives the trigger's logs. Default: slog.Default().
	Logger *slog.Logger
}

// CronTrigger starts a workflow on a schedule. Create it with NewCron and
// bind it to a workflow; the orchestrator calls RunTracking. It is safe for
// concurrent use: each Run or RunTracking call runs its own loop (two loops
// of one schedule fire the same event IDs, which the store deduplicates).
type CronTrigger struct {
	cfg   CronConfig
	sched Schedule
}

var (
	_ Trigger         = (*CronTrigger)(nil)
	_ TrackingTrigger = (*CronTrigger)(nil)
)

// NewCron validates cfg and returns a cron trigger. Errors name the field:
// a *ConfigError (errors.Is ErrInvalidConfig), or for an unparsable Spec an
// error that wraps the *ScheduleError (errors.Is ErrInvalidSchedule).
func NewCron(cfg CronConfig) (*CronTrigger, error) {
	if err := validCronName(cfg.Name); err != nil {
		return nil, err
	}
	sched := cfg.Schedule
	switch {
	case cfg.Spec != "" && cfg.Schedule != nil:
		return nil, &ConfigError{Field: "CronConfig.Spec", Reason: "set Spec or Schedule, not both"}
	case cfg.Spec == "" && cfg.Schedule == nil:
		return nil, &ConfigError{Field: "CronConfig.Spec", Reason: "required (or set Schedule)"}
	case cfg.Spec != "":
		s, err := ParseScheduleWith(cfg.Spec, ScheduleOptions{QuartzWeekdays: cfg.QuartzWeekdays})
		if err != nil {
			return nil, fmt.Errorf("batuta: invalid config: CronConfig.Spec: %w", err)
		}
		sched = s
	case cfg.QuartzWeekdays:
		return nil, &ConfigError{Field: "CronConfig.QuartzWeekdays", Reason: "applies to Spec only, not to Schedule"}
	}
	if cfg.Missed.Action < MissedSkip || cfg.Missed.Action > MissedRunAll {
		return nil, &ConfigError{Field: "CronConfig.Missed.Action", Reason: "unknown action " + cfg.Missed.Action.String()}
	}
	if cfg.Missed.Window < 0 {
		return nil, &ConfigError{Field: "CronConfig.Missed.Window", Reason: "must not be negative"}
	}
	if cfg.Missed.Max < 0 {
		return nil, &ConfigError{Field: "CronConfig.Missed.Max", Reason: "must not be negative"}
	}
	if cfg.Overlap.Action < OverlapSkip || cfg.Overlap.Action > OverlapCancelPrevious {
		return nil, &ConfigError{Field: "CronConfig.Overlap.Action", Reason: "unknown action " + cfg.Overlap.Action.String()}
	}
	if cfg.Overlap.Buffer < 0 {
		return nil, &ConfigError{Field: "CronConfig.Overlap.Buffer", Reason: "must not be negative"}
	}
	if cfg.Jitter < 0 {
		return nil, &ConfigError{Field: "CronConfig.Jitter", Reason: "must not be negative"}
	}
	if cfg.Jitter > 0 && cfg.Ahead > 0 {
		return nil, &ConfigError{Field: "CronConfig.Ahead", Reason: "set Ahead or Jitter, not both (Jitter delays a tick's fire; Ahead creates its run before the tick)"}
	}
	if cfg.Missed.Window == 0 {
		cfg.Missed.Window = DefaultCatchUpWindow
	}
	if cfg.Missed.Max == 0 {
		cfg.Missed.Max = DefaultMissedMax
	}
	if cfg.Overlap.Buffer == 0 {
		cfg.Overlap.Buffer = DefaultOverlapBuffer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if e, ok := sched.(*cronexpr.Expr); ok && cfg.Spec != "" && e.AmbiguousWeekdays() {
		cfg.Logger.Warn("batuta: cron spec uses a weekday number with L or #: it is read with Unix numbering (0 = Sunday), "+
			"so e.g. 6L is the last Saturday, where Quartz (1 = Sunday) reads the last Friday; write names (FRIL, FRI#3) "+
			"or set CronConfig.QuartzWeekdays for Quartz numbering", "schedule", cfg.Name, "spec", cfg.Spec)
	}
	cfg.Data = append([]byte(nil), cfg.Data...)
	return &CronTrigger{cfg: cfg, sched: sched}, nil
}

func validCronName(name string) error {
	if name == "" {
		return &ConfigError{Field: "CronConfig.Name", Reason: "required"}
	}
	if len(name) > 128 {
		return &ConfigError{Field: "CronConfig.Name", Reason: "longer than 128 bytes"}
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return &ConfigError{Field: "CronConfig.Name", Reason: fmt.Sprintf("%q: want ASCII letters, digits, '.', '_' and '-', starting with a letter or digit", name)}
		}
	}
	return nil
}

// Name returns the schedule name.
func (c *CronTrigger) Name() string { return c.cfg.Name }

// Schedule returns the trigger's schedule.
func (c *CronTrigger) Schedule() Schedule { return c.sched }

// Run fires the schedule's ticks through fire until ctx ends, and returns
// ctx.Err(). Without run tracking it supports only OverlapAllow (any other
// overlap action returns an ErrInvalidConfig error at once), and it
// remembers the last tick only in memory, so it catches up only ticks missed
// while it runs. Prefer binding the trigger to an orchestrator, which calls
// RunTracking.
func (c *CronTrigger) Run(ctx context.Context, fire FireFunc) error {
	if c.cfg.Overlap.Action != OverlapAllow {
		return &ConfigError{Field: "CronConfig.Overlap.Action", Reason: fmt.Sprintf("cron %q: overlap action %s needs run tracking: bind the trigger to an orchestrator (RunTracking), or use OverlapAllow with Run", c.cfg.Name, c.cfg.Overlap.Action)}
	}
	if fire == nil {
		return &ConfigError{Field: "fire", Reason: "nil FireFunc"}
	}
	clock := c.cfg.Clock
	if clock == nil {
		clock = SystemClock{}
	}
	return c.RunTracking(ctx, fireOnlyRuns{fire: fire, clock: clock})
}

// RunTracking fires the schedule's ticks through runs until ctx ends, and
// returns ctx.Err(). It returns early with an error only if it cannot read
// the last recorded tick (the orchestrator then restarts it with backoff).
//
// Each tick's event has ID CronEventID(name, tick), Source "cron/<name>",
// Type CronEventType, Time the tick, and the Data of the config. A tick
// counts as handled once runs.Fire accepted it, or once a policy dropped it;
// it is then recorded with runs.RecordTick, so that after a restart only
// later ticks can be missed. Fire errors are retried with backoff (100ms
// doubling to 10s) until accepted or overtaken by a later tick, which makes
// the tick missed. On cancel, RunTracking stops waiting for runs but does not
// cancel them.
func (c *CronTrigger) RunTracking(ctx context.Context, runs Runs) error {
	if runs == nil {
		return &ConfigError{Field: "runs", Reason: "nil Runs"}
	}
	clock := c.cfg.Clock
	if clock == nil {
		clock = runs.Clock()
	}
	if clock == nil {
		clock = SystemClock{}
	}
	waitCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &cronLoop{
		cfg:     &c.cfg,
		sched:   c.sched,
		runs:    runs,
		clock:   clock,
		log:     c.cfg.Logger.With("schedule", c.cfg.Name),
		waitCtx: waitCtx,
	}
	if c.cfg.Jitter > 0 {
		l.rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	if _, ok := runs.(startAtFirer); ok && c.cfg.Jitter == 0 {
		switch {
		case c.cfg.Ahead > 0:
			l.ahead = c.cfg.Ahead
		case c.cfg.Ahead == 0 && runs.Durable():
			l.ahead = DefaultCronAhead
		}
	}
	if p, ok := runs.(tickPreferrer); ok {
		l.pref = p
		p.joinFleet()
	}
	if b, ok := runs.(batchFirer); ok {
		l.batch = b
	}
	defer func() {
		l.ticket.release()
		cancel()
		l.wg.Wait()
	}()
	return l.run(ctx)
}

// cronLoop is the state of one RunTracking call. Only its goroutine touches
// it, except the waiter goroutines, which only close their channel.
type cronLoop struct {
	cfg   *CronConfig
	sched Schedule
	runs  Runs
	clock Clock
	log   *slog.Logger
	rng   *rand.Rand
	// pref, if set, delays the ticks another instance fires at once
	// (see PeerLister).
	pref tickPreferrer
	// batch, if set, combines this loop's on-time fires with those of
	// other schedules due at the same instant; ticket is the loop's place
	// in the instant it sleeps toward (see fireBatcher).
	batch  batchFirer
	ticket *fireTicket
	// ahead is the longest lead with which a tick's run is created
	// before the tick (0: at the tick; see CronConfig.Ahead).
	ahead time.Duration

	// cursor: the latest tick known due (handled, queued or dropped), or
	// the start time.
	cursor time.Time
	// queue: due ticks not yet handled, oldest first.
	queue []dueTick
	// inflight: the unfinished run of the last started tick ("" if none);
	// done is closed when it finished.
	inflight string
	done     chan struct{}
	// buffered: ticks waiting for inflight to finish (buffer policies).
	buffered []dueTick
	retry    time.Duration

	waitCtx context.Context
	wg      sync.WaitGroup
}

type dueTick struct {
	at       time.Time
	catchUp  bool
	buffered bool // held by a buffer overlap policy: never dropped as missed
	// lead, if > 0: the run is created this long before its time, as
	// a run that starts at it (see CronConfig.Ahead).
	lead time.Duration
}

// startAtFirer is implemented by the orchestrator's Runs: Fire honours the
// submit options of WithSubmitOptions (a StartAt for a run created ahead).
type startAtFirer interface {
	firesWithOptions()
}

func (l *cronLoop) run(ctx context.Context) error {
	now := l.clock.Now()
	l.cursor = now
	last, err := l.runs.LastTick(ctx, l.cfg.Name)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("batuta: cron %q: reading the last tick: %w", l.cfg.Name, err)
	}
	if !last.IsZero() && last.Before(now) {
		l.catchUp(last, now)
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if len(l.queue) > 0 {
			l.settle(ctx) // only a due tick needs to know
			if l.whilePaused(ctx) {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if len(l.queue) > 1 && l.cfg.Overlap.Action == OverlapCancelPrevious {
			// A later tick is due too: starting this one would only
			// have it canceled at once. Only the latest due tick starts.
			l.drop(ctx, l.queue[0], "superseded by a later due tick (cancel previous)")
			l.queue = l.queue[1:]
			continue
		}
		if len(l.queue) > 0 {
			err := l.handle(ctx, l.queue[0])
			if l.ticket != nil && l.ticket.key.at == l.queue[0].at.UnixNano() {
				l.ticket.release() // the tick was dropped or failed
				l.ticket = nil
			}
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err := l.backoff(ctx, err); err != nil {
					return err
				}
				l.collectDue()
				continue
			}
			l.queue = l.queue[1:]
			l.retry = 0
			continue
		}
		next := l.sched.Next(l.cursor)
		if next.IsZero() || !next.After(l.cursor) {
			if !next.IsZero() {
				l.log.Error("batuta: cron schedule returned a time not after its argument; stopping", "after", l.cursor, "next", next)
			} else {
				l.log.Info("batuta: cron schedule has no further activations", "after", l.cursor)
			}
			if err := l.idle(ctx, nil); err != nil {
				return err
			}
			continue
		}
		if lead := l.leadFor(next); lead > 0 {
			fired, err := l.tryAhead(ctx, next, lead)
			if err != nil {
				return err
			}
			if fired {
				continue
			}
			if len(l.queue) > 0 {
				continue // a buffered tick is due now
			}
		}
		delay := next.Sub(l.clock.Now())
		if l.rng != nil {
			delay += time.Duration(l.rng.Int64N(int64(l.cfg.Jitter)))
		}
		if l.batch != nil && l.rng == nil {
			l.ticket.release()
			l.ticket = l.batch.expectFire(next, false, 0)
		}
		timer := l.clock.NewTimer(delay)
		if err := l.idle(ctx, timer); err != nil {
			return err
		}
		l.collectDue()
	}
}

// leadFor returns how long before tick next its run is created (0: at the
// tick): the configured lead, at most half the time since the cursor (the
// previous tick, or the start), and none below cronMinAhead.
func (l *cronLoop) leadFor(next time.Time) time.Duration {
	if l.ahead <= 0 {
		return 0
	}
	lead := min(l.ahead, next.Sub(l.cursor)/2)
	if lead < cronMinAhead {
		return 0
	}
	return lead
}

// tryAhead sleeps until lead before tick and creates the tick's run then,
// starting at the tick, if nothing stands in its way (see
// CronConfig.Ahead). It reports whether it did (the tick is handled and
// recorded); if not, the caller goes on as without a lead: sleeps until
// the tick, or handles a buffered tick the end of the inflight run queued.
// It returns an error only when ctx ended.
func (l *cronLoop) tryAhead(ctx context.Context, tick time.Time, lead time.Duration) (bool, error) {
	giveUp := func() (bool, error) {
		if l.ticket != nil && l.ticket.key.lead != 0 {
			l.ticket.release()
			l.ticket = nil
		}
		return false, nil
	}
	if l.batch != nil {
		l.ticket.release()
		l.ticket = l.batch.expectFire(tick, false, lead)
	}
	if d := tick.Add(-lead).Sub(l.clock.Now()); d > 0 {
		timer := l.clock.NewTimer(d)
		if err := l.idle(ctx, timer); err != nil {
			return false, err
		}
	}
	if len(l.queue) > 0 || !l.clock.Now().Before(tick) {
		return giveUp() // a buffered tick first; or the tick is due already
	}
	if l.cfg.Overlap.Action != OverlapAllow {
		l.settle(ctx)
		if l.inflight != "" || len(l.buffered) > 0 {
			return giveUp() // the overlap policy decides at the tick
		}
	}
	if pa, ok := l.runs.(pauseAware); ok {
		if paused, _, err := pa.pauseState(ctx); err != nil || paused {
			return giveUp() // the tick waits for the resume, as ever
		}
	}
	if err := l.fire(ctx, dueTick{at: tick, lead: lead}); err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		l.log.Warn("batuta: cron could not create the tick's run ahead; firing it at the tick", "tick", tick, "error", err)
		return giveUp()
	}
	l.cursor = tick
	return true, nil
}

// idle waits for timer (nil: forever), ctx or the end of the inflight run
// (which starts a buffered tick). It returns ctx.Err() when ctx ended.
func (l *cronLoop) idle(ctx context.Context, timer Timer) error {
	var tc <-chan time.Time
	if timer != nil {
		tc = timer.C()
		defer timer.Stop()
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tc:
			return nil
		case <-l.done:
			l.finished()
			if len(l.queue) > 0 {
				return nil
			}
		}
	}
}

// pauseAware is implemented by the orchestrator's Runs: whether the bound
// workflow is paused (Orchestrator.Pause), with a channel closed when this
// process resumes a workflow, and how often to ask again.
type pauseAware interface {
	pauseState(ctx context.Context) (paused bool, resumed <-chan struct{}, err error)
	pollInterval() time.Duration
}

// whilePaused handles due ticks of a paused workflow: they are neither
// fired nor recorded; the loop waits for the resume (or ctx), then queues
// the ticks missed meanwhile under the missed-tick policy, exactly as
// after downtime. It reports whether the workflow was paused (the queue
// changed); false when it is not, or when that cannot be told (the fire
// then proceeds, and fails if the store is down).
func (l *cronLoop) whilePaused(ctx context.Context) bool {
	pa, ok := l.runs.(pauseAware)
	if !ok {
		return false
	}
	paused, resumed, err := pa.pauseState(ctx)
	if err != nil || !paused {
		if err != nil && ctx.Err() == nil {
			l.log.Warn("batuta: cron could not tell whether its workflow is paused; firing", "error", err)
		}
		return false
	}
	keep := l.queue[:0] // ticks held by a buffer policy stay held
	for _, t := range l.queue {
		if t.buffered {
			keep = append(keep, t)
		}
	}
	l.log.Info("batuta: cron workflow paused; ticks wait for the resume", "workflow", l.runs.Workflow(), "due", len(l.queue)-len(keep))
	l.queue = keep
	for paused {
		timer := l.clock.NewTimer(pa.pollInterval())
		select {
		case <-ctx.Done():
			timer.Stop()
			return true
		case <-resumed:
		case <-timer.C():
		case <-l.done:
			l.finished()
		}
		timer.Stop()
		if paused, resumed, err = pa.pauseState(ctx); err != nil {
			paused = true // ask again later
		}
	}
	now := l.clock.Now()
	l.cursor = now
	last, err := l.runs.LastTick(ctx, l.cfg.Name)
	if err != nil {
		l.log.Warn("batuta: cron could not read its last tick after the resume; no catch-up", "error", err)
		return true
	}
	l.log.Info("batuta: cron workflow resumed", "workflow", l.runs.Workflow(), "last_recorded", last)
	if !last.IsZero() && last.Before(now) {
		l.catchUp(last, now)
	}
	return true
}

// backoff waits before retrying a tick whose fire failed.
func (l *cronLoop) backoff(ctx context.Context, cause error) error {
	if l.retry == 0 {
		l.retry = cronRetryInitialDelay
	} else if l.retry *= 2; l.retry > cronRetryMaxDelay {
		l.retry = cronRetryMaxDelay
	}
	l.log.Warn("batuta: cron tick not accepted; retrying", "tick", l.queue[0].at, "retry_in", l.retry, "error", cause)
	timer := l.clock.NewTimer(l.retry)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C():
			return nil
		case <-l.done:
			l.finished()
		}
	}
}

// catchUp queues the ticks missed while the trigger was not running: those
// after last and up to now.
func (l *cronLoop) catchUp(last, now time.Time) {
	lo := last
	if floor := now.Add(-l.cfg.Missed.Window); floor.After(lo) {
		lo = floor
	}
	var ticks []time.Time
	switch l.cfg.Missed.Action {
	case MissedRunLatest:
		ticks = latestTicks(l.sched, lo, now, 1)
	case MissedRunAll:
		ticks = latestTicks(l.sched, lo, now, l.cfg.Missed.Max)
	}
	if first := l.sched.Next(last); !first.IsZero() && !first.After(now) {
		l.log.Info("batuta: cron ticks missed while not running", "last_recorded", last, "catch_up", len(ticks), "policy", l.cfg.Missed.Action.String())
	}
	for _, t := range ticks {
		l.queue = append(l.queue, dueTick{at: t, catchUp: true})
	}
}

// collectDue queues the ticks that came due since the cursor. The latest
// one is on time, with the burst of ticks due together with it (see
// cronBurst); earlier ones were missed while the trigger was busy.
func (l *cronLoop) collectDue() {
	now := l.clock.Now()
	latest := latestTicks(l.sched, l.cursor, now, 1)
	if len(latest) == 0 {
		return // woken early
	}
	current := latest[0]
	burstLo := current.Add(-cronBurst)
	if burstLo.Before(l.cursor) {
		burstLo = l.cursor
	}
	burst := ticksBefore(l.sched, burstLo, current, cronMaxBurst)
	first := current
	if len(burst) > 0 {
		first = burst[0]
	}
	var missed []time.Time
	if l.cfg.Missed.Action == MissedRunAll {
		lo := l.cursor
		if floor := now.Add(-l.cfg.Missed.Window); floor.After(lo) {
			lo = floor
		}
		missed = latestTicks(l.sched, lo, first.Add(-time.Nanosecond), l.cfg.Missed.Max)
	} else if len(l.queue) > 0 || l.sched.Next(l.cursor).Before(first) {
		l.log.Warn("batuta: cron ticks missed while busy", "after", l.cursor, "before", first, "policy", l.cfg.Missed.Action.String())
		keep := l.queue[:0] // only the latest due tick fires (and buffered ones)
		for _, t := range l.queue {
			if t.buffered {
				keep = append(keep, t)
			}
		}
		l.queue = keep
	}
	for _, t := range missed {
		l.queue = append(l.queue, dueTick{at: t, catchUp: true})
	}
	if max := l.cfg.Missed.Max; len(l.queue) > max { // Max missed, then the on-time ones
		l.log.Warn("batuta: cron catch-up queue over its cap; dropping the oldest ticks", "dropped", len(l.queue)-max)
		l.queue = append(l.queue[:0], l.queue[len(l.queue)-max:]...)
	}
	for _, t := range burst {
		l.queue = append(l.queue, dueTick{at: t})
	}
	l.queue = append(l.queue, dueTick{at: current})
	l.cursor = current
}

// ticksBefore returns the activations of s in (lo, hi), oldest first, at
// most n of them.
func ticksBefore(s Schedule, lo, hi time.Time, n int) []time.Time {
	var out []time.Time
	for t := s.Next(lo); len(out) < n && !t.IsZero() && t.After(lo) && t.Before(hi); t = s.Next(t) {
		out = append(out, t)
	}
	return out
}

// handle applies the overlap policy to a due tick and fires it. It returns
// an error only if the tick must be retried.
func (l *cronLoop) handle(ctx context.Context, t dueTick) error {
	if l.cfg.Overlap.Action == OverlapAllow || l.inflight == "" {
		return l.fire(ctx, t)
	}
	switch l.cfg.Overlap.Action {
	case OverlapBufferOne, OverlapBufferAll:
		limit := 1
		if l.cfg.Overlap.Action == OverlapBufferAll {
			limit = l.cfg.Overlap.Buffer
		}
		if len(l.buffered) < limit {
			t.buffered = true
			l.buffered = append(l.buffered, t)
			l.log.Debug("batuta: cron tick buffered behind an unfinished run", "tick", t.at, "run", l.inflight)
			return nil
		}
		l.drop(ctx, t, "the overlap buffer is full")
		return nil
	case OverlapCancelPrevious:
		l.log.Info("batuta: cron canceling the unfinished previous run", "tick", t.at, "run", l.inflight)
		if err := l.runs.Cancel(ctx, l.inflight); err != nil && !errors.Is(err, ErrRunNotFound) {
			return fmt.Errorf("canceling run %s: %w", l.inflight, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-l.done:
			l.finished()
		}
		return l.fire(ctx, t)
	default: // OverlapSkip
		l.drop(ctx, t, "the previous run is unfinished")
		return nil
	}
}

func (l *cronLoop) drop(ctx context.Context, t dueTick, why string) {
	l.log.Info("batuta: cron tick skipped", "tick", t.at, "reason", why, "run", l.inflight)
	l.record(ctx, t.at)
}

func (l *cronLoop) fire(ctx context.Context, t dueTick) error {
	tick := t.at.UTC().Format(time.RFC3339Nano)
	meta := map[string]string{CronMetaSchedule: l.cfg.Name, CronMetaTick: tick}
	if t.catchUp {
		meta[CronMetaCatchUp] = "true"
	}
	ev := Event{
		ID:       CronEventID(l.cfg.Name, t.at),
		Source:   CronSource(l.cfg.Name),
		Type:     CronEventType,
		Time:     t.at,
		Data:     bytes.Clone(l.cfg.Data),
		Metadata: meta,
	}
	if t.lead > 0 {
		ctx = WithSubmitOptions(ctx, StartAt(t.at))
	}
	var ticket *fireTicket
	if l.ticket != nil && l.ticket.key.at == t.at.UnixNano() {
		ticket, l.ticket = l.ticket, nil
	}
	if l.pref != nil && !t.catchUp { // catch-up after downtime: everyone at once, as before
		if d := l.pref.fireDelay(l.cfg.Name, t.at, l.sched.Next(t.at)); d > 0 {
			// Not part of this instant's batch: of the fallback fires'.
			ticket.release()
			ticket = nil
			if l.batch != nil {
				ticket = l.batch.expectFire(t.at, true, t.lead)
			}
			// Another live instance fires this tick at once; fire it
			// too (the store dedupes it) only in case that one is gone.
			timer := l.clock.NewTimer(d)
			select {
			case <-ctx.Done():
				timer.Stop()
				ticket.release()
				return ctx.Err()
			case <-timer.C():
			}
		}
	}
	var id string
	var err error
	if ticket != nil {
		id, err = l.batch.fireBatched(ctx, ticket, ev)
	} else {
		id, err = l.runs.Fire(ctx, ev)
	}
	if err != nil {
		return err
	}
	l.log.Debug("batuta: cron tick fired", "tick", t.at, "run", id, "catch_up", t.catchUp)
	if l.cfg.Overlap.Action != OverlapAllow && id != "" {
		l.track(id)
	}
	l.record(ctx, t.at)
	return nil
}

func (l *cronLoop) record(ctx context.Context, tick time.Time) {
	if _, err := l.runs.RecordTick(ctx, l.cfg.Name, tick); err != nil && ctx.Err() == nil {
		l.log.Warn("batuta: cron could not record the last tick", "tick", tick, "error", err)
	}
}

// runAwaiter is implemented by the orchestrator's Runs: it waits for a run
// to finish without reading it when the store publishes run completions, so
// that every instance following every tick's run costs no polling.
type runAwaiter interface {
	awaitFinished(ctx context.Context, id string) error
}

// track follows run id until it finishes; done is closed then.
func (l *cronLoop) track(id string) {
	done := make(chan struct{})
	l.inflight, l.done = id, done
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer close(done)
		delay := cronRetryInitialDelay
		for {
			var err error
			if a, ok := l.runs.(runAwaiter); ok {
				err = a.awaitFinished(l.waitCtx, id)
			} else {
				_, err = l.runs.Wait(l.waitCtx, id)
			}
			if err == nil || errors.Is(err, ErrRunNotFound) || l.waitCtx.Err() != nil {
				return
			}
			l.log.Warn("batuta: cron could not wait for its run; retrying", "run", id, "error", err)
			timer := l.clock.NewTimer(delay)
			select {
			case <-l.waitCtx.Done():
				timer.Stop()
				return
			case <-timer.C():
			}
			delay = min(2*delay, cronRetryMaxDelay)
		}
	}()
}

// settle notices that the inflight run finished, asking the store rather
// than relying on the waiter goroutine alone, so that a tick due right after
// the run finished is not taken for an overlap.
func (l *cronLoop) settle(ctx context.Context) {
	if l.inflight == "" {
		return
	}
	select {
	case <-l.done:
		l.finished()
		return
	default:
	}
	r, err := l.runs.Get(ctx, l.inflight)
	if errors.Is(err, ErrRunNotFound) || err == nil && r.Finished() {
		l.finished()
	}
}

// finished clears the inflight run and moves the next buffered tick to the
// front of the queue.
func (l *cronLoop) finished() {
	l.inflight, l.done = "", nil
	if len(l.buffered) > 0 {
		t := l.buffered[0]
		l.buffered = l.buffered[1:]
		l.queue = append([]dueTick{t}, l.queue...)
	}
}

// latestTicks returns up to n of the latest activations of s in (lo, hi],
// oldest first, found by bisection on Next (s must be monotonic), so that a
// long window of a frequent schedule costs O(n log(window)) calls to Next.
func latestTicks(s Schedule, lo, hi time.Time, n int) []time.Time {
	var out []time.Time
	for len(out) < n {
		t, ok := latestTick(s, lo, hi)
		if !ok {
			break
		}
		out = append(out, t)
		hi = t.Add(-time.Nanosecond)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func latestTick(s Schedule, lo, hi time.Time) (time.Time, bool) {
	inRange := func(t time.Time) bool { return !t.IsZero() && t.After(lo) && !t.After(hi) }
	first := s.Next(lo)
	if !inRange(first) {
		return time.Time{}, false
	}
	if second := s.Next(first); !inRange(second) {
		return first, true
	}
	// Invariant: Next(a) is in range, Next(b) is not.
	a, b := lo, hi
	for i := 0; i < 128 && b.Sub(a) > time.Nanosecond; i++ {
		m := a.Add(b.Sub(a) / 2)
		if inRange(s.Next(m)) {
			a = m
		} else {
			b = m
		}
	}
	if t := s.Next(a); inRange(t) {
		return t, true
	}
	return first, true
}

// fireOnlyRuns is the Runs of plain Run: it can fire, nothing else.
type fireOnlyRuns struct {
	fire  FireFunc
	clock Clock
}

var errNoTracking = errors.New("batuta: cron: no run tracking under Run")

func (r fireOnlyRuns) Workflow() string { return "" }
func (r fireOnlyRuns) Fire(ctx context.Context, ev Event) (string, error) {
	return "", r.fire(ctx, ev)
}
func (r fireOnlyRuns) Get(context.Context, string) (*Run, error)  { return nil, errNoTracking }
func (r fireOnlyRuns) Wait(context.Context, string) (*Run, error) { return nil, errNoTracking }
func (r fireOnlyRuns) Cancel(context.Context, string) error       { return errNoTracking }
func (r fireOnlyRuns) Durable() bool                              { return false }
func (r fireOnlyRuns) Clock() Clock                               { return r.clock }
func (r fireOnlyRuns) LastTick(context.Context, string) (time.Time, error) {
	return time.Time{}, nil
}
func (r fireOnlyRuns) RecordTick(context.Context, string, time.Time) (bool, error) {
	return false, nil
}
