package main

import "github.com/spf13/cobra"

// dlqCommand returns the dead-letter commands, or nil while the core has
// no DeadLetterBox.
func (a *app) dlqCommand() *cobra.Command { return nil }
