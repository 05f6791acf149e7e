"""Data stage: extract, normalize, filter, dedup, tokenize, pack; quarantine bad records; synthetic tasks."""
