"""The ``celeriac`` command line (click): ``worker``, ``call``, ``result``, ``purge``, ``demo``.

``main`` (in ``celeriac.cli.main``) is the console script's entry point; ``loader`` finds the
app named by ``-A``.
"""
