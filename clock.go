package batuta

import (
	"sync/atomic"
	"time"
)

// A Clock tells the time and makes timers. The orchestrator, the cron trigger
// and the retry scheduler read time only through a Clock, so tests can drive
// time with a fake (see batutatest.FakeClock) instead of sleeping.
//
// Implementations must be safe for concurrent use.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a Timer that sends the time on its channel once d
	// has elapsed. A d <= 0 fires immediately.
	NewTimer(d time.Duration) Timer
}

// A Timer is a one-shot timer made by a Clock.
type Timer interface {
	// C returns the channel on which the fire time is delivered.
	C() <-chan time.Time
	// Stop prevents the timer from firing. It reports whether the call
	// stopped the timer (false if it had already fired or been stopped).
	Stop() bool
}

// SystemClock is the Clock backed by package time. Its zero value is ready
// to use.
type SystemClock struct{}

// Now returns the current time, as time.Now() does (wall and monotonic
// readings). It reads only the monotonic clock and adds the time since an
// anchor, a time.Now() reading renewed every millisecond: one clock read
// where time.Now makes two, which on some virtual machines costs ~100 ns.
// A step of the wall clock (settimeofday, an NTP step) shows within a
// millisecond; NTP slewing applies to both clocks alike.
func (SystemClock) Now() time.Time {
	if a := clockAnchor.Load(); a != nil {
		if d := time.Since(*a); d >= 0 && d < anchorTTL {
			return a.Add(d)
		}
	}
	t := time.Now()
	clockAnchor.Store(&t)
	return t
}

// clockAnchor is SystemClock.Now's last time.Now() reading.
var clockAnchor atomic.Pointer[time.Time]

// anchorTTL is how long a clockAnchor serves.
const anchorTTL = time.Millisecond

// NewTimer returns a Timer backed by time.NewTimer.
func (SystemClock) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }

type sysTimer struct{ t *time.Timer }

func (s sysTimer) C() <-chan time.Time { return s.t.C }
func (s sysTimer) Stop() bool          { return s.t.Stop() }
