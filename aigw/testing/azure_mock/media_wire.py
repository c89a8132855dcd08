"""Byte-level formats of the media APIs: image generation bodies (dall-e-3 and
gpt-image-1 shapes), a real PNG to put in them, and generated speech bytes."""

from __future__ import annotations

import base64
import hashlib
import struct
import uuid
import zlib
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any, Final

from .wire import PROMPT_FILTER_RESULTS, dumps

__all__ = [
    "AUDIO_CONTENT_TYPES",
    "image_body",
    "image_usage",
    "png_b64",
    "speech_chunks",
]

_SAFE: Final = {"filtered": False, "severity": "safe"}
_IMAGE_FILTER_RESULTS: Final = {
    "hate": _SAFE,
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}
# gpt-image-1's output tokens per image by quality (OpenAI's pricing table, 1024x1024).
_IMAGE_TOKENS: Final = {"low": 272, "medium": 1056, "high": 4160, "auto": 1056}
#: Input image tokens per image given to an edit.
EDIT_IMAGE_TOKENS: Final = 194

#: ``response_format`` -> the Content-Type the service sends.
AUDIO_CONTENT_TYPES: Final = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
_AUDIO_MAGIC: Final = {
    "mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00",
    "opus": b"OggS\x00\x02",
    "aac": b"\xff\xf1\x50\x80",
    "flac": b"fLaC",
    "wav": b"RIFF\xff\xff\xff\xffWAVEfmt ",
    "pcm": b"",
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def png_b64() -> str:
    """A valid 1x1 PNG, base64: what ``b64_json`` carries."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x10\x7f\xc0")
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels)
    return base64.b64encode(png + _png_chunk(b"IEND", b"")).decode()


def _dalle_item(prompt: str, b64: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "content_filter_results": _IMAGE_FILTER_RESULTS,
        "prompt_filter_results": PROMPT_FILTER_RESULTS[0]["content_filter_results"],
        "revised_prompt": f"A detailed rendering of: {prompt}",
    }
    if b64:
        item["b64_json"] = png_b64()
    else:
        item["url"] = (
            f"https://dalleprodsec.blob.core.windows.net/private/images/{uuid.uuid4()}"
            "/generated_00.png?se=2026-01-01T00%3A00%3A00Z&sig=mock&ske=2026-01-01&skv=2020-10-02"
        )
    return dict(sorted(item.items()))


def image_usage(prompt_tokens: int, images: int, quality: str, input_images: int) -> dict[str, Any]:
    """gpt-image-1's ``usage``: text and image tokens in, image tokens out."""
    image_tokens = input_images * EDIT_IMAGE_TOKENS
    output_tokens = images * _IMAGE_TOKENS.get(quality, _IMAGE_TOKENS["auto"])
    input_tokens = prompt_tokens + image_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"image_tokens": image_tokens, "text_tokens": prompt_tokens},
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def image_body(
    created: int, prompt: str, n: int, *, b64: bool, usage: dict[str, Any] | None
) -> bytes:
    """``{created, data}`` with *n* images; gpt-image-1 (*usage* given) answers bare
    base64 items, dall-e-3 items with ``revised_prompt`` and filter results."""
    data: Sequence[dict[str, Any]]
    if usage is not None:
        data = [{"b64_json": png_b64()} for _ in range(n)]
        return dumps({"created": created, "data": data, "usage": usage})
    data = [_dalle_item(prompt, b64) for _ in range(n)]
    return dumps({"created": created, "data": data})


def speech_chunks(fmt: str, text: str, size: int, chunk: int) -> Iterator[bytes]:
    """*size* bytes of "audio" for *text*, in pieces of *chunk*: the format's magic
    bytes, then a pattern derived from the text (equal inputs sound equal)."""
    pattern = hashlib.shake_256(text.encode()).digest(4096)
    block = (pattern * (chunk // len(pattern) + 2))[: chunk + len(pattern)]
    head = _AUDIO_MAGIC[fmt]
    sent = 0
    while sent < size:
        piece = min(chunk, size - sent)
        offset = sent % len(pattern)
        data = block[offset : offset + piece]
        if sent == 0 and head:
            data = (head + data)[:piece]
        sent += piece
        yield data
