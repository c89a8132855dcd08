"""Image generation (``/images/generations``, JSON) and edits (``/images/edits``,
multipart): dall-e-3 answers URLs or base64 with a revised prompt, gpt-image-1 base64
images with token ``usage``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from .call import Call
from .media_wire import image_body, image_usage
from .payload import BadRequest, count_tokens, positive_int

__all__ = ["edit", "generate"]

_DALLE_SIZES: Final = ("1024x1024", "1792x1024", "1024x1792")
_GPT_IMAGE_SIZES: Final = ("1024x1024", "1536x1024", "1024x1536", "auto")
_EDIT_FILES: Final = ("image", "image[]")


async def generate(call: Call, payload: Mapping[str, Any]) -> web.Response:
    """``/images/generations``."""
    return await _answer(call, payload, input_images=0)


async def edit(call: Call, payload: Mapping[str, Any]) -> web.Response:
    """``/images/edits``: the form's text fields are the payload; its files the images."""
    files = call.form.files if call.form is not None else {}
    images = sum(1 for name in files if name in _EDIT_FILES)
    if not images:
        raise BadRequest(
            "Missing required parameter: 'image'.", "image", "missing_required_parameter"
        )
    return await _answer(call, payload, input_images=images)


def _number(payload: Mapping[str, Any], key: str) -> int | None:
    # Form fields are strings; JSON gives numbers.
    value = payload.get(key)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return positive_int({key: value}, key)


async def _answer(call: Call, payload: Mapping[str, Any], *, input_images: int) -> web.Response:
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest(
            "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
        )
    gpt_image = call.deployment.model.lower().startswith("gpt-image")
    n = _number(payload, "n") or 1
    if not gpt_image and n != 1:
        raise BadRequest("You must provide n=1 for this model.", "n", "invalid_value")
    sizes = _GPT_IMAGE_SIZES if gpt_image else _DALLE_SIZES
    size = payload.get("size", sizes[0])
    if size not in sizes:
        raise BadRequest(
            f"Invalid value: '{size}'. Supported values are: "
            + ", ".join(f"'{s}'" for s in sizes)
            + ".",
            "size",
            "invalid_value",
        )
    response_format = payload.get("response_format", "url")
    if not gpt_image and response_format not in ("url", "b64_json"):
        raise BadRequest(
            f"Invalid value: '{response_format}'. Supported values are: 'url' and 'b64_json'.",
            "response_format",
            "invalid_value",
        )
    prompt_tokens = max(count_tokens(prompt), 1)
    usage = None
    if gpt_image:
        quality = str(payload.get("quality", "auto"))
        usage = image_usage(prompt_tokens, n, quality, input_images)
        call.deployment.spend(call.headers, usage["total_tokens"])
    else:
        call.deployment.spend(call.headers, 0)
    body = image_body(int(time.time()), prompt, n, b64=response_format == "b64_json", usage=usage)
    if call.latency_ms:
        await asyncio.sleep(call.latency_ms / 1000)
    return call.ok(body)
