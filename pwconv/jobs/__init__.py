"""Library functions behind the commands: one module per command, one call per command.

The CLI parses options into :class:`~pwconv.jobs.options.ApplyOptions`, calls one function
here and prints what it returns; nothing here prints.
"""
