"""``pwconv explain`` (filled in by the explain command module)."""
