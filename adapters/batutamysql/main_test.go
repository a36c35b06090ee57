package batutamysql

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The crash test re-executes this test binary as a consumer process it
	// can kill -9 (see TestTriggerKilledMidBatch).
	if os.Getenv(crashHelperEnv) != "" {
		os.Exit(crashHelperMain())
	}
	goleak.VerifyTestMain(m)
}
