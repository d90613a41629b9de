"""File formats: lazy readers and atomic writers. Nothing here knows about the CLI."""
