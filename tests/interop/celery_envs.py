"""Virtualenvs holding real Celery for the interop tests (a test dependency, never a runtime one).

Each Celery version lives in its own virtualenv, made from a pinned requirements file kept beside
this module::

    name   requirements file              virtualenv
    5.x    requirements-celery-5.x.txt    .interop/celery-5.x   (the newest 5.x)
    5.3    requirements-celery-5.3.txt    .interop/celery-5.3   (5.3.6, still widely deployed)

A virtualenv is reused while the stamp written after a successful install matches the hash of
its requirements file and the interpreter version; otherwise it is rebuilt from scratch. Several
processes may ask at once (engineers share the working tree): a file lock per virtualenv makes
the second one wait for the first one's build. The pip log of a build is
``.interop/celery-<name>.log``.

From pytest the build happens once per run, before the first test (``tests/interop/conftest.py``);
by hand::

    .venv/bin/python tests/interop/celery_envs.py            # both
    .venv/bin/python tests/interop/celery_envs.py 5.3        # one
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ROOT = Path(os.environ.get("CELERIAC_INTEROP_DIR", REPO / ".interop"))

#: name -> requirements file (beside this module)
ENVS = {"5.x": "requirements-celery-5.x.txt", "5.3": "requirements-celery-5.3.txt"}

#: bumped when the way an environment is built changes (forces a rebuild)
LAYOUT = 1
STAMP = "interop-stamp.json"
INSTALL_TIMEOUT = 900.0


class EnvError(RuntimeError):
    """A Celery virtualenv could not be built; the message says why and where the log is."""


@dataclass(frozen=True)
class CeleryEnv:
    """A ready virtualenv: its interpreter and the versions installed in it."""

    name: str
    path: Path
    celery_version: str
    kombu_version: str
    redis_version: str

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def describe(self) -> str:
        return (
            f"celery {self.celery_version} (kombu {self.kombu_version}, "
            f"redis-py {self.redis_version}) in {self.path}"
        )


def requirements_file(name: str) -> Path:
    try:
        return HERE / ENVS[name]
    except KeyError:
        raise EnvError(f"unknown Celery environment {name!r}; known: {sorted(ENVS)}") from None


def wanted_stamp(name: str) -> dict[str, object]:
    """What the stamp of an up-to-date environment ``name`` says."""
    digest = hashlib.sha256(requirements_file(name).read_bytes()).hexdigest()
    return {
        "layout": LAYOUT,
        "requirements_sha256": digest,
        "python": ".".join(map(str, sys.version_info[:3])),
    }


def _read_stamp(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(ROOT / f"celery-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _versions(python: Path) -> tuple[str, str, str]:
    probe = (
        "import celery, kombu, redis; "
        "print(celery.__version__, kombu.__version__, redis.__version__)"
    )
    out = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0:
        raise EnvError(f"{python} cannot import celery/kombu/redis:\n{out.stderr.strip()}")
    celery_v, kombu_v, redis_v = out.stdout.split()
    return celery_v, kombu_v, redis_v


def _build(name: str, path: Path, log: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    base = getattr(sys, "_base_executable", None) or sys.executable
    steps = [
        [base, "-m", "venv", str(path)],
        [
            str(path / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "-r",
            str(requirements_file(name)),
        ],
    ]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    with open(log, "w") as out:
        for step in steps:
            out.write(f"$ {' '.join(step)}\n")
            out.flush()
            try:
                done = subprocess.run(
                    step, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=INSTALL_TIMEOUT
                )
            except subprocess.TimeoutExpired:
                raise EnvError(
                    f"building {path} took more than {INSTALL_TIMEOUT:.0f}s; log: {log}"
                ) from None
            if done.returncode != 0:
                tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
                raise EnvError(
                    f"building {path} failed (exit {done.returncode}); log {log}:\n{tail}"
                )


def ensure(name: str) -> CeleryEnv:
    """The virtualenv ``name`` (see the module docstring), built first if missing or stale."""
    path = ROOT / f"celery-{name}"
    wanted = wanted_stamp(name)
    with _locked(name):
        if _read_stamp(path) != wanted or not (path / "bin" / "python").exists():
            started = time.monotonic()
            _build(name, path, ROOT / f"celery-{name}.log")
            (path / STAMP).write_text(json.dumps(wanted, indent=1) + "\n")
            print(
                f"interop: built {path} in {time.monotonic() - started:.0f}s",
                file=sys.stderr,
            )
        celery_v, kombu_v, redis_v = _versions(path / "bin" / "python")
    return CeleryEnv(name, path, celery_v, kombu_v, redis_v)


def main(argv: list[str]) -> int:
    names = argv or list(ENVS)
    status = 0
    for name in names:
        try:
            env = ensure(name)
        except EnvError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{name}: {env.describe()}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
