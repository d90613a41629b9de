"""``python -m pwconv``: the same as the ``pwconv`` console script."""

from pwconv.cli.app import command_line

if __name__ == "__main__":
    command_line()
