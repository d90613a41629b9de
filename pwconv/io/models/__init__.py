"""Model and filter-bank files: one module a format (weights read by name)."""
