// Package batuta is an embeddable task-orchestration library: declare workflows
// (DAGs of tasks) and bind them to triggers.
package batuta
