"""Data formats: one module a format (arrays people compute on and write)."""
