"""The short form of a request id that ``aigw tail`` shows.

A whole id is 32 characters or more, too wide for a column, so a part of it is
shown. Which part matters: aigw's own ids (``aigw/chain/request_id.py``) are
24 hex digits of a random per-process prefix followed by an 8-digit counter,
so their first characters are the same on every line a process writes. The
part shown is therefore the *end* of the id:

- for aigw's ids, the last 4 hex digits of the process prefix and the 8 of the
  counter: different for every request of a process, and (16 random bits)
  almost always different between processes, such as the workers of
  ``--workers N`` or the processes before and after a restart in one journal;
- for client-supplied ids, whatever the client sent ends the same way: its
  counters (``req-000123``) and the random part of a UUID4 or UUID7 (the last
  12 hex digits) are at the end. The one common exception is a UUID1, whose
  last 12 digits name the host; its first 8 (the low bits of its clock) differ
  between requests and are shown instead.

The short form is always one contiguous piece of the id, so it can be pasted
into ``grep`` over the raw log or searched for in a client's own log.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["SHORT_ID_LENGTH", "short_request_id"]

SHORT_ID_LENGTH: Final = 12
"""Characters shown; an id this short or shorter is shown whole."""

# A UUID version 1 (time-based): 8-4-4-4-12 hex digits with the version digit 1.
_UUID1: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-1[0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def short_request_id(request_id: str) -> str:
    """The part of *request_id* that tells requests apart, at most 12 characters."""
    if len(request_id) <= SHORT_ID_LENGTH:
        return request_id
    if _UUID1.fullmatch(request_id):
        return request_id[:8]
    return request_id[-SHORT_ID_LENGTH:]
