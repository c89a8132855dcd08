"""Read one request body within its bounds: size, time, and ``Expect: 100-continue``.

SECURITY: a request body is the one thing a client can make the gateway hold
for as long as it likes: send a head declaring 8 MiB, all but one byte, then
nothing, and the bytes sit in memory with the connection open. Every body is
therefore read under two deadlines (``aigw.limits``):

* ``client_body_timeout``: the longest silence between two reads (nginx
  ``client_body_timeout``), and
* ``client_body_total_timeout``: the whole body, however steadily it trickles.

Missing either is answered with a 408 and the connection is closed: the rest of
that body is never coming, and whatever does come cannot be told from the next
request.

PERF: the usual SDK request arrives with its head, so by the time the route
runs the parser has already seen the end of the body. That case reads what is
buffered and arms nothing. Only a body still in flight gets a deadline, and
then one timer for the whole body: each read just notes the time, and the timer,
when it fires, re-arms itself at the next possible expiry if data came since.

``Expect: 100-continue`` (curl sends it for bodies over 1 MiB and then waits a
second for the go-ahead) is answered here, once the route has matched and the
declared size is accepted, right before the first read. Any other expectation
is refused with a 417.

Every byte read is reserved in the worker's request-body budget
(``aigw.chain.body_budget``), which may evict this body for a faster one (a
503); the caller releases the body's bytes when its request ends.
"""

from __future__ import annotations

import asyncio
import sys
from functools import partial

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.streams import StreamReader

from aigw.chain.body_budget import BodyBudget, evicted_error
from aigw.errors import ExpectationFailed, PayloadTooLarge, RequestTimeout
from aigw.limits import Limits

__all__ = ["BodyPieces", "drop_unread_body", "read_bounded"]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def read_bounded(
    request: web.BaseRequest, limit: int, limits: Limits, budget: BodyBudget
) -> bytes:
    """Reads the whole request body within *limits*, refusing more than *limit* bytes.

    On success the body's bytes are reserved in *budget*: the caller releases
    ``len(body)`` once the request no longer holds the body.

    Args:
        request: The request whose body to read.
        limit: The route's ``max_request_body_size`` (0: no limit).
        limits: The process's body deadlines.
        budget: The worker's budget for buffered body bytes; no body may be
            larger than all of it.

    Raises:
        PayloadTooLarge: The declared or the received size is over *limit*
            or over the whole budget.
        RequestTimeout: The body did not arrive within the deadlines.
        ExpectationFailed: ``Expect`` names anything but ``100-continue``.
        ServiceUnavailable: The budget is full and this body is the one refused.
    """
    expect = request.headers.get(hdrs.EXPECT)
    if expect is not None:  # rare: no call on the usual request's path
        expect = _expectation(request, expect)
    cap = limit if 0 < limit <= budget.limit else budget.limit
    declared = request.content_length
    if declared is not None and declared > cap:
        # Refused before reading a byte of it, and before any 100 Continue.
        error = _too_large(limit, cap)
        if expect is not None:
            # A client waiting for 100 Continue never sends the body; what it
            # sends next on this connection would be misread as that body.
            error.close_connection = True
            _stop_waiting(request.content)
        raise error
    if not request.body_exists:
        return b""
    content = request.content
    if content.is_eof():
        # The whole body is already buffered (the usual case): no wait, no timer.
        body = content.read_nowait(-1)
        if len(body) > cap:
            raise _too_large(limit, cap)
        budget.reserve(len(body))
        return body
    if expect is not None and content.total_bytes == 0:
        # A client that already started sending needs no go-ahead (RFC 9110
        # lets the server skip it then).
        await _send_continue(request)
    return await _read_in_time(content, limit, cap, limits, declared, budget)


def _expectation(request: web.BaseRequest, expect: str) -> str | None:
    """The request's *expect* (``100-continue``), or None; refuses any other with a 417."""
    # RFC 9110 §10.1.1: an HTTP/1.0 client cannot expect anything; ignore it.
    if request.version != HttpVersion11:
        return None
    if expect.strip().lower() != "100-continue":
        _stop_waiting(request.content)
        # The value is not echoed: header values stay out of answers and logs.
        raise ExpectationFailed(
            "expectation_failed",
            "the Expect header asks for something this gateway does not do; "
            "only 100-continue is supported",
        )
    return expect


