"""The `billing` command: its commands, terminal output and the demo."""
