package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/batuta-dev/batuta"
)

// With BatchConfig the queue trigger hands messages to the workflow in
// batches, as AWS Lambda's event-source mappings do: the run reports the
// items that failed (a BatchResult), and only those are redelivered.
func ExampleBatchConfig() {
	q, _ := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	defer q.Close()
	deadQ, _ := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	defer deadQ.Close()
	ctx := context.Background()
	for _, id := range []string{"m-1", "m-2", "m-3"} {
		_ = q.Publish(ctx, batuta.Message{ID: id, Body: []byte(`"` + id + `"`)})
	}

	o, _ := batuta.New(batuta.Config{Logger: quiet})
	seen := make(chan string, 2)
	_ = batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "index"},
		func(ctx context.Context, b batuta.Batch) (batuta.BatchResult, error) {
			var res batuta.BatchResult
			var ids []string
			for _, item := range b.Items {
				ids = append(ids, fmt.Sprintf("%s(delivery %d)", item.ID, item.Attempt))
				if item.ID == "m-2" && item.Attempt == 1 {
					res.Fail(item.ID, errors.New("index busy")) // only m-2 comes back
				}
			}
			seen <- strings.Join(ids, " ")
			return res, nil
		})
	trig, _ := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: q, DeadLetter: batuta.DeadLetterQueue(deadQ), Logger: quiet,
		Batch: batuta.BatchConfig{Size: 10},
	})
	_ = o.Bind("index", trig)
	stop := runInBackground(o)
	defer stop()

	fmt.Println(<-seen)
	fmt.Println(<-seen)
	// Output:
	// m-1(delivery 1) m-2(delivery 1) m-3(delivery 1)
	// m-2(delivery 2)
}
