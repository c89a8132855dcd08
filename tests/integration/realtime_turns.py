"""One text turn of an openai SDK realtime session (sync and async), for the tests that
run one through aigw: a user message, ``response.create``, then the events up to
``response.done``."""

from __future__ import annotations

from openai import Omit, omit
from openai.resources.realtime.realtime import AsyncRealtimeConnection, RealtimeConnection
from openai.types.realtime import (
    ConversationItemParam,
    RealtimeResponseCreateParamsParam,
    RealtimeResponseUsage,
    RealtimeServerEvent,
)

__all__ = ["SAY_HELLO", "async_text_turn", "text_turn"]

SAY_HELLO: ConversationItemParam = {
    "type": "message",
    "role": "user",
    "content": [{"type": "input_text", "text": "Say hello"}],
}
"""The turn's user message."""


def _take(event: RealtimeServerEvent, text: list[str]) -> RealtimeResponseUsage | None:
    """A text delta goes into *text*; ``response.done`` gives its usage (the turn's end)."""
    if event.type == "response.output_text.delta":
        text.append(event.delta)
    elif event.type == "response.done":
        usage = event.response.usage
        assert usage is not None
        return usage
    return None


def text_turn(
    connection: RealtimeConnection, response: RealtimeResponseCreateParamsParam | Omit = omit
) -> tuple[str, RealtimeResponseUsage]:
    """One turn: the output text deltas joined, and the usage ``response.done`` reports."""
    connection.conversation.item.create(item=SAY_HELLO)
    connection.response.create(response=response)
    text: list[str] = []
    for event in connection:
        if (usage := _take(event, text)) is not None:
            return "".join(text), usage
    raise AssertionError("the session ended before response.done")


async def async_text_turn(
    connection: AsyncRealtimeConnection, response: RealtimeResponseCreateParamsParam | Omit = omit
) -> tuple[str, RealtimeResponseUsage]:
    """:func:`text_turn` on an async connection."""
    await connection.conversation.item.create(item=SAY_HELLO)
    await connection.response.create(response=response)
    text: list[str] = []
    async for event in connection:
        if (usage := _take(event, text)) is not None:
            return "".join(text), usage
    raise AssertionError("the session ended before response.done")
