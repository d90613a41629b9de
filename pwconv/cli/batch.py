"""``pwconv batch`` (filled in by the batch command module)."""
