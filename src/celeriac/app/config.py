"""One typed settings table with Celery's setting names, and the ``Settings`` that hold values.

Precedence, lowest first: the table's defaults < environment variables ``CELERIAC_<NAME>``
(Celery's ``CELERY_BROKER_URL``/``CELERY_RESULT_BACKEND`` too) < ``config_from_object`` /
``config_from_envvar`` < keyword arguments of the app constructor < ``conf.update`` and attribute
assignment (later calls win). Environment variables are *defaults*, as in Celery.

Old upper-case names (``BROKER_URL``, ``CELERY_RESULT_BACKEND``, ``CELERYD_CONCURRENCY``...) and the
upper-case form of each new name are accepted. An unknown or mistyped name raises
``ImproperlyConfigured`` naming it and the closest valid name; a wrongly typed value names the
setting and the type it accepts. Secrets are redacted in ``repr`` and ``humanize``.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celeriac._internal.urls import redact_url
from celeriac.exceptions import ImproperlyConfigured


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    type: str  # bool | int | float | str | list | dict | any
    default: Any = None
    old: tuple[str, ...] = ()
    doc: str = ""
    choices: tuple[Any, ...] = ()
    secret: bool = False


def _s(name: str, type_: str, default: Any = None, *old: str, **kw: Any) -> Setting:
    return Setting(name, type_, default, tuple(old), **kw)


_PUBLISH_RETRY_POLICY = {
    "max_retries": 3,
    "interval_start": 0,
    "interval_max": 1,
    "interval_step": 0.2,
}

SETTINGS: tuple[Setting, ...] = (
    # -- broker --------------------------------------------------------------------------------
    _s(
        "broker_url",
        "str",
        None,
        "BROKER_URL",
        secret=True,
        doc="Broker URL; none (and no result_backend) means the embedded SQLite default.",
    ),
    _s("broker_read_url", "str", None, "BROKER_READ_URL", secret=True),
    _s("broker_write_url", "str", None, "BROKER_WRITE_URL", secret=True),
    _s("broker_transport", "str", None, "BROKER_TRANSPORT"),
    _s(
        "broker_transport_options",
        "dict",
        {},
        "BROKER_TRANSPORT_OPTIONS",
        doc="Driver options: visibility_timeout (lease, default 60 s), priority_steps, ...",
    ),
    _s("broker_connection_timeout", "float", 4.0, "BROKER_CONNECTION_TIMEOUT"),
    _s("broker_connection_retry", "bool", True, "BROKER_CONNECTION_RETRY"),
    _s("broker_connection_retry_on_startup", "bool", None),
    _s("broker_connection_max_retries", "int", 100, "BROKER_CONNECTION_MAX_RETRIES"),
    _s("broker_channel_error_retry", "bool", False),
    _s("broker_failover_strategy", "any", None, "BROKER_FAILOVER_STRATEGY"),
    _s("broker_heartbeat", "float", 120.0, "BROKER_HEARTBEAT"),
    _s("broker_heartbeat_checkrate", "float", 3.0, "BROKER_HEARTBEAT_CHECKRATE"),
    _s("broker_login_method", "str", None, "BROKER_LOGIN_METHOD"),
    _s("broker_pool_limit", "int", 10, "BROKER_POOL_LIMIT"),
    _s("broker_use_ssl", "any", False, "BROKER_USE_SSL"),
    _s(
        "broker_max_deliveries",
        "int",
        5,
        doc="A message delivered this many times without finishing goes to the dead-letter queue.",
    ),
    _s("broker_native_delayed_delivery_queue_type", "str", "quorum"),
    # -- results -------------------------------------------------------------------------------
    _s("result_backend", "str", None, "CELERY_RESULT_BACKEND", secret=True),
    _s("result_backend_transport_options", "dict", {}, "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS"),
    _s("result_serializer", "str", "json", "CELERY_RESULT_SERIALIZER"),
    _s("result_compression", "str", None, "CELERY_RESULT_COMPRESSION"),
    _s("result_accept_content", "list", None, "CELERY_RESULT_ACCEPT_CONTENT"),
    _s("result_expires", "float", 86400.0, "CELERY_TASK_RESULT_EXPIRES", "CELERY_RESULT_EXPIRES"),
    _s("result_failure_expires", "float", None),
    _s("result_extended", "bool", False, "CELERY_RESULT_EXTENDED"),
    _s("result_persistent", "bool", None, "CELERY_RESULT_PERSISTENT"),
    _s("result_cache_max", "int", -1, "CELERY_MAX_CACHED_RESULTS"),
    _s("result_chord_join_timeout", "float", 3.0),
    _s("result_chord_retry_interval", "float", 1.0),
    _s("result_chord_ordered", "bool", True),
    _s("result_exchange", "str", "celeryresults", "CELERY_RESULT_EXCHANGE"),
    _s("result_exchange_type", "str", "direct", "CELERY_RESULT_EXCHANGE_TYPE"),
    _s("result_backend_always_retry", "bool", False),
    _s("result_backend_max_retries", "float", float("inf")),
    _s("result_backend_base_sleep_between_retries_ms", "int", 10),
    _s("result_backend_max_sleep_between_retries_ms", "int", 10000),
    _s("result_backend_thread_safe", "bool", False),
    # -- tasks ---------------------------------------------------------------------------------
    _s("accept_content", "list", ["json"], "CELERY_ACCEPT_CONTENT"),
    _s("task_serializer", "str", "json", "CELERY_TASK_SERIALIZER"),
    _s("task_compression", "str", None, "CELERY_MESSAGE_COMPRESSION"),
    _s("task_protocol", "int", 2, "CELERY_TASK_PROTOCOL", choices=(1, 2)),
    _s("task_always_eager", "bool", False, "CELERY_ALWAYS_EAGER"),
    _s("task_eager_propagates", "bool", False, "CELERY_EAGER_PROPAGATES_EXCEPTIONS"),
    _s("task_store_eager_result", "bool", False, "CELERY_STORE_EAGER_RESULT"),
    _s(
        "task_acks_late",
        "bool",
        True,
        "CELERY_ACKS_LATE",
        doc="Celeriac acks after the task finishes (Celery: False, i.e. before it runs).",
    ),
    _s("task_acks_on_failure_or_timeout", "bool", True, "CELERY_ACKS_ON_FAILURE_OR_TIMEOUT"),
    _s("task_reject_on_worker_lost", "bool", None, "CELERY_REJECT_ON_WORKER_LOST"),
    _s("task_annotations", "any", None, "CELERY_ANNOTATIONS"),
    _s("task_create_missing_queues", "bool", True, "CELERY_CREATE_MISSING_QUEUES"),
    _s("task_default_queue", "str", "celery", "CELERY_DEFAULT_QUEUE"),
    _s("task_default_exchange", "str", None, "CELERY_DEFAULT_EXCHANGE"),
    _s("task_default_exchange_type", "str", "direct", "CELERY_DEFAULT_EXCHANGE_TYPE"),
    _s("task_default_routing_key", "str", None, "CELERY_DEFAULT_ROUTING_KEY"),
    _s("task_default_delivery_mode", "any", 2, "CELERY_DEFAULT_DELIVERY_MODE"),
    _s("task_default_priority", "int", None, "CELERY_DEFAULT_PRIORITY"),
    _s("task_default_rate_limit", "str", None, "CELERY_DEFAULT_RATE_LIMIT"),
    _s("task_default_queue_type", "str", "classic", choices=("classic", "quorum")),
    _s("task_queue_max_priority", "int", None, "CELERY_QUEUE_MAX_PRIORITY"),
    _s("task_inherit_parent_priority", "bool", False, "CELERY_INHERIT_PARENT_PRIORITY"),
    _s("task_queues", "any", None, "CELERY_QUEUES"),
    _s("task_routes", "any", None, "CELERY_ROUTES"),
    _s("task_ignore_result", "bool", False, "CELERY_IGNORE_RESULT"),
    _s("task_store_errors_even_if_ignored", "bool", False, "CELERY_STORE_ERRORS_EVEN_IF_IGNORED"),
    _s("task_track_started", "bool", False, "CELERY_TRACK_STARTED"),
    _s("task_time_limit", "float", None, "CELERYD_TASK_TIME_LIMIT"),
    _s("task_soft_time_limit", "float", None, "CELERYD_TASK_SOFT_TIME_LIMIT"),
    _s("task_publish_retry", "bool", True, "CELERY_TASK_PUBLISH_RETRY"),
    _s(
        "task_publish_retry_policy",
        "dict",
        _PUBLISH_RETRY_POLICY,
        "CELERY_TASK_PUBLISH_RETRY_POLICY",
    ),
    _s("task_send_sent_event", "bool", False, "CELERY_SEND_TASK_SENT_EVENT"),
    _s("task_remote_tracebacks", "bool", False, "CELERY_REMOTE_TRACEBACKS"),
    _s("task_allow_error_cb_on_chord_header", "bool", False),
    _s("enable_utc", "bool", True, "CELERY_ENABLE_UTC"),
    _s("timezone", "str", None, "CELERY_TIMEZONE"),
    _s("imports", "list", [], "CELERY_IMPORTS"),
    _s("include", "list", [], "CELERY_INCLUDE"),
    # -- worker --------------------------------------------------------------------------------
    _s("worker_concurrency", "int", None, "CELERYD_CONCURRENCY"),
    _s("worker_prefetch_multiplier", "int", 4, "CELERYD_PREFETCH_MULTIPLIER"),
    _s(
        "worker_prefetch_window",
        "float",
        0.1,
        doc=(
            "While tasks are short, a worker with a prefetch multiplier above 1 may hold up to "
            "8 times its prefetch: as many messages as its pool runs in this many seconds at the "
            "measured pace. 0 turns it off."
        ),
    ),
    _s(
        "worker_pool",
        "str",
        "threads",
        "CELERYD_POOL",
        choices=("solo", "threads", "asyncio", "prefork"),
    ),
    _s("worker_max_tasks_per_child", "int", None, "CELERYD_MAX_TASKS_PER_CHILD"),
    _s("worker_max_memory_per_child", "int", None, "CELERYD_MAX_MEMORY_PER_CHILD"),
    _s(
        "worker_max_message_size",
        "int",
        64 * 1024 * 1024,
        doc="Messages larger than this many bytes go to the dead-letter queue unrun.",
    ),
    _s("worker_pool_restarts", "bool", False, "CELERYD_POOL_RESTARTS"),
    _s("worker_disable_rate_limits", "bool", False, "CELERY_DISABLE_RATE_LIMITS"),
    _s("worker_send_task_events", "bool", False, "CELERY_SEND_EVENTS"),
    _s("worker_hijack_root_logger", "bool", True, "CELERYD_HIJACK_ROOT_LOGGER"),
    _s("worker_log_color", "bool", None, "CELERYD_LOG_COLOR"),
    _s(
        "worker_log_format",
        "str",
        "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s",
        "CELERYD_LOG_FORMAT",
    ),
    _s(
        "worker_task_log_format",
        "str",
        "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s",
        "CELERYD_TASK_LOG_FORMAT",
    ),
    _s("worker_redirect_stdouts", "bool", True, "CELERY_REDIRECT_STDOUTS"),
    _s("worker_redirect_stdouts_level", "str", "WARNING", "CELERY_REDIRECT_STDOUTS_LEVEL"),
    _s("worker_lost_wait", "float", 10.0, "CELERYD_WORKER_LOST_WAIT"),
    _s("worker_state_db", "str", None, "CELERYD_STATE_DB"),
    _s("worker_timer_precision", "float", 1.0, "CELERYD_TIMER_PRECISION"),
    _s("worker_proc_alive_timeout", "float", 4.0),
    _s("worker_soft_shutdown_timeout", "float", 0.0),
    _s("worker_enable_soft_shutdown_on_idle", "bool", False),
    _s("worker_cancel_long_running_tasks_on_connection_loss", "bool", False),
    _s("worker_deduplicate_successful_tasks", "bool", False),
    _s("worker_direct", "bool", False, "CELERY_WORKER_DIRECT"),
    _s("worker_enable_remote_control", "bool", True, "CELERY_ENABLE_REMOTE_CONTROL"),
    _s("worker_autoscaler", "str", "celery.worker.autoscale:Autoscaler", "CELERYD_AUTOSCALER"),
    _s("worker_consumer", "str", "celery.worker.consumer:Consumer", "CELERYD_CONSUMER"),
    _s("worker_timer", "str", None, "CELERYD_TIMER"),
    _s("worker_agent", "str", None, "CELERYD_AGENT"),
    _s("worker_detect_quorum_queues", "bool", True),
    _s(
        "worker_heartbeat_interval",
        "float",
        None,
        doc="How often the worker renews its leases; default: a third of the lease.",
    ),
    # -- events, control, beat, security -------------------------------------------------------
    _s("event_queue_expires", "float", 60.0, "CELERY_EVENT_QUEUE_EXPIRES"),
    _s("event_queue_ttl", "float", 5.0, "CELERY_EVENT_QUEUE_TTL"),
    _s("event_queue_prefix", "str", "celeryev"),
    _s("event_serializer", "str", "json", "CELERY_EVENT_SERIALIZER"),
    _s("event_exchange", "str", "celeryev"),
    _s("control_queue_ttl", "float", 300.0),
    _s("control_queue_expires", "float", 10.0),
    _s("control_exchange", "str", "celery", "CELERY_CONTROL_EXCHANGE"),
    _s("beat_schedule", "dict", {}, "CELERYBEAT_SCHEDULE"),
    _s("beat_scheduler", "str", "celeriac.beat:PersistentScheduler", "CELERYBEAT_SCHEDULER"),
    _s("beat_schedule_filename", "str", "celerybeat-schedule", "CELERYBEAT_SCHEDULE_FILENAME"),
    _s("beat_sync_every", "int", 0, "CELERYBEAT_SYNC_EVERY"),
    _s("beat_max_loop_interval", "float", 0.0, "CELERYBEAT_MAX_LOOP_INTERVAL"),
    _s("beat_cron_starting_deadline", "float", None),
    _s("security_key", "str", None, "CELERY_SECURITY_KEY", secret=True),
    _s("security_key_password", "str", None, secret=True),
    _s("security_certificate", "str", None, "CELERY_SECURITY_CERTIFICATE"),
    _s("security_cert_store", "str", None, "CELERY_SECURITY_CERT_STORE"),
    _s("security_digest", "str", "sha256"),
    # -- driver-specific -----------------------------------------------------------------------
    _s("redis_backend_health_check_interval", "float", None),
    _s("redis_max_connections", "int", None, "CELERY_REDIS_MAX_CONNECTIONS"),
    _s("redis_socket_timeout", "float", 120.0),
    _s("redis_socket_connect_timeout", "float", None),
    _s("redis_retry_on_timeout", "bool", False),
    _s("redis_socket_keepalive", "bool", False),
    _s("redis_username", "str", None),
    _s("redis_password", "str", None, secret=True),
    _s("redis_db", "int", None, "CELERY_REDIS_DB"),
    _s("redis_host", "str", None, "CELERY_REDIS_HOST"),
    _s("redis_port", "int", None, "CELERY_REDIS_PORT"),
    _s("database_url", "str", None, secret=True),
    _s("database_engine_options", "dict", {}),
    _s("database_short_lived_sessions", "bool", False),
    _s("database_table_names", "dict", {}),
    _s("database_table_schemas", "dict", {}),
)

TABLE: dict[str, Setting] = {s.name: s for s in SETTINGS}

#: every accepted spelling -> canonical name
ALIASES: dict[str, str] = {}
for _setting in SETTINGS:
    ALIASES[_setting.name] = _setting.name
    ALIASES[_setting.name.upper()] = _setting.name
    for _old in _setting.old:
        ALIASES[_old] = _setting.name

#: ``CELERIAC_*`` environment variables that are not settings (CLI and test switches)
NOT_SETTINGS = frozenset({"app", "config_module", "shared_dir", "workdir"})

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n", ""}


def canonical(name: str) -> str:
    """The canonical name for ``name``; ``ImproperlyConfigured`` with a suggestion if unknown."""
    found = ALIASES.get(name)
    if found is None:
        raise ImproperlyConfigured(f"Unknown setting {name!r}{suggest(name)}")
    return found


def suggest(name: str) -> str:
    """``"; did you mean 'x'?"`` for the closest known spelling, or ``""``."""
    pool = list(ALIASES) if name.isupper() else list(TABLE)
    matches = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _type_error(setting: Setting, value: Any) -> ImproperlyConfigured:
    accepted = {
        "bool": "True or False",
        "int": "an integer",
        "float": "a number of seconds (or a timedelta)",
        "str": "a string",
        "list": "a list of strings",
        "dict": "a mapping",
    }.get(setting.type, "any value")
    nullable = " or None" if setting.default is None else ""
    return ImproperlyConfigured(
        f"Setting {setting.name!r} must be {accepted}{nullable}, not {value!r}"
    )


def _check_float(setting: Setting, value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(setting, value)
    return float(value)


def _check_list(setting: Setting, value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    raise _type_error(setting, value)


def _check_instance(setting: Setting, value: Any) -> Any:
    wanted: Any = {"bool": bool, "int": int, "str": str, "dict": Mapping}.get(setting.type, object)
    if not isinstance(value, wanted) or (setting.type == "int" and isinstance(value, bool)):
        raise _type_error(setting, value)
    return value


def coerce(setting: Setting, value: Any) -> Any:
    """Check and normalise a Python value for ``setting``."""
    if value is None:
        return None
    if setting.type == "float":
        value = _check_float(setting, value)
    elif setting.type == "list":
        value = _check_list(setting, value)
    else:
        value = _check_instance(setting, value)
    if setting.choices and value not in setting.choices:
        choices = ", ".join(repr(c) for c in setting.choices)
        raise ImproperlyConfigured(
            f"Setting {setting.name!r} must be one of {choices}, not {value!r}"
        )
    return value


def parse_env(setting: Setting, text: str) -> Any:
    """Parse an environment variable's text for ``setting``."""
    kind = setting.type
    try:
        if kind == "bool":
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(text)
        if kind == "int":
            return coerce(setting, int(text))
        if kind == "float":
            return coerce(setting, float(text))
        if kind == "list":
            stripped = text.strip()
            if stripped.startswith("["):
                return coerce(setting, json.loads(stripped))
            return [part.strip() for part in stripped.split(",") if part.strip()]
        if kind in ("dict", "any"):
            try:
                return coerce(setting, json.loads(text))
            except json.JSONDecodeError:
                if kind == "any":
                    return text
                raise
    except (ValueError, json.JSONDecodeError) as exc:
        raise ImproperlyConfigured(
            f"Environment variable CELERIAC_{setting.name.upper()}={text!r} is not valid: "
            f"{_type_error(setting, text)}"
        ) from exc
    return text


