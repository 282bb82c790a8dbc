"""The command line and what a person runs: `lantern` commands, the demo, status and reports."""
