"""Dialling a realtime session's upstream, and what the client is told when that fails.

The client is still plain HTTP here (it is accepted only once the upstream
is), so a failure is an HTTP answer: the HTTP relay's, in the same words and
with the same ``ex.outcome`` (a balanced route fails over on the connect-phase
ones), or, when the upstream refused the upgrade, its status.
"""

from __future__ import annotations

import json
import ssl
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from aigw.chain.exchange import Exchange
from aigw.errors import UpstreamUnavailable
from aigw.realtime.handshake import client_protocols, upstream_headers, upstream_url
from aigw.upstream.failures import quoting, upstream_failure
from aigw.upstream.headers import RESPONSE_POLICY
from aigw.upstream.relay import RetryableAnswer
from aigw.upstream.retry_after import retry_after_s
from aigw.upstream.target import UpstreamTarget
from aigw.upstream.websocket import HandshakeRefused, UpstreamSocket

__all__ = ["dial_upstream"]


async def dial_upstream(
    ex: Exchange, target: UpstreamTarget, *, max_frame: int, heartbeat: float
) -> UpstreamSocket | web.Response:
    """Opens the upstream socket; a failure is the HTTP relay's error, same words, same
    ``ex.outcome``; an upstream's refusal is the response to relay."""
    url = upstream_url(ex, target)
    origin = target.origin
    where = f"{origin.host}:{origin.port}"
    ex.upstream_sent_ns = time.perf_counter_ns()
    try:
        upstream = await ex.pool.websockets.dial(
            url,
            upstream_headers(ex),
            protocols=client_protocols(ex.request),
            handshake_timeout=target.connect_timeout,
            max_frame=max_frame,
            heartbeat=heartbeat,
        )
    except HandshakeRefused as refused:
        return _refused(ex, refused)
    except TimeoutError as exc:
        detail = f"no WebSocket handshake with the upstream {where} in time"
        raise upstream_failure(ex, "upstream_connect_timeout", detail) from exc
    except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
        detail = f"TLS handshake with {where} failed: {type(exc).__name__}"
        raise upstream_failure(ex, "upstream_tls_error", detail) from exc
    except aiohttp.ClientConnectorError as exc:
        detail = f"cannot connect to the upstream {where}: {exc.strerror or 'error'}"
        raise upstream_failure(ex, "upstream_unreachable", detail) from exc
    except (aiohttp.ClientError, OSError) as exc:
        detail = (
            f"the upstream {where} closed the connection or broke the WebSocket handshake "
            f"({type(exc).__name__})"
        )
        raise upstream_failure(ex, "upstream_error", detail) from exc
    ex.upstream_headers_ns = time.perf_counter_ns()
    ex.upstream_status = 101
    return upstream


def _refused(ex: Exchange, refused: HandshakeRefused) -> web.Response:
    """The answer when the upstream did not switch protocols: never a session.

    A 4xx/5xx is relayed with its status and headers (``retry-after``,
    ``x-ratelimit-*``: what a client acts on); its body is not available
    (aiohttp's client drops it), so the body is aigw's, naming the status.
    """
    status = refused.status
    ex.upstream_status = status
    headers = refused.headers
    if status in ex.failover_statuses:
        raise RetryableAnswer(
            status, retry_after_s(headers.items()) if headers is not None else None
        )
    if 300 <= status < 400:
        raise UpstreamUnavailable(
            "upstream_redirect",
            f"the upstream answered {status} with a redirect; aigw never follows "
            "upstream redirects (they would carry the injected credential)",
        )
    if status < 400:  # 101 with a broken handshake, or a 2xx: not a WebSocket
        ex.outcome = "upstream_error"
        ex.error = f"the upstream answered the WebSocket upgrade with {status}"
        raise UpstreamUnavailable(
            "upstream_error", quoting(ex, "the upstream failed the WebSocket handshake")
        )
    kept = RESPONSE_POLICY.filter(headers.items()) if headers is not None else []
    kept.append(("x-request-id", ex.request_id))
    kept.append(("Content-Type", "application/json"))
    error = {
        "error": {
            "code": "upstream_refused_websocket",
            "message": quoting(ex, f"the upstream refused the WebSocket upgrade with {status}"),
            "param": None,
            "type": "upstream_error",
        }
    }
    body = json.dumps(error).encode()
    ex.bytes_out = len(body)
    return web.Response(status=status, body=body, headers=CIMultiDict(kept))
