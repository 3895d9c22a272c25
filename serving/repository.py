"""The model repository routes (load/unload, REST and gRPC) for the one model a kzero server serves.

KServe's own extension drops an unloaded model from the registry and cannot load it back
(``ModelRepository.load`` does nothing), while liveness stays OK, so the pod serves 404s for good.
Here unload frees the weights but keeps the model registered (requests get 404 naming the load
route, readiness is false), load runs the same background loader again (readiness false meanwhile),
and a reload that fails makes the server report not-live, so Kubernetes restarts it.

Off unless the server is started with ``--enable_model_repository``; the edge (``serving.access``)
refuses the routes first, and this class refuses them too should a call get past it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from serving.errors import ModelNotFound, ModelUnloaded, NotFound, NotReady, Unavailable
from serving.readiness import ServedModel

log = logging.getLogger(__name__)

REPOSITORY_FLAG = "--enable_model_repository"
REPOSITORY_OFF = f"the model repository API (load/unload) is disabled; start the server with {REPOSITORY_FLAG}"


class ReloadableModel(ServedModel, Protocol):
    async def unload(self) -> None:
        """Free what ``load_in_background`` loaded; requests get 404 until it runs again."""
        ...


class RepositoryDisabled(NotFound):
    def __init__(self) -> None:
        super().__init__(REPOSITORY_OFF)


class ReloadFailed(Unavailable):
    """The model could not be loaded again; the server reports not-live until it is restarted."""


class SingleModelRepository:
    """KServe's ``ModelRepositoryExtension`` interface (``load``/``unload`` by name) for one model.

    ``not_live(reason)`` is called once if a reload fails. Loads and unloads run one at a time.
    """

    def __init__(
        self, model: ReloadableModel, *, enabled: bool, not_live: Callable[[str], None], retry_after_s: int = 5
    ) -> None:
        self._model = model
        self._enabled = enabled
        self._not_live = not_live
        self._retry_after_s = retry_after_s
        self._lock = asyncio.Lock()
        self._unloaded = False
        self._failure: str | None = None

    def _check(self, name: str) -> None:
        if not self._enabled:
            raise RepositoryDisabled()
        if name != self._model.name:
            raise ModelNotFound(name, [self._model.name])
        if self._failure is not None:
            raise ReloadFailed(self._failure, self._retry_after_s)

    async def unload(self, model_name: str) -> dict[str, object]:
        self._check(model_name)
        async with self._lock:
            if self._unloaded:
                raise ModelUnloaded(model_name)
            if not self._model.ready:
                raise NotReady(f"model {model_name} is still loading; unload it once it is ready", self._retry_after_s)
            await self._model.unload()
            self._unloaded = True
        log.info("model %s unloaded through the repository API", model_name)
        return {"name": model_name, "unload": True}

    async def load(self, model_name: str) -> dict[str, object]:
        """Load an unloaded model again and answer once it is ready; a loaded one is left as it is."""
        self._check(model_name)
        async with self._lock:
            if self._unloaded:
                log.info("model %s loading again through the repository API", model_name)
                self._unloaded = False
                reload = asyncio.create_task(self._model.load_in_background())
                reload.add_done_callback(self._reloaded)
                try:  # a caller that hangs up does not cancel the reload
                    await asyncio.shield(reload)
                except Exception as err:
                    raise ReloadFailed(f"model {model_name} failed to load again: {err}; the server now "
                                       "reports not-live so that it is restarted", self._retry_after_s) from err
        await self._model.wait_ready()  # a load during the first load waits for it
        return {"name": model_name, "load": True}

    def _reloaded(self, task: asyncio.Task[object]) -> None:
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or error is not None:
            self._failure = f"model {self._model.name} failed to load again: {error or 'cancelled'}"
            log.error("%s; reporting not-live so that the server is restarted", self._failure)
            self._not_live(self._failure)
