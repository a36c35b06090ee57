//go:build !race

package batutasqlite

// raceEnabled reports a -race build. The race detector slows the pure-Go
// SQLite engine ten to twenty times, so the volume tests scale down under it.
const raceEnabled = false
