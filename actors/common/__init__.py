"""Ray-free helpers every stage shares: typed configs and metrics writers."""
