"""``python -m celeriac.cli``: the ``celeriac`` command without its console script."""

from celeriac.cli.main import main

if __name__ == "__main__":
    main()