class BodyPieces:
    """A request body read piece by piece as it arrives, never held whole.

    The bounds of ``read_bounded`` without its buffering (a multipart upload is
    sent upstream as it comes): ``Expect`` is checked and a declared size over
    *limit* refused at construction, before a byte is read; each ``read``
    waits under ``client_body_timeout`` (silence) and
    ``client_body_total_timeout`` (counted from construction); the bytes
    received so far are checked against *limit*. No reservation in the body
    budget: aiohttp pauses the client's socket once 128 KiB wait unread, so a
    body costs one piece at a time.

    The deadline timer runs only while a read may wait (``pause`` stops it
    between reads, e.g. while the upstream connection is being opened): time
    aigw spends is not the client's silence.

    Args:
        request: The request whose body to read.
        limit: The route's ``max_request_body_size`` (0: no limit).
        limits: The process's body deadlines.

    Raises:
        ExpectationFailed: ``Expect`` names anything but ``100-continue``.
        PayloadTooLarge: The declared size is over *limit* (the connection
            then closes: the body stays unread).
    """

    __slots__ = (
        "_clock",
        "_content",
        "_deadline",
        "_end",
        "_expect",
        "_limit",
        "_limits",
        "_request",
    )

    def __init__(self, request: web.BaseRequest, limit: int, limits: Limits) -> None:
        expect = request.headers.get(hdrs.EXPECT)
        if expect is not None:
            expect = _expectation(request, expect)
        self._request = request
        self._content = request.content
        self._limit = limit or sys.maxsize
        self._limits = limits
        self._expect = expect is not None
        self._clock = asyncio.get_running_loop().time
        self._end = self._clock() + limits.client_body_total_timeout
        self._deadline: _BodyDeadline | None = None
        declared = request.content_length
        if limit and declared is not None and declared > limit:
            raise self._refuse(limit)

    @property
    def received(self) -> int:
        """Body bytes received from the client so far."""
        return self._content.total_bytes

    async def read(self) -> bytes:
        """The next bytes of the body as they arrived; ``b""`` at its end.

        Raises:
            PayloadTooLarge: More than *limit* bytes arrived (the connection
                then closes).
            RequestTimeout: The client was silent, or the body slow, past the
                deadlines.
        """
        content = self._content
        deadline = self._deadline
        if deadline is None and not content.is_eof():
            if self._expect and content.total_bytes == 0:
                self._expect = False
                await _send_continue(self._request)
            limits = self._limits
            # Past the total already: the timer fires at once and the read ends in a 408.
            remaining = max(self._end - self._clock(), 0.0)
            deadline = self._deadline = _BodyDeadline(
                content, limits.client_body_timeout, remaining
            )
        try:
            piece = await content.readany()
        except _BodyNotComing:
            expired = deadline.expired if deadline is not None else None
            self.pause()
            raise _timed_out(
                expired, self._limits, content.total_bytes, self._request.content_length
            ) from None
        if deadline is not None:
            deadline.last_read = self._clock()
        if content.total_bytes > self._limit:
            raise self._refuse(self._limit)
        if not piece:
            self.pause()
        return piece

    def tighten(self, limit: int) -> None:
        """Bounds the body by *limit* (0: no change) from now on, if it is stricter.

        The model dispatcher opens an upload under the loosest bound of every
        model route; the route the form's ``model`` names then applies its own.

        Raises:
            PayloadTooLarge: The declared size, or what already arrived, is over
                *limit* (the connection then closes).
        """
        if not limit or limit >= self._limit:
            return
        self._limit = limit
        declared = self._request.content_length
        if (declared is not None and declared > limit) or self._content.total_bytes > limit:
            raise self._refuse(limit)

    def pause(self) -> None:
        """Stops the deadline timer until the next ``read``."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def abandon(self) -> None:
        """The rest of the body will not be read: stop the timer, let the connection close."""
        self.pause()
        _stop_waiting(self._content)

    def _refuse(self, limit: int) -> PayloadTooLarge:
        """The 413 for a body past *limit*; the rest stays unread, so the connection closes."""
        self.abandon()
        error = _too_large(limit, limit)
        error.close_connection = True
        return error


def drop_unread_body(request: web.BaseRequest) -> bool:
    """Stops waiting for the rest of *request*'s body; True if some had not arrived.

    A request answered without its body read must then close its connection:
    a client waiting for 100 Continue never sends the body, and whatever it
    sends next would be read as that body.
    """
    content = request.content
    if content.is_eof():
        return False
    _stop_waiting(content)
    return True


async def _send_continue(request: web.BaseRequest) -> None:
    writer = request.writer
    await writer.write(_CONTINUE)
    # As aiohttp's own expect handler does: the interim response is not part
    # of the final response's size.
    writer.output_size = 0


class _BodyNotComing(TimeoutError):
    """Set on a body stream whose rest will not be read; wakes a pending read.

    A ``TimeoutError`` on purpose: after the handler returns, aiohttp reads and
    discards an unfinished body for up to ``lingering_time`` (10 s) and stops
    quietly at a timeout, so the connection closes as soon as the answer is
    written instead of waiting for bytes that are not coming.
    """


def _stop_waiting(content: StreamReader) -> None:
    if not content.is_eof():
        content.set_exception(_BodyNotComing())


class _BodyDeadline:
    """One timer guarding a whole body read: idle gap and total time.

    Reads only record when they happened (``last_read``); the timer runs at
    the earliest moment a deadline could pass and, if data arrived meanwhile,
    re-arms itself for the next one. A body that arrives in a few reads costs
    one ``call_at`` and one ``cancel``.
    """

    __slots__ = ("_content", "_end", "_handle", "_idle", "_loop", "expired", "last_read")

    def __init__(self, content: StreamReader, idle: float, total: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._loop = loop
        self._content = content
        self._idle = idle
        self._end = now + total
        self.last_read = now
        self.expired: str | None = None
        self._handle = loop.call_at(min(now + idle, self._end), self._check)

    def _check(self) -> None:
        if self._content.is_eof():
            return  # all of it is here; the reads left do not wait
        due = min(self.last_read + self._idle, self._end)
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self.expired = "total" if due == self._end else "idle"
        _stop_waiting(self._content)

    def cancel(self) -> None:
        self._handle.cancel()


async def _read_in_time(
    content: StreamReader,
    limit: int,
    cap: int,
    limits: Limits,
    declared: int | None,
    budget: BodyBudget,
) -> bytes:
    deadline = _BodyDeadline(content, limits.client_body_timeout, limits.client_body_total_timeout)
    arriving = budget.start(partial(_stop_waiting, content))
    clock = asyncio.get_running_loop().time
    # Parts joined once at the end, not one growing bytearray: measured with 60
    # stalled 8 MiB bodies under a 256 MiB budget, the bytearray's growth
    # slack raised the peak by 20 MiB and kept as much resident afterwards.
    parts: list[bytes] = []
    try:
        while chunk := await content.readany():
            deadline.last_read = clock()
            if arriving.held + len(chunk) > cap:
                raise _too_large(limit, cap)
            budget.take(arriving, len(chunk))
            parts.append(chunk)
    except BaseException as exc:
        # Free a refused or abandoned body now, not whenever the traceback that
        # references this frame is dropped.
        parts.clear()
        budget.abandon(arriving)
        if isinstance(exc, _BodyNotComing):
            if arriving.evicted:
                raise evicted_error() from None
            raise _timed_out(deadline.expired, limits, content.total_bytes, declared) from None
        raise
    finally:
        deadline.cancel()
    budget.finish(arriving)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _timed_out(
    expired: str | None, limits: Limits, received: int, declared: int | None
) -> RequestTimeout:
    if expired == "total":
        why = f"did not complete within {limits.client_body_total_timeout:g} s"
    else:
        why = f"stalled: no data for {limits.client_body_timeout:g} s"
    of = f" of {declared}" if declared is not None else ""
    return RequestTimeout(
        "request_timeout", f"the request body {why} ({received}{of} bytes received)"
    )


def _too_large(limit: int, cap: int) -> PayloadTooLarge:
    if cap == limit:
        why = f"this route's max_request_body_size ({limit} bytes)"
    else:
        why = f"the gateway can buffer for all requests together ({cap} bytes)"
    return PayloadTooLarge("request_too_large", f"the request body is larger than {why}")
