"""The seed how-to's validation script, verbatim, against aigw on localhost:8000."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import GATEWAY_ENV
from tests.integration.harness import REPO, GatewayProcess, MockProcess

SEED = REPO.parent / "shared" / "seed" / "route-azure-sdk-to-specific-deployments.md"
SCRIPT_COPY = REPO / "tests" / "integration" / "seed_script.py"


def seed_script() -> str:
    """The script from the seed page when it is beside the repo, else our copy of it."""
    if SEED.exists():
        text = SEED.read_text()
        match = re.search(r"cat <<EOF > test_azure_multi_route.py\n(.*?)\nEOF", text, re.S)
        assert match, "the seed page no longer has its validation script"
        return match.group(1)
    return SCRIPT_COPY.read_text()


def test_our_copy_matches_the_seed() -> None:
    if not SEED.exists():
        pytest.skip("the seed page is not beside this checkout")
    assert seed_script().strip() == SCRIPT_COPY.read_text().strip()


def _port_8000_free() -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", 8000)) != 0


@pytest.fixture
def gateway_on_8000(mock: MockProcess) -> Iterator[GatewayProcess]:
    if not _port_8000_free():
        pytest.fail("the seed script needs localhost:8000 and something else is listening there")
    process = GatewayProcess(
        REPO / "conf.d",
        "--azure-base-url",
        mock.url,
        env=GATEWAY_ENV,
        listen="127.0.0.1:8000",
    )
    yield process
    process.close()


def test_seed_script_verbatim(
    gateway_on_8000: GatewayProcess, mock: MockProcess, tmp_path: Path
) -> None:
    script = tmp_path / "test_azure_multi_route.py"
    script.write_text(seed_script())
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Requested: gpt-4o, Got: gpt-4o-2024-11-20",
        "Requested: gpt-4.1-mini, Got: gpt-4.1-mini-2025-04-14",
    ]
    assert [r["path"] for r in mock.requests()] == [
        "/openai/deployments/gpt-4o/chat/completions",
        "/openai/deployments/gpt-4.1-mini/chat/completions",
    ]
