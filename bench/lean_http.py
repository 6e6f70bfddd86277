"""A small HTTP/1.1 client for load generators that share the machine they measure.

``bench e2e-latency`` sends ~110 requests a second to ingest from the same two
cores that run ingest, Kafka, Redis and the scorer. With httpx its load
generator used about a third of one core (BENCHMARKS.md, "2026-12-06
(evening)"), CPU taken from the system under test, and httpx's own work
between the "sent" timestamp and the bytes on the wire counted as latency.
This client does only what that load needs: POST on keep-alive connections
(up to ``size`` at once), the status line, the headers, a ``Content-Length``
body. Anything else (chunked bodies, redirects, TLS) is refused with
:class:`HttpError`, never half-handled. :class:`LoadClient` is what the
benches hold: this pool, or httpx (``--httpx``) to compare with the client
used before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx


class HttpError(Exception):
    """The request got no complete answer: connection refused or lost, a timeout, or an
    answer this client does not read."""


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Pool:
    """Keep-alive connections to one ``http://host:port``; at most ``size`` in use at once."""

    def __init__(
        self, base: str, *, size: int, headers: Mapping[str, str], timeout: float = 10.0
    ) -> None:
        url = urlsplit(base)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"{base!r}: only http://host[:port] is supported")
        self.host, self.port = url.hostname, url.port or 80
        self.timeout = timeout
        self._slots = asyncio.Semaphore(size)
        self._idle: list[Connection] = []
        self._head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` to ``path``; the status code and the body of the answer.

        A kept-alive connection the server has closed meanwhile (uvicorn closes
        one idle for 5 s) fails before any answer: the request goes again, once,
        on a new connection.
        """
        async with self._slots:
            if self._idle:
                try:
                    return await self._on(self._idle.pop(), path, body)
                except HttpError as exc:
                    if not isinstance(exc.__cause__, asyncio.IncompleteReadError | ConnectionError):
                        raise
            return await self._on(None, path, body)

    async def _on(self, conn: Connection | None, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            if conn is None:
                conn = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.timeout
                )
            status, answer, keep = await asyncio.wait_for(
                self._exchange(conn, path, body), self.timeout
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            if conn is not None:
                conn[1].close()
            raise HttpError(f"POST {path}: {type(exc).__name__}: {exc}") from exc
        if keep:
            self._idle.append(conn)
        else:
            conn[1].close()
        return status, answer

    async def _exchange(self, conn: Connection, path: str, body: bytes) -> tuple[int, bytes, bool]:
        reader, writer = conn
        writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self._head}"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        await writer.drain()
        status_line = await reader.readuntil(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = int(parts[1])
        length, keep = None, True
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and value != b"identity":
                raise ValueError(f"transfer-encoding {value.decode()!r} is not supported")
            elif name == b"connection" and value == b"close":
                keep = False
        if length is None:
            raise ValueError("an answer without Content-Length is not supported")
        return status, await reader.readexactly(length), keep

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class LoadClient:
    """A bench's POSTs to one URL: :class:`Pool`, or with ``use_httpx`` an httpx client
    (the benches' client before 2026-12-06). Either way a failed request is an
    :class:`HttpError`."""

    def __init__(
        self,
        url: str,
        *,
        size: int,
        headers: Mapping[str, str],
        timeout: float,
        use_httpx: bool = False,
    ) -> None:
        self.url, self.path = url, urlsplit(url).path
        self._pool = None if use_httpx else Pool(url, size=size, headers=headers, timeout=timeout)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self._httpx = (
            httpx.AsyncClient(timeout=timeout, limits=limits, headers=dict(headers))
            if use_httpx
            else None
        )

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """The status code and the body of the answer."""
        if self._pool is not None:
            return await self._pool.post(self.path, body)
        assert self._httpx is not None
        try:
            reply = await self._httpx.post(self.url, content=body)
        except httpx.HTTPError as exc:
            raise HttpError(f"POST {self.path}: {type(exc).__name__}: {exc}") from exc
        return reply.status_code, reply.content

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._httpx is not None:
            await self._httpx.aclose()
