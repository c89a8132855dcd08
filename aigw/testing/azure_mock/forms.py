"""Reading a ``multipart/form-data`` body as it streams in: text fields kept (bounded),
file parts only counted, so a 25 MiB upload never sits in the mock's memory."""

from __future__ import annotations

from typing import Final

from aiohttp import BodyPartReader, web

from .call import Form
from .payload import BadRequest

__all__ = ["read_form"]

_FIELD_LIMIT: Final = 64 * 1024
_PIECE: Final = 64 * 1024


async def read_form(request: web.Request) -> Form:
    """The form of *request*; a 400 (OpenAI's words) when it is not multipart."""
    content_type = request.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest(
            f"Invalid Content-Type header ({content_type or 'none'}), expected"
            " multipart/form-data. (HINT: If you're using curl, you can pass in"
            " `-F 'file=@file.xyz'` to send a file.)",
            None,
            None,
        )
    try:
        reader = await request.multipart()
        fields: dict[str, str] = {}
        files: dict[str, tuple[str, int]] = {}
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ValueError("nested multipart")
            name = part.name or ""
            if part.filename is not None:
                size = 0
                while piece := await part.read_chunk(_PIECE):
                    size += len(piece)
                _, before = files.get(name, ("", 0))
                files[name] = (part.filename, before + size)
                continue
            raw = await part.read_chunk(_FIELD_LIMIT + 1)
            if len(raw) > _FIELD_LIMIT or await part.read_chunk(1):
                raise ValueError(f"field {name!r} over {_FIELD_LIMIT} bytes")
            fields[name] = raw.decode("utf-8", "replace")
    except (ValueError, AssertionError) as exc:
        # aiohttp's reader asserts on some malformed bodies.
        raise BadRequest(f"Could not parse multipart form: {exc}", None, None) from None
    return Form(fields, files)
