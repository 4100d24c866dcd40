"""The engine's config wiring: configs and config models written to the store and shared.

:class:`ConfigMethods` is the part of the engine's facade that stores config
changes (through :class:`~engine._persistence.Persistence`, with the store's
revision check where several engines share it) and tells the other engines
sharing the store of them (kept apart to keep the facade small).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._config import Config
from ._config_model import ConfigModels
from ._errors import EngineClosed
from ._persistence import Persistence
from ._store import AsyncStore, Store


class ConfigMethods:
    """The engine's config wiring (a part of :class:`~engine.Engine`)."""

    _persistence: Persistence
    _share: Callable[[str, str, Any], None] | None
    _config_models: ConfigModels | None

    _store: Store | AsyncStore | None

    @property
    def model_store(self) -> Persistence | None:
        """Where config models are kept (see :class:`~engine._config_model.ConfigModels`)."""
        return None if self._store is None else self._persistence

    @property
    def config_models(self) -> ConfigModels:
        """The config kinds and validation settings (Resoto's config model), kept in the
        store and, with a store several engines share, changed on all of them at once."""
        if self._config_models is None:  # once the store is open: it loads what is kept
            self._config_models = ConfigModels(self.model_store, share=self._share_model)
        return self._config_models

    def _share_model(self, what: str, ident: str, value: Any) -> None:
        if self._share is not None:
            self._share(what, ident, value)

    def _persist_config(self, config_id: str, config: Config | None) -> None:
        if self._persistence.closed:
            raise EngineClosed(f"the engine is stopping: config {config_id!r} not changed")
        if config is None:
            self._persistence.delete_config(config_id)
        else:
            self._persistence.save_config(config)
        if self._share is not None:
            shared = None if config is None else {"revision": config.revision, "data": config.data}
            self._share("config", config_id, shared)

    async def _persist_config_checked(
        self, config_id: str, config: Config | None, revision: str, stored: Callable[[], None]
    ) -> None:
        if self._persistence.closed:
            raise EngineClosed(f"the engine is stopping: config {config_id!r} not changed")

        def shared() -> None:
            stored()
            if self._share is not None:
                value = (
                    None if config is None else {"revision": config.revision, "data": config.data}
                )
                self._share("config", config_id, value)

        await self._persistence.change_config_if(config_id, config, revision, shared)

    def _revision_stamp(self) -> str:
        # the fencing token of the lease: no two replicas hold the same one
        lease = self._persistence.lease
        return "0" if lease is None else str(lease.token)
