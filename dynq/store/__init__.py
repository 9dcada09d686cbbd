"""Local storage: the SQLite database with group commit, hints and metadata; WAL checkpoints."""
