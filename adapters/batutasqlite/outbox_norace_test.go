//go:build !race

package batutasqlite

// outboxRaceEnabled: see outbox_race_test.go.
const outboxRaceEnabled = false
