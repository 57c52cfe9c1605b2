"""The Celeriac side of the interop fleet: runs in the main virtualenv.

``make_app(config)`` builds an app with the tasks of ``celery_app.py``, name for name; the
worker subprocess runs ``celeriac -A celeriac_app worker ...`` and gets ``app`` built from
``INTEROP_CONFIG``; the tests build client apps with ``make_app``. Results that show who ran a
task carry ``"impl": "celeriac"``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from interop_common import Gates, backend_options, broker_options, iso, load_config, type_report
from interop_exc import InteropError

import celeriac
from celeriac import Celeriac

IMPL = "celeriac"


def make_app(config: dict[str, Any], main: str = "interop") -> Celeriac:
    app = Celeriac(
        main,
        broker=config["redis_url"],
        backend=config["redis_url"],
        set_as_current=False,
        broker_transport_options=broker_options(config),
        result_backend_transport_options=backend_options(config, IMPL),
        task_default_queue=config["default_queue"],
        task_routes=config.get("routes") or {},
        result_expires=3600,
    )
    register(app, Gates(config))
    return app


def _headers(request: Any) -> dict[str, Any]:
    return {k: v for k, v in (request.headers or {}).items() if k.startswith("x_")}


def register(app: Celeriac, gates: Gates) -> None:  # noqa: C901 - one closure per task
    @app.task(name="interop.add")
    def add(x: Any, y: Any) -> Any:
        return x + y

    @app.task(name="interop.echo")
    def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs, "types": type_report([list(args), kwargs])}

    @app.task(name="interop.inspect", bind=True)
    def inspect(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        request = self.request
        info = request.delivery_info or {}
        return {
            "impl": IMPL,
            "version": celeriac.__version__,
            "pid": os.getpid(),
            "ran_at": time.time(),
            "id": request.id,
            "args": list(args),
            "kwargs": kwargs,
            "queue": info.get("routing_key"),
            "priority": info.get("priority"),
            "redelivered": bool(info.get("redelivered")),
            "eta": iso(request.eta),
            "expires": iso(request.expires),
            "retries": request.retries,
            "root_id": request.root_id,
            "parent_id": request.parent_id,
            "origin": request.origin,
            "headers": _headers(request),
        }

    @app.task(name="interop.routed", bind=True)
    def routed(self: Any) -> dict[str, Any]:
        return {"impl": IMPL, "queue": (self.request.delivery_info or {}).get("routing_key")}

    @app.task(name="interop.fail")
    def fail(kind: str, message: str) -> None:
        if kind == "custom":
            raise InteropError(message, 7)
        if kind == "key":
            raise KeyError(message)
        raise ValueError(message, 42)

    @app.task(name="interop.retry_until", bind=True, max_retries=None)
    def retry_until(self: Any, gate: str) -> dict[str, Any]:
        if not gates.is_open(gate):
            raise self.retry(exc=KeyError("transient"), countdown=0.2)
        return {"impl": IMPL, "retries": self.request.retries}

    @app.task(name="interop.progress", bind=True)
    def progress(self: Any, gate: str) -> str:
        self.update_state(state="PROGRESS", meta={"done": 1, "of": 2, "impl": IMPL})
        if not gates.wait_open(gate, 60):
            raise TimeoutError(f"gate {gate} was not opened within 60s")
        return "finished"

    @app.task(name="interop.hang", bind=True, acks_late=True)
    def hang(self: Any, marker: str) -> dict[str, Any]:
        info = self.request.delivery_info or {}
        if gates.mark(marker):
            time.sleep(600)
        return {"impl": IMPL, "redelivered": bool(info.get("redelivered")), "pid": os.getpid()}

    @app.task(name="interop.mark")
    def mark(i: int) -> list[Any]:
        return [i, IMPL]

    @app.task(name="interop.collect")
    def collect(results: list[Any], counter: str) -> dict[str, Any]:
        runs = gates.incr(counter)
        impls: dict[str, int] = {}
        for _, impl in results:
            impls[impl] = impls.get(impl, 0) + 1
        return {
            "impl": IMPL,
            "n": len(results),
            "sum": sum(i for i, _ in results),
            "ordered": [i for i, _ in results] == sorted(i for i, _ in results),
            "impls": impls,
            "runs": runs,
        }

    @app.task(name="interop.tsum")
    def tsum(values: list[Any]) -> Any:
        return sum(values)

    @app.task(name="interop.mul")
    def mul(x: Any, y: Any) -> Any:
        return x * y


app: Celeriac | None = None
if os.environ.get("INTEROP_CONFIG"):
    app = make_app(load_config())
