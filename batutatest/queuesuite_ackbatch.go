package batutatest

import (
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// testQueueAckBatch (a batuta.AckBatcher only): AckBatch of deliveries
// the consumer holds returns nil and settles them as Ack would (none comes
// back past the visibility timeout); AckBatch of none returns nil.
func testQueueAckBatch(t *testing.T, s *queueSuite) {
	q := s.open(t)
	ab, ok := q.(batuta.AckBatcher)
	if !ok {
		t.Skip("the Queue is no batuta.AckBatcher")
	}
	ctx := s.ctx(t)
	const n = 5
	for i := range n {
		publish(t, ctx, q, batuta.Message{ID: uniqueID(t, i), Body: []byte(`1`)})
	}
	ds := s.receiveN(t, q, n)
	if errs := ab.AckBatch(ctx, ds); errs != nil {
		t.Fatalf("AckBatch of %d held deliveries: %v, want nil", n, errs)
	}
	if errs := ab.AckBatch(ctx, ds[:0]); errs != nil {
		t.Fatalf("AckBatch of no delivery: %v, want nil", errs)
	}
	// Past the visibility timeout, an acked message must not come back.
	expectNothing(t, q, 2*s.vis+500*time.Millisecond)
}
