"""Read-only answers for the operator that are not a close step (subscriptions)."""
