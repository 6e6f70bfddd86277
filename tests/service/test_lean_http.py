"""The load generator's HTTP client (bench/lean_http.py) against a loopback server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from bench.lean_http import HttpError, LoadClient, Pool

Answer = Callable[[bytes], bytes]


def ok(body: bytes) -> bytes:
    reply = b'{"accepted": %d}' % len(body)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply)


async def serve(
    answer: Answer, scenario: Callable[[str, list[bytes]], Awaitable[None]], *, close_after: int = 0
) -> tuple[list[bytes], int]:
    """Run ``scenario(base_url, requests)`` against a server that answers each request
    with ``answer(body)``; with ``close_after``, it closes a connection after that many.
    The requests it got, and how many connections."""
    requests: list[bytes] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = await reader.readexactly(length)
                requests.append(head.split(b"\r\n")[0] + b" " + body)
                writer.write(answer(body))
                await writer.drain()
                served += 1
                if close_after and served >= close_after:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await scenario(f"http://127.0.0.1:{port}", requests)
    return requests, connections


def test_posts_go_over_one_kept_alive_connection_and_read_the_answer() -> None:
    async def scenario(base: str, requests: list[bytes]) -> None:
        pool = Pool(base, size=4, headers={"Authorization": "Bearer k"})
        try:
            answers = [await pool.post("/v1/events", b"x" * n) for n in (1, 2, 3)]
        finally:
            await pool.close()
        assert answers == [(200, b'{"accepted": %d}' % n) for n in (1, 2, 3)]

    requests, connections = asyncio.run(serve(ok, scenario))
    assert requests == [b"POST /v1/events HTTP/1.1 " + b"x" * n for n in (1, 2, 3)]
    assert connections == 1


def test_a_connection_the_server_closed_is_replaced_and_the_request_sent_again() -> None:
    async def scenario(base: str, requests: list[bytes]) -> None:
        pool = Pool(base, size=1, headers={})
        try:
            assert await pool.post("/a", b"1") == (200, b'{"accepted": 1}')
            await asyncio.sleep(0.05)  # the server has closed that connection by now
            assert await pool.post("/b", b"22") == (200, b'{"accepted": 2}')
        finally:
            await pool.close()

    requests, connections = asyncio.run(serve(ok, scenario, close_after=1))
    assert requests == [b"POST /a HTTP/1.1 1", b"POST /b HTTP/1.1 22"]
    assert connections == 2


def test_an_answer_it_does_not_read_is_an_error_that_says_so() -> None:
    def chunked(body: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"

    async def scenario(base: str, requests: list[bytes]) -> None:
        pool = Pool(base, size=1, headers={})
        with pytest.raises(HttpError, match="transfer-encoding 'chunked' is not supported"):
            await pool.post("/v1/events", b"{}")
        await pool.close()

    asyncio.run(serve(chunked, scenario))


def test_a_refused_connection_is_an_http_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there

    async def scenario() -> None:
        pool = Pool(f"http://127.0.0.1:{port}", size=1, headers={})
        with pytest.raises(HttpError, match="ConnectionRefusedError"):
            await pool.post("/v1/events", b"{}")

    asyncio.run(scenario())


def test_the_load_client_answers_alike_with_either_http_client() -> None:
    answers: dict[bool, tuple[int, bytes]] = {}

    async def scenario(base: str, requests: list[bytes]) -> None:
        for use_httpx in (False, True):
            client = LoadClient(
                base + "/v1/events", size=2, headers={}, timeout=5, use_httpx=use_httpx
            )
            try:
                answers[use_httpx] = await client.post(b"abc")
            finally:
                await client.close()

    requests, _ = asyncio.run(serve(ok, scenario))
    assert answers == {False: (200, b'{"accepted": 3}'), True: (200, b'{"accepted": 3}')}
    assert requests == [b"POST /v1/events HTTP/1.1 abc"] * 2
