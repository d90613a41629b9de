"""Pure numpy core of pwconv: no file I/O, no terminal output."""
