// Package cronbench checks batuta's cron parser against
// github.com/robfig/cron/v3 and measures it:
//
//   - TestDifferential and FuzzDifferential compare batuta.ParseSchedule's
//     Next with robfig/cron's on the syntax both accept, classifying every
//     disagreement as a known, documented robfig bug or failing.
//   - BenchmarkNext times Next of both libraries on the same specs.
//   - The lateness command (./lateness) measures how late real firings are.
//
// robfig/cron is a dependency of the bench module only, never of the core.
package cronbench
