"""CPU cost of a response head trickled one byte per read, for one or more aigw trees.

Issue 9, finding 7: a 63 KiB head arriving one byte at a time cost quadratic
CPU in aigw's own head parser (the buffer was rebuilt and rescanned on every
read). This feeds ``UpstreamConnection.data_received`` one byte per call, as
the event loop would for a one-byte-per-segment upstream, with a stand-in
transport (no socket: only the parser's own cost is measured), and prints
the process CPU time per head size. Linear cost: 4x the size, ~4x the time.

    .venv/bin/python bench/trickled_head.py                  # this tree
    .venv/bin/python bench/trickled_head.py /tmp/aigw-before .   # old vs new

Each tree runs in its own interpreter (``PYTHONPATH=<tree>``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SIZES = (16 * 1024, 32 * 1024, 63 * 1024)
ROUNDS = 3

_MEASURE = r"""
import asyncio, sys, time
import aigw
from aigw.upstream.connection import Origin, UpstreamConnection
print(f"# {aigw.__file__}")

class Transport:
    def write(self, data): pass
    def abort(self): pass
    def pause_reading(self): pass
    def resume_reading(self): pass
    def get_write_buffer_size(self): return 0
    def get_extra_info(self, name, default=None): return default

loop = asyncio.new_event_loop()
for size in [int(s) for s in sys.argv[1].split(",")]:
    start = b"HTTP/1.1 200 OK\r\nX-Big: "
    end = b"\r\nContent-Length: 2\r\n\r\n"
    head = start + b"a" * (size - len(start) - len(end)) + end
    pieces = [head[i : i + 1] for i in range(len(head))]
    best = None
    for _ in range(int(sys.argv[2])):
        conn = UpstreamConnection(Origin("http", "h", 80), loop)
        conn.connection_made(Transport())
        conn.start(b"GET / HTTP/1.1\r\n\r\n", head_request=False)
        began = time.process_time()
        for piece in pieces:
            conn.data_received(piece)
        spent = time.process_time() - began
        assert conn.head is not None and conn.head.status == 200, "head not parsed"
        best = spent if best is None else min(best, spent)
    print(f"{size // 1024:>3} KiB head, 1 byte per read: {best * 1000:8.1f} ms CPU "
          f"({best / len(pieces) * 1e6:.2f} us per read)")
"""


def main() -> None:
    trees = [Path(arg).resolve() for arg in sys.argv[1:]] or [Path(__file__).resolve().parents[1]]
    for tree in trees:
        subprocess.run(
            # -P: no current directory on sys.path, so PYTHONPATH decides.
            [sys.executable, "-P", "-c", _MEASURE, ",".join(map(str, SIZES)), str(ROUNDS)],
            env={"PYTHONPATH": str(tree)},
            check=True,
        )


if __name__ == "__main__":
    main()