def env_defaults(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings given as ``CELERIAC_<NAME>`` environment variables (plus Celery's two)."""
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for key in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        if key in env:
            name = "broker_url" if key.endswith("BROKER_URL") else "result_backend"
            found[name] = env[key]
    for key, text in env.items():
        if not key.startswith("CELERIAC_"):
            continue
        name = key[len("CELERIAC_") :].lower()
        if name in NOT_SETTINGS or name.startswith("test_"):
            continue
        if name not in TABLE:
            raise ImproperlyConfigured(
                f"Unknown setting in environment variable {key}{suggest(name)}"
            )
        found[name] = parse_env(TABLE[name], text)
    return found


class Settings(Mapping[str, Any]):
    """The app's configuration: attribute and item access by Celery's names, typed on write."""

    def __init__(self) -> None:
        object.__setattr__(self, "_layers", {"env": {}, "object": {}, "init": {}, "update": {}})
        object.__setattr__(self, "_cache", None)

    # -- writing -------------------------------------------------------------------------------
    def _set_layer(self, layer: str, values: Mapping[str, Any]) -> None:
        checked = {}
        for key, value in values.items():
            name = canonical(key)
            checked[name] = coerce(TABLE[name], value)
        self._layers[layer].update(checked)
        object.__setattr__(self, "_cache", None)

    def _replace_layer(self, layer: str, values: Mapping[str, Any]) -> None:
        self._layers[layer].clear()
        self._set_layer(layer, values)

    def update(self, other: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        """Set settings (highest precedence); unknown names raise with a suggestion."""
        merged = dict(other or {})
        merged.update(kwargs)
        self._set_layer("update", merged)

    def setdefault(self, key: str, default: Any) -> Any:
        name = canonical(key)
        if name not in self._merged_explicit():
            self.update({name: default})
        return self[name]

    def __setattr__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    # -- reading -------------------------------------------------------------------------------
    def _merged_explicit(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for layer in ("env", "object", "init", "update"):
            merged.update(self._layers[layer])
        return merged

    def _values(self) -> dict[str, Any]:
        cache = self._cache
        if cache is None:
            cache = {s.name: _copy_default(s.default) for s in SETTINGS}
            cache.update(self._merged_explicit())
            object.__setattr__(self, "_cache", cache)
        return cache  # type: ignore[no-any-return]

    def resolved(self) -> dict[str, Any]:
        """Every setting's value by canonical name (defaults included): one dict, built on first
        read and rebuilt after a change. Read it, never write to it (the publish path reads its
        settings from here: a dict lookup each)."""
        return self._values()

    def __getitem__(self, key: str) -> Any:
        values = self._values()
        try:  # the canonical spelling: one dict lookup (the hot path of every publish)
            return values[key]
        except KeyError:
            return values[canonical(key)]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        values = self._cache
        if values is not None and key in values:
            return values[key]
        try:
            return self[key]
        except ImproperlyConfigured as exc:
            raise AttributeError(str(exc)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def is_set(self, key: str) -> bool:
        """True when the setting was given anywhere (not just its default)."""
        return canonical(key) in self._merged_explicit()

    def changes(self) -> dict[str, Any]:
        """Settings that differ from the defaults."""
        return dict(self._merged_explicit())

    def humanize(self, with_defaults: bool = False) -> str:
        """``name: value`` lines, secrets redacted."""
        values = self._values() if with_defaults else self.changes()
        return "\n".join(f"{k}: {redact(k, v)!r}" for k, v in sorted(values.items()))

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={redact(k, v)!r}" for k, v in sorted(self.changes().items()))
        return f"<Settings {body}>"


def _copy_default(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


def redact(name: str, value: Any) -> Any:
    """``value`` safe to print: URLs lose their password, secrets become ``'********'``."""
    setting = TABLE.get(name)
    if setting is None or not setting.secret or value is None:
        return value
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return "********"


def settings_from_object(obj: Any, namespace: str | None = None) -> dict[str, Any]:
    """Pick settings out of a module/object/mapping (Celery's ``config_from_object`` rules).

    Lower-case names must be settings (a typo raises with a suggestion); upper-case names are
    read when they are known old/new spellings, and raise when they are a near miss of one.
    With ``namespace='CELERY'`` only ``CELERY_*`` names are read, with the prefix removed.
    """
    items = dict(obj) if isinstance(obj, Mapping) else {k: getattr(obj, k) for k in dir(obj)}
    prefix = f"{namespace}_" if namespace else None
    found: dict[str, Any] = {}
    for key, value in items.items():
        if key.startswith("_") or _is_code(value):
            continue
        if prefix is not None:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix) :]
            found[canonical(key.lower() if key.isupper() else key)] = value
            continue
        if key in ALIASES:
            found[ALIASES[key]] = value
        elif key.islower() or (key.isupper() and suggest(key)):
            canonical(key)  # raises with a suggestion
    return found


def _is_code(value: Any) -> bool:
    import inspect

    return inspect.ismodule(value) or inspect.isfunction(value) or inspect.isclass(value)
