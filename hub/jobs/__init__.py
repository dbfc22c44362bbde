"""Build jobs: remote publishes queue in the database, run in the hub's own child processes, stream
their progress as events, and survive a hub restart (hub/jobs/runner.py)."""
