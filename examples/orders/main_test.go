package main

import (
	"path/filepath"
	"testing"
	"time"
)

// TestOrdersScenario runs the default scenario (SQLite file, in-memory
// store) end to end: inserted orders must all run to success.
func TestOrdersScenario(t *testing.T) {
	dir := t.TempDir()
	for _, store := range []string{"memory", "sqlite"} {
		t.Run(store, func(t *testing.T) {
			opt := options{db: "sqlite", dsn: filepath.Join(dir, store+"-app.db"), store: store,
				storeDSN: filepath.Join(dir, store+"-runs.db"), n: 4, timeout: time.Minute}
			if err := run(opt); err != nil {
				t.Fatal(err)
			}
		})
	}
}
