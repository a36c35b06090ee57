// Package batutatest is the test kit of batuta: the conformance suites every
// Store and Queue adapter runs (TestStore, and the queue suite), and what users
// need to test their own workflows: a FakeClock to drive time without
// sleeping and a PushTrigger to push events into an orchestrator.
//
// TestTrigger holds every Trigger (database outboxes, the queue trigger) to
// the delivery contract: nothing lost, IDs stable across redelivery, prompt
// stop, no double fire between two consumers.
//
// It imports only the standard library and batuta, so adapter authors pay
// nothing to use it.
package batutatest
