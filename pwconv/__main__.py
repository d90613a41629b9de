"""``python -m pwconv``: the same as the ``pwconv`` console script."""

from pwconv.cli.app import main

if __name__ == "__main__":
    main()
