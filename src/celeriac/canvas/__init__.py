"""The canvas: signatures (a task call described as data) and workflows made of them.

A ``Signature`` *is* a dict in Celery's form ``{"task", "args", "kwargs", "options",
"subtask_type", "immutable"}`` (Celery's key order), so a Celery client's signature dict is a
valid Celeriac signature and the reverse. Composites keep their parts in ``kwargs`` as Celery
does (spec §2.5)::

    chain    task "celery.chain"    subtask_type "chain"     kwargs {"tasks": [...]}
    group    task "celery.group"    subtask_type "group"     kwargs {"tasks": [...]}
    chord    task "celery.chord"    subtask_type "chord"     kwargs {"header", "body", "kwargs"}
    chunks   task "celery.chunks"   subtask_type "chunks"    kwargs {"task", "it", "n"}
    xmap     task "celery.map"      subtask_type "xmap"      kwargs {"task", "it"}
    xstarmap task "celery.starmap"  subtask_type "xstarmap"  kwargs {"task", "it"}

Composition: ``sig | sig`` and ``sig | chain`` make a chain (nested chains are flattened);
``group | sig`` (and a group followed by anything in a chain) makes a chord; ``chord | sig``
extends the chord's body.

Sending works in two steps, as in Celery. ``freeze`` fixes the ids: every task id, the group id
and ``group_index`` of chord header members, the chord body (``embed.chord``) carried by the
tasks that report to a chord; it returns the result the workflow will have, with ``parent``
links. ``_plan`` then lists what must be sent as a ``Plan``: chord sizes to store first, then
plain task calls. Only the first task of a chain is sent; the rest travel in its
``embed.chain``, reversed (spec §2.7). The client sends a plan with ``send_plan``; the worker
turns the plan of a follow-up or a chord body into messages of its own batch.

Departures from Celery, on purpose: a group of one task is still a group (its result is a
list, also inside a chain); nested groups in a chord header are flattened in order (the body
gets one flat list, ``group_index`` 0..n-1); ``apply_async`` never changes the signature it is
called on (it freezes a copy).
"""

from __future__ import annotations

from celeriac.canvas.base import (
    Call,
    Membership,
    Plan,
    Signature,
    maybe_signature,
    signature,
    subtask,
)
from celeriac.canvas.maps import chunks, xmap, xstarmap
from celeriac.canvas.primitives import chain, chord, group
from celeriac.canvas.sending import (
    COMPOSITE_TYPES,
    apply_composite,
    is_composite,
    leaves,
    plan_signature,
    replacement_for,
    send_plan,
)

__all__ = [
    "COMPOSITE_TYPES",
    "Call",
    "Membership",
    "Plan",
    "Signature",
    "apply_composite",
    "chain",
    "chord",
    "chunks",
    "group",
    "is_composite",
    "leaves",
    "maybe_signature",
    "plan_signature",
    "replacement_for",
    "send_plan",
    "signature",
    "subtask",
    "xmap",
    "xstarmap",
]
