"""Fixtures of the personalization tests: the service's parts on a temporary data
directory (a registry with the shipped models, the example store, an RDP ledger, the
job table and a job manager that must never stage anything), closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from models.manifest import shipped_models_dir
from services.modelstore.registry import Registry
from services.personalization.config import PersonalizationConfig
from services.personalization.job_manager import JobManager
from services.personalization.job_table import JobTable
from services.personalization.learning_mode import FILE_NAME, LearningMode
from services.personalization.ledger import PrivacyLedger
from services.personalization.ledger_records import BudgetPolicy
from services.personalization.store import ExampleStore


@pytest.fixture
def config(tmp_path: Path) -> PersonalizationConfig:
    return PersonalizationConfig(data_dir=tmp_path / "data")


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "models")
    registry.bootstrap(shipped_models_dir())
    return registry


@pytest.fixture
def store(config: PersonalizationConfig) -> Iterator[ExampleStore]:
    with ExampleStore.open(config.data_dir / "examples.db") as store:
        yield store


@pytest.fixture
def ledger(config: PersonalizationConfig) -> Iterator[PrivacyLedger]:
    policy = BudgetPolicy(epsilon=4.0, delta=1e-5, accountant="rdp")
    with PrivacyLedger.open(config.data_dir / "ledger.db", policy) as ledger:
        yield ledger


@pytest.fixture
def job_table(config: PersonalizationConfig) -> Iterator[JobTable]:
    with JobTable(config.data_dir / "jobs.db") as table:
        yield table


@pytest.fixture
def learning_mode(config: PersonalizationConfig) -> LearningMode:
    return LearningMode(config.data_dir / FILE_NAME)


@pytest.fixture
async def manager(
    config: PersonalizationConfig,
    registry: Registry,
    store: ExampleStore,
    ledger: PrivacyLedger,
    job_table: JobTable,
    tmp_path: Path,
) -> AsyncIterator[JobManager]:
    async def stage(model: str, bundle: bytes, signature: bytes) -> tuple[str, str, str]:
        raise AssertionError("no staging here")

    manager = JobManager(
        config,
        store=store,
        ledger=ledger,
        jobs=job_table,
        registry=registry,
        stage=stage,
        signing_key_path=tmp_path / "absent.pem",
    )
    yield manager
    await manager.close()
