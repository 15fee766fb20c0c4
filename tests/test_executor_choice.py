"""MEMBERFLOW_EXECUTOR picks the jobs' executor; the production yaml keeps the guarantees."""

from __future__ import annotations

import dagster as dg
import pytest
import yaml

from app.production import PRODUCTION_YAML, MissingSetting, check_environment, prepare_home
from pipelines.executor import UnknownExecutor, celery_config, executor_for_deployment


def test_in_process_by_default(monkeypatch):
    monkeypatch.delenv("MEMBERFLOW_EXECUTOR", raising=False)
    assert executor_for_deployment() is dg.in_process_executor


def test_celery_when_asked(monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_EXECUTOR", "celery")
    assert executor_for_deployment().name == "celery"


def test_an_unknown_executor_fails_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_EXECUTOR", "dask")
    with pytest.raises(UnknownExecutor, match="MEMBERFLOW_EXECUTOR='dask'"):
        executor_for_deployment()


def test_broker_credentials_stay_env_references(monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_CELERY_BROKER", "pyamqp://user:secret@broker:5672//")
    config = celery_config()
    assert config["broker"] == {"env": "MEMBERFLOW_CELERY_BROKER"}
    assert "secret" not in repr(config)
    assert config["config_source"]["task_acks_late"] is True


def test_production_yaml_has_postgres_limits_and_no_sqlite_event_log(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_CELERY_BROKER", "pyamqp://user:secret@broker:5672//")
    raw = yaml.safe_load(PRODUCTION_YAML.read_text())
    assert raw["storage"]["postgres"]["postgres_url"] == {"env": "MEMBERFLOW_POSTGRES_URL"}
    assert "event_log_storage" not in raw
    assert raw["concurrency"]["runs"]["tag_concurrency_limits"][0]["key"] == "memberflow/list"
    assert raw["concurrency"]["pools"]["default_limit"] == 1
    prepare_home(tmp_path)
    assert "secret" not in (tmp_path / "celery.yaml").read_text()


def test_missing_or_wrong_postgres_url_is_named():
    with pytest.raises(MissingSetting, match="MEMBERFLOW_POSTGRES_URL"):
        check_environment({"MEMBERFLOW_CELERY_BROKER": "pyamqp://x//"})
    with pytest.raises(MissingSetting, match="postgresql\\+psycopg2://"):
        check_environment(
            {"MEMBERFLOW_CELERY_BROKER": "b", "MEMBERFLOW_POSTGRES_URL": "postgresql://h/db"}
        )
