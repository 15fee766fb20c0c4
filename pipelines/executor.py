"""Which executor the jobs run their steps with: in-process by default, Celery in production.

The embedded default (SQLite, `memberflow demo`, `make dev`) runs every step of a run in the run's
own process. The production profile (`memberflow deploy --profile production`) sets
MEMBERFLOW_EXECUTOR=celery: each step is a Celery task that any `dagster-celery` worker may take.
Steps that write a list's DuckDB warehouse stay one at a time because they share the list's pool,
which the Celery executor claims on the instance (PostgreSQL) before it sends a step.
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_ENV = "MEMBERFLOW_EXECUTOR"
BROKER_ENV = "MEMBERFLOW_CELERY_BROKER"
BACKEND_ENV = "MEMBERFLOW_CELERY_BACKEND"
QUEUE_ENV = "MEMBERFLOW_CELERY_QUEUE"
DEFAULT_QUEUE = "memberflow"

# Celery settings for steps that may die with their worker (kill -9, a lost machine): a step's
# message is acknowledged only once the step has ended (acks_late), so the broker hands it to
# another worker when the one running it disappears; a worker takes one step at a time
# (prefetch 1), so no step waits behind a long one on a busy worker. No AMQP heartbeat: a worker
# runs its step in the process that would send them (`--pool solo`); a dead worker's connection
# is closed by its kernel, which RabbitMQ sees at once.
CELERY_SETTINGS = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_heartbeat": 0,
}


class UnknownExecutor(ValueError):
    """MEMBERFLOW_EXECUTOR names an executor memberflow does not have."""


def celery_queue() -> str:
    return os.environ.get(QUEUE_ENV) or DEFAULT_QUEUE


def celery_config() -> dict:
    """The Celery executor's config, also what the workers are started with (same broker, queue).

    Broker and result backend URLs hold credentials: they stay `env:` references, resolved by
    each process from its own environment, never written into a run's config.
    """
    return {
        "broker": {"env": BROKER_ENV},
        "backend": {"env": BACKEND_ENV} if os.environ.get(BACKEND_ENV) else "rpc://",
        "config_source": {**CELERY_SETTINGS, "task_default_queue": celery_queue()},
    }


def executor_for_deployment() -> dg.ExecutorDefinition:
    """The executor of every job, from MEMBERFLOW_EXECUTOR: `in_process` (default) or `celery`."""
    name = os.environ.get(EXECUTOR_ENV, "in_process").strip() or "in_process"
    if name == "in_process":
        return dg.in_process_executor
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_config(), name="celery")
    raise UnknownExecutor(f"{EXECUTOR_ENV}={name!r}: use 'in_process' or 'celery'")
