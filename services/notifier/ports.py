"""The notifier's ports: what :class:`~services.notifier.service.Notifier` needs from
its store of contacts and decisions. The Redis adapter is
:class:`~services.notifier.adapters.redis_directory.RedisDirectory`; the fast tests'
fake is :class:`~services.notifier.adapters.memory_directory.MemoryDirectory`.
Channels have their own port, :class:`~services.notifier.channels.base.Channel`.
"""

from __future__ import annotations

from typing import Any, Protocol

from services.notifier.core.guardrails import ConsentRecord


class Directory(Protocol):
    async def profile(
        self, user_id: str
    ) -> tuple[dict[str, str], ConsentRecord, dict[str, float]]: ...

    async def is_erased(self, user_id: str) -> bool:
        """True while the mark of the user's erase lasts: contact nothing, record nothing."""

    async def already_done(self, user_id: str, action_id: str) -> str | None: ...

    async def is_published(self, user_id: str, action_id: str) -> bool: ...

    async def mark_published(self, user_id: str, action_ids: list[str]) -> None: ...

    async def record(
        self,
        user_id: str,
        action: dict[str, Any],
        *,
        contacted: bool,
        winback: dict[str, Any] | None,
    ) -> None: ...

    async def defer(self, job: dict[str, Any], not_before: float) -> None: ...

    async def schedule_contact(self, user_id: str, action_id: str, at: float) -> None: ...

    async def remember_failed(self, job: dict[str, Any]) -> None: ...
