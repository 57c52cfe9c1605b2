"""The Celery side of the interop fleet: runs in a Celery virtualenv, never in the main one.

``celery -A celery_app worker ...`` and ``celery_agent.py`` (the Celery client) import it. The
tasks mirror ``celeriac_app.py`` name for name; results that show who ran them carry
``"impl": "celery"``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import celery
from celery import Celery
from interop_common import Gates, backend_options, broker_options, iso, load_config, type_report
from interop_exc import InteropError

IMPL = "celery"
config = load_config()

app = Celery("interop", broker=config["redis_url"], backend=config["redis_url"])
app.conf.update(
    broker_transport_options=broker_options(config),
    result_backend_transport_options=backend_options(config, IMPL),
    task_default_queue=config["default_queue"],
    task_routes=config.get("routes") or {},
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
)
gates = Gates(config)


def _headers(request: Any) -> dict[str, Any]:
    found = dict(getattr(request, "headers", None) or {})
    for key, value in vars(request).items():
        if key.startswith("x_"):
            found.setdefault(key, value)
    return {k: v for k, v in found.items() if k.startswith("x_")}


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
        "version": celery.__version__,
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
    """The first run marks ``marker`` and hangs (the test kills the worker); a redelivered run
    returns at once."""
    info = self.request.delivery_info or {}
    if gates.mark(marker):
        time.sleep(600)
    return {"impl": IMPL, "redelivered": bool(info.get("redelivered")), "pid": os.getpid()}


@app.task(name="interop.mark")
def mark(i: int) -> list[Any]:
    return [i, IMPL]


@app.task(name="interop.collect")
def collect(results: list[Any], counter: str) -> dict[str, Any]:
    """A chord body: counts how often it ran (``counter``) and who ran the header tasks."""
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
