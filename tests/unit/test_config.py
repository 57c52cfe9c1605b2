"""The settings table: names, types, precedence, old names, typo errors, config sources."""

from __future__ import annotations

import sys
import types
from datetime import timedelta

import pytest

from celeriac import Celeriac
from celeriac.app.config import SETTINGS, Settings, env_defaults
from celeriac.exceptions import ImproperlyConfigured


def test_defaults_come_from_the_table() -> None:
    conf = Settings()
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf["result_expires"] == 86400.0
    assert conf.task_acks_late is True  # Celeriac's safer default
    assert len(conf) == len(SETTINGS)


def test_unknown_setting_names_it_and_suggests() -> None:
    app = Celeriac("t", broker="memory://cfg1")
    with pytest.raises(ImproperlyConfigured, match=r"'task_serailizer'.*'task_serializer'"):
        app.conf.update(task_serailizer="json")
    with pytest.raises(ImproperlyConfigured, match="did you mean 'broker_url'"):
        Celeriac("t", brokr_url="memory://x")


def test_wrong_type_names_setting_and_accepted_values() -> None:
    conf = Settings()
    with pytest.raises(ImproperlyConfigured, match="'worker_concurrency' must be an integer"):
        conf.update(worker_concurrency="four")
    with pytest.raises(ImproperlyConfigured, match="one of 'solo', 'threads'"):
        conf.update(worker_pool="gevent")


def test_durations_accept_timedelta() -> None:
    conf = Settings()
    conf.result_expires = timedelta(hours=2)
    assert conf.result_expires == 7200.0


def test_old_uppercase_names_are_accepted() -> None:
    cfg = types.SimpleNamespace(
        BROKER_URL="memory://old",
        CELERY_RESULT_BACKEND="memory://old",
        CELERYD_CONCURRENCY=3,
        CELERY_ALWAYS_EAGER=True,
        SOME_OTHER_CONSTANT=1,
    )
    app = Celeriac("t")
    app.config_from_object(cfg)
    assert app.conf.broker_url == "memory://old"
    assert app.conf.result_backend == "memory://old"
    assert app.conf.worker_concurrency == 3
    assert app.conf.task_always_eager is True


def test_config_from_object_module_path_and_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("celeriac_test_cfg")
    module.broker_url = "memory://mod"  # type: ignore[attr-defined]
    module.task_default_queue = "q1"  # type: ignore[attr-defined]
    module.os = sys  # type: ignore[attr-defined]  # modules are skipped
    monkeypatch.setitem(sys.modules, "celeriac_test_cfg", module)
    app = Celeriac("t")
    app.config_from_object("celeriac_test_cfg")
    assert app.conf.task_default_queue == "q1"

    django = types.SimpleNamespace(
        CELERY_BROKER_URL="memory://dj", DEBUG=True, CELERY_TIMEZONE="UTC"
    )
    app2 = Celeriac("t")
    app2.config_from_object(django, namespace="CELERY")
    assert app2.conf.broker_url == "memory://dj"
    assert app2.conf.timezone == "UTC"


def test_config_module_typo_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("celeriac_test_typo")
    module.task_serialiser = "json"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "celeriac_test_typo", module)
    with pytest.raises(ImproperlyConfigured, match="task_serializer"):
        Celeriac("t").config_from_object("celeriac_test_typo")


def test_config_from_envvar(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("celeriac_test_env_cfg")
    module.task_default_queue = "from-envvar"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "celeriac_test_env_cfg", module)
    monkeypatch.setenv("MY_CFG", "celeriac_test_env_cfg")
    app = Celeriac("t")
    assert app.config_from_envvar("MY_CFG")
    assert app.conf.task_default_queue == "from-envvar"
    with pytest.raises(ImproperlyConfigured, match="NOT_SET_VAR"):
        app.config_from_envvar("NOT_SET_VAR")
    assert app.config_from_envvar("NOT_SET_VAR", silent=True) is False


def test_precedence_env_object_init_update(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_TASK_DEFAULT_QUEUE", "env")
    monkeypatch.setenv("CELERIAC_WORKER_PREFETCH_MULTIPLIER", "7")
    monkeypatch.setenv("CELERIAC_ACCEPT_CONTENT", "json,msgpack")
    app = Celeriac("t")
    assert app.conf.task_default_queue == "env"
    assert app.conf.worker_prefetch_multiplier == 7
    assert app.conf.accept_content == ["json", "msgpack"]
    app.config_from_object({"task_default_queue": "object"})
    assert app.conf.task_default_queue == "object"
    app2 = Celeriac("t", task_default_queue="init", config_source={"task_default_queue": "obj"})
    assert app2.conf.task_default_queue == "init"
    app2.conf.update(task_default_queue="update")
    assert app2.conf.task_default_queue == "update"


def test_bad_environment_value_names_variable() -> None:
    with pytest.raises(ImproperlyConfigured, match="CELERIAC_WORKER_CONCURRENCY"):
        env_defaults({"CELERIAC_WORKER_CONCURRENCY": "many"})
    with pytest.raises(ImproperlyConfigured, match="did you mean 'broker_url'"):
        env_defaults({"CELERIAC_BROKER_ULR": "x"})


def test_secrets_are_redacted() -> None:
    conf = Settings()
    conf.update(broker_url="redis://user:s3cret@host:6379/0", security_key="k3y")
    text = repr(conf) + conf.humanize()
    assert "s3cret" not in text and "k3y" not in text
    assert "redis://user:**@host:6379/0" in text


def test_embedded_default_when_nothing_configured() -> None:
    app = Celeriac("t")
    assert app.transport_url == "sqlite://"
    assert app.backend_url == "sqlite://"
    with_broker = Celeriac("t", broker="memory://x")
    assert with_broker.backend_url is None  # results disabled, as in Celery
