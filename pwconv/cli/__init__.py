"""The ``pwconv`` command line (typer). Commands parse, call one library function, report."""
