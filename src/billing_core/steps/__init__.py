"""The close, one module per step, and the runner that runs them in order."""
