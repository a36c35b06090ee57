//go:build race

package batutasqlite

// outboxRaceEnabled: the race detector slows modernc.org/sqlite's
// transpiled C down some 20-40x, so volume tests run a fifth of their rows
// under -race unless BATUTA_FULL_VOLUME=1 (they always run in full without
// -race).
const outboxRaceEnabled = true
