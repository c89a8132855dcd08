"""The upstream pool over TLS: certificates verified, host names checked, connections reused."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from aigw.upstream.connection import Origin
from aigw.upstream.pool import UpstreamPool

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

_BODY = b'{"ok":true}'
_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(_BODY)
    + _BODY
)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` (and no IP address)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class _TLSServer:
    """Answers every request with one JSON body; counts the TLS connections it accepted."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                writer.write(_ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def _serving(certificate: tuple[Path, Path]) -> AsyncIterator[_TLSServer]:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    state = _TLSServer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


def _trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


async def _get(pool: UpstreamPool, origin: Origin) -> tuple[int, bytes]:
    response = await pool.request(
        origin, "POST", "/openai/x", [], b"{}", connect_timeout=5, read_timeout=5
    )
    body = await response.read()
    response.release()
    return response.status, body


# aigw runs on uvloop, whose TLS implementation is its own: both loops are tested.
RUNNERS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


@RUNNERS
def test_a_trusted_certificate_serves_and_the_connection_is_reused(
    run: Callable[[Coroutine[Any, Any, None]], None], certificate: tuple[Path, Path]
) -> None:
    async def scenario() -> None:
        async with _serving(certificate) as server:
            pool = UpstreamPool(ssl_context=_trusting(certificate[0]))
            origin = Origin("https", "localhost", server.port)
            try:
                assert await _get(pool, origin) == (200, _BODY)
                assert await _get(pool, origin) == (200, _BODY)
                assert server.connections == 1
                assert pool.idle_connections(origin) == 1
            finally:
                await pool.close()

    run(scenario())


@RUNNERS
def test_an_untrusted_certificate_is_refused(
    run: Callable[[Coroutine[Any, Any, None]], None], certificate: tuple[Path, Path]
) -> None:
    async def scenario() -> None:
        async with _serving(certificate) as server:
            # The default context trusts the system's CAs only, as in production.
            pool = UpstreamPool()
            try:
                with pytest.raises(ssl.SSLCertVerificationError, match="self-signed"):
                    await _get(pool, Origin("https", "localhost", server.port))
                assert pool.open_connections == 0
            finally:
                await pool.close()

    run(scenario())


@RUNNERS
def test_a_certificate_for_another_name_is_refused(
    run: Callable[[Coroutine[Any, Any, None]], None], certificate: tuple[Path, Path]
) -> None:
    async def scenario() -> None:
        async with _serving(certificate) as server:
            # Trusted CA, but the certificate names "localhost", not the address dialled.
            pool = UpstreamPool(ssl_context=_trusting(certificate[0]))
            try:
                with pytest.raises(ssl.SSLCertVerificationError, match="match"):
                    await _get(pool, Origin("https", "127.0.0.1", server.port))
                assert pool.open_connections == 0
            finally:
                await pool.close()

    run(scenario())
