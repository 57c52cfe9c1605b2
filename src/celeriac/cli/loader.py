"""Finding the application named by ``-A/--app``, the way Celery's ``find_app`` does.

Accepted forms::

    proj                 module or package ``proj``: its ``app`` or ``celery`` attribute, else
                         ``proj.celery`` (for a package), else any ``Celeriac`` instance in it
    proj.tasks           the same, for module ``proj.tasks``
    proj.tasks:app       attribute ``app`` of module ``proj.tasks``
    proj.tasks.app       attribute ``app`` of module ``proj.tasks`` (when that is not a module)

The current working directory is put first on ``sys.path`` (as Celery does), so ``-A tasks``
finds ``./tasks.py``. Failures raise ``AppLoadError`` with a one-line message; an error raised
*inside* the user's module (other than a missing module) propagates unchanged.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac


class AppLoadError(Exception):
    """The ``-A/--app`` value names no module or no Celeriac app (a usage error)."""


def _is_app(value: Any) -> bool:
    from celeriac.app.base import Celeriac

    return isinstance(value, Celeriac)


def import_from_cwd(module_name: str) -> ModuleType:
    """Import ``module_name`` with the working directory first on ``sys.path``.

    ``AppLoadError`` when the module itself does not exist, or when it imports a module that
    does not exist (the message says which).
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise AppLoadError(
                f"The module {module_name!r} was not found (looked in {cwd} and sys.path)"
            ) from None
        raise AppLoadError(f"Importing {module_name!r} failed: {exc}") from None


def _module_exists(module_name: str) -> bool:
    try:
        import_from_cwd(module_name)
    except AppLoadError:
        return False
    return True


def _attribute_app(module: ModuleType, name: str) -> Celeriac | None:
    found = getattr(module, name, None)
    return found if _is_app(found) else None


def _app_in_module(module: ModuleType, spec: str) -> Celeriac:
    """``app``, ``celery``, ``<package>.celery``, or any Celeriac instance in ``module``."""
    for name in ("app", "celery"):
        found = _attribute_app(module, name)
        if found is not None:
            return found
    if getattr(module, "__path__", None) and _module_exists(f"{spec}.celery"):
        try:
            return find_app(f"{spec}.celery")
        except AppLoadError:
            pass
    for value in vars(module).values():
        if _is_app(value):
            app: Celeriac = value
            return app
    raise AppLoadError(
        f"No Celeriac app found in module {spec!r}: define 'app = Celeriac(...)' there, "
        f"or name it: -A {spec}:NAME"
    )


def _attribute(module_name: str, attr: str, spec: str) -> Celeriac:
    module = import_from_cwd(module_name)
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise AppLoadError(f"Module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(value, ModuleType):
        return _app_in_module(value, value.__name__)
    if not _is_app(value):
        raise AppLoadError(f"{spec!r} is a {type(value).__name__}, not a Celeriac app")
    app: Celeriac = value
    return app


def find_app(spec: str) -> Celeriac:
    """The app named by ``spec`` (``proj``, ``proj.module``, ``proj.module:app``...)."""
    spec = spec.strip()
    if not spec or spec.startswith((".", ":")) or spec.endswith((".", ":")):
        raise AppLoadError(f"Invalid app name {spec!r}: expected 'module' or 'module:attribute'")
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        return _attribute(module_name, attr, spec)
    try:
        module = import_from_cwd(spec)
    except AppLoadError:
        module_name, _, attr = spec.rpartition(".")
        if not module_name or not _module_exists(module_name):
            raise
        if not hasattr(sys.modules[module_name], attr):
            raise
        return _attribute(module_name, attr, spec)
    return _app_in_module(module, spec)


def load_app(spec: str, *, workdir: str | None = None, config: str | None = None) -> Celeriac:
    """Change to ``workdir`` (if given), find the app, apply ``config`` (a module name).

    ``AppLoadError`` messages name the option at fault (``-A proj: ...``, ``--config x: ...``).
    """
    if workdir:
        try:
            os.chdir(workdir)
        except OSError as exc:
            raise AppLoadError(f"Cannot change to --workdir {workdir!r}: {exc.strerror}") from None
    try:
        app = find_app(spec)
    except AppLoadError as exc:
        raise AppLoadError(f"-A {spec}: {exc}") from None
    if config:
        try:
            module = import_from_cwd(config)
        except AppLoadError as exc:
            raise AppLoadError(f"--config {config}: {exc}") from None
        app.config_from_object(module)
    return app
