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
)

__all__ = ["SAY_HELLO", "async_text_turn", "text_turn"]

SAY_HELLO: ConversationItemParam = {
    "type": "message",
    "role": "user",
    "content": [{"type": "input_text", "text": "Say hello"}],
}
"""The turn's user message."""


def text_turn(
    connection: RealtimeConnection, response: RealtimeResponseCreateParamsParam | Omit = omit
) -> tuple[str, RealtimeResponseUsage]:
    """One turn: the output text deltas joined, and the usage ``response.done`` reports."""
    connection.conversation.item.create(item=SAY_HELLO)
    connection.response.create(response=response)
    text = ""
    for event in connection:
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.done":
            usage = event.response.usage
            assert usage is not None
            return text, usage
    raise AssertionError("the session ended before response.done")


async def async_text_turn(
    connection: AsyncRealtimeConnection, response: RealtimeResponseCreateParamsParam | Omit = omit
) -> tuple[str, RealtimeResponseUsage]:
    """:func:`text_turn` on an async connection."""
    await connection.conversation.item.create(item=SAY_HELLO)
    await connection.response.create(response=response)
    text = ""
    async for event in connection:
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.done":
            usage = event.response.usage
            assert usage is not None
            return text, usage
    raise AssertionError("the session ended before response.done")
