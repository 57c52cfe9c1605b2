"""A Celery client driven by the tests: runs in a Celery virtualenv, one request per line.

Each line on stdin is ``base64(pickle({"op": ..., ...}))``; each reply on stdout is
``base64(pickle({"ok": ...}))``. Values are stdlib types only (datetime, Decimal, UUID, bytes,
...), so pickle moves them between the two virtualenvs unchanged and the test process sees
exactly what the Celery client saw. Exceptions are described, not pickled: Celery may have
synthesised their class.

Ops: ``versions``; ``call`` (``how`` = ``apply_async`` | ``delay`` | ``send_task``, ``task``,
``args``, ``kwargs``, ``options``) -> task id; ``get`` (``id``, ``wait``) -> the value or the
exception; ``state`` (``id``) -> state and info; ``forget`` (``id``); ``store`` (``id``,
``value``, ``state``) -> the key Celery wrote; ``canvas`` (``kind``, ``spec``) -> ids (see
``op_canvas``); ``get_group`` (``id``, ``wait``).
"""

from __future__ import annotations

import base64
import os
import pickle
import sys
import traceback
from typing import Any

# Celery may print; keep stdout for replies only
_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
sys.stdout = sys.stderr

import celery  # noqa: E402
import kombu  # noqa: E402
from celery import chain, chord, group, signature  # noqa: E402
from celery_app import app  # noqa: E402


def describe_exception(exc: BaseException) -> dict[str, Any]:
    kind = type(exc)
    args: list[Any] = []
    for arg in exc.args:
        try:
            pickle.dumps(arg)
        except Exception:
            arg = repr(arg)
        args.append(arg)
    return {
        "type": f"{kind.__module__}.{kind.__qualname__}",
        "args": args,
        "text": str(exc),
        "bases": [f"{b.__module__}.{b.__qualname__}" for b in kind.__mro__[1:]],
    }


def plain(value: Any) -> Any:
    if isinstance(value, BaseException):
        return {"__exception__": describe_exception(value)}
    try:
        pickle.dumps(value)
    except Exception:
        return repr(value)
    return value


def op_call(req: dict[str, Any]) -> dict[str, Any]:
    how, name = req["how"], req["task"]
    args, kwargs, options = req.get("args") or (), req.get("kwargs") or {}, req.get("options") or {}
    if how == "send_task":
        result = app.send_task(name, args=args, kwargs=kwargs, **options)
    elif how == "delay":
        result = app.tasks[name].delay(*args, **kwargs)
    else:
        result = app.tasks[name].apply_async(args, kwargs, **options)
    return {"id": result.id}


def op_get(req: dict[str, Any]) -> dict[str, Any]:
    result = app.AsyncResult(req["id"])
    try:
        value = result.get(timeout=req.get("wait", 10), propagate=True, interval=0.05)
    except celery.exceptions.TimeoutError:
        return {"timeout": True, "state": result.state}
    except BaseException as exc:  # the task's failure, rebuilt by Celery
        return {
            "failed": describe_exception(exc),
            "state": result.state,
            "traceback": result.traceback,
        }
    return {"value": value, "state": result.state}


def op_state(req: dict[str, Any]) -> dict[str, Any]:
    result = app.AsyncResult(req["id"])
    return {"state": result.state, "info": plain(result.info)}


def op_store(req: dict[str, Any]) -> dict[str, Any]:
    """Write a result record as a Celery worker would; returns the key Celery uses."""
    app.backend.store_result(req["id"], req["value"], req.get("state", "SUCCESS"))
    key = app.backend.get_key_for_task(req["id"])
    return {"key": key.decode() if isinstance(key, bytes) else key}


def op_forget(req: dict[str, Any]) -> dict[str, Any]:
    app.AsyncResult(req["id"]).forget()
    return {}


def _sig(spec: list[Any]) -> Any:
    name, args, *rest = spec
    options = rest[0] if rest else {}
    return signature(name, args=args, app=app, **({"options": options} if options else {}))


def op_canvas(req: dict[str, Any]) -> dict[str, Any]:
    """``kind`` chain: ``spec`` = list of [name, args]; group: list of [name, args];
    chord: {"header": [...], "body": [name, args]}. Returns the id to wait on."""
    kind, spec, options = req["kind"], req["spec"], req.get("options") or {}
    if kind == "chain":
        result = chain(*[_sig(s) for s in spec]).apply_async(**options)
        return {"id": result.id, "parents": _parents(result)}
    if kind == "group":
        result = group(*[_sig(s) for s in spec]).apply_async(**options)
        result.save()
        return {"id": result.id, "children": [r.id for r in result.results]}
    if kind == "chord":
        header = [_sig(s) for s in spec["header"]]
        result = chord(header)(_sig(spec["body"]), **options)
        return {"id": result.id, "group_id": result.parent.id if result.parent else None}
    raise ValueError(f"unknown canvas kind {kind!r}")


def _parents(result: Any) -> list[str]:
    ids = []
    node = result.parent
    while node is not None:
        ids.append(node.id)
        node = node.parent
    return ids


def op_get_group(req: dict[str, Any]) -> dict[str, Any]:
    result = app.GroupResult.restore(req["id"])
    if result is None:
        return {"missing": True}
    try:
        values = result.get(timeout=req.get("wait", 10), interval=0.05)
    except BaseException as exc:
        return {"failed": describe_exception(exc)}
    return {"value": values}


def op_versions(req: dict[str, Any]) -> dict[str, Any]:
    return {"celery": celery.__version__, "kombu": kombu.__version__, "pid": os.getpid()}


OPS = {
    "call": op_call,
    "get": op_get,
    "state": op_state,
    "forget": op_forget,
    "store": op_store,
    "canvas": op_canvas,
    "get_group": op_get_group,
    "versions": op_versions,
}


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        req = pickle.loads(base64.b64decode(line))
        try:
            reply = {"ok": OPS[req["op"]](req)}
        except BaseException:
            reply = {"error": traceback.format_exc()}
        try:
            data = pickle.dumps(reply)
        except Exception:
            data = pickle.dumps({"error": f"unpicklable reply: {reply!r}"})
        _out.write(base64.b64encode(data).decode() + "\n")
        _out.flush()


if __name__ == "__main__":
    main()
