package batutaprom_test

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaprom"
)

// countingBox is a DeadLetterBox that can count (a broker's message
// count) and must not be listed for it.
type countingBox struct{ n int }

func (countingBox) DeadLetterSource() string { return "counted box" }
func (countingBox) DeadLetters(context.Context, batuta.DeadLetterQuery) ([]batuta.DeadLetterItem, error) {
	return nil, errors.New("listed: the count should have been used")
}
func (countingBox) Redrive(context.Context, ...string) (int, error) { return 0, nil }
func (countingBox) Delete(context.Context, ...string) (int, error)  { return 0, nil }
func (b countingBox) CountDeadLetters(context.Context) (int, error) { return b.n, nil }

// TestDeadLettersCountedByCounter: a box that is a batuta.DeadLetterCounter
// is counted with it (RabbitMQ's: a passive declaration, not a pass over
// the queue per page), capped at MaxDeadLetters.
func TestDeadLettersCountedByCounter(t *testing.T) {
	m, err := batutaprom.New(batutaprom.Config{MaxDeadLetters: 100, Logger: quiet})
	require.NoError(t, err)
	m.ObserveDeadLetters(batuta.BoundDeadLetterBox{Workflow: "w", DeadLetterBox: countingBox{n: 42}},
		batuta.BoundDeadLetterBox{Workflow: "big", DeadLetterBox: countingBox{n: 1e6}})
	require.Equal(t, 42.0, testutil.ToFloat64(gauge(m, "dead_letters", "w", "counted box")))
	require.Equal(t, 100.0, testutil.ToFloat64(gauge(m, "dead_letters", "big", "counted box")))
}
