"""A user-defined exception importable on both sides (the Celery and the Celeriac processes).

Results carry ``exc_module`` = ``interop_exc``: a reader that has this module loaded rebuilds
``InteropError`` itself, which is what the FAILURE tests check.
"""


class InteropError(Exception):
    """Raised by ``interop.fail("custom", ...)`` on either side."""
