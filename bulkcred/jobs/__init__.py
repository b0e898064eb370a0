"""The jobs: each plans, applies through the runner and the journal, and verifies."""
