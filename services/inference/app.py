"""The inference service's parts, wired from its config (``__main__`` and tests use it).

:class:`InferenceApp` owns the :class:`~services.inference.registry.ModelRegistry`
(what serves), the :class:`~services.inference.monitor.Monitor` (shadow runs, drift),
the servicer, and, when ``registry_root`` is set, the
:class:`~services.inference.watcher.RegistryWatcher` that follows the on-disk model
registry. :meth:`start` loads every model before it returns, so a server started after
it answers at once.
"""

from __future__ import annotations

import asyncio

from services.inference.config import InferenceConfig
from services.inference.drift import DriftSettings
from services.inference.health import HealthBook
from services.inference.monitor import Monitor
from services.inference.registry import ModelRegistry
from services.inference.servicer import InferenceServicer
from services.inference.watcher import RegistryWatcher
from services.modelstore.reader import RegistryReader


class InferenceApp:
    def __init__(self, config: InferenceConfig) -> None:
        self.config = config
        health = HealthBook(config.stats_window_seconds, config.stats_max_records)
        self.registry = ModelRegistry(config.threads, health, config.execution_providers)
        self.monitor = Monitor(
            self.registry,
            shadow_queue=config.shadow_queue,
            drift_queue=config.drift_queue,
            regression_tolerance=config.regression_tolerance,
            drift=DriftSettings(
                psi_alert=config.psi_alert,
                ks_alert=config.ks_alert,
                min_samples=config.min_samples,
                bucket_seconds=config.drift_bucket_seconds,
                buckets=config.drift_buckets,
            ),
        )
        self.servicer = InferenceServicer(self.registry, config.max_batch, self.monitor)
        self.watcher: RegistryWatcher | None = None

    async def start(self) -> None:
        """Load the models (from the model store, which inference only reads, or from
        ``model_dir``) and start following the store."""
        c = self.config
        if c.registry_root is None:
            await asyncio.to_thread(self.registry.load_directory, c.model_dir)
            return
        disk = RegistryReader(c.registry_root)
        self.watcher = RegistryWatcher(self.registry, disk, c.registry_poll_seconds)
        await self.watcher.refresh()
        self.watcher.start()

    async def close(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        await self.monitor.close()
        self.registry.close()
