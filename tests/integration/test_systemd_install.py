"""The systemd packaging: the unit passes systemd-analyze, and install.sh stages and removes it.

Nothing here needs systemd as PID 1: the unit is checked with systemd-analyze
(skipped where it is not installed), and install.sh runs against a DESTDIR.

SLOW: ``test_destdir_install_upgrade_uninstall`` creates a virtualenv and
pip-installs this checkout into it, dependencies included (about 20 s with a
warm pip cache, 30-60 s on a cold one; it needs the package index).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import aigw

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "aigw.service"
ENV_EXAMPLE = REPO / "systemd" / "aigw.env.example"
INSTALL = REPO / "systemd" / "install.sh"
EXEC_START = "/opt/aigw/venv/bin/aigw"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (not a systemd host)"
)


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    # cwd=/: from the checkout, `python -c "import aigw"` would find ./aigw
    # instead of the installed package.
    result = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd="/",
    )
    if check:
        assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def verify(unit_text: str, executable: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on *unit_text* with ExecStart pointing at *executable*.

    verify insists that ExecStart's binary exists and is executable, and
    ``--root`` would make it resolve /bin/kill and every target inside the root
    too, so the binary is the one thing rewritten.
    """
    assert EXEC_START in unit_text
    unit = workdir / "aigw.service"
    unit.write_text(unit_text.replace(EXEC_START, str(executable)))
    assert SYSTEMD_ANALYZE is not None
    return run(SYSTEMD_ANALYZE, "verify", unit, check=False)


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify_without_warnings(tmp_path: Path) -> None:
    stub = tmp_path / "aigw"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    assert_clean(verify(UNIT.read_text(), stub, tmp_path))


@needs_systemd_analyze
def test_unit_exposure_score_is_at_most_2() -> None:
    assert SYSTEMD_ANALYZE is not None
    # --threshold is on the 0-100 scale: 20 means fail above 2.0.
    result = run(SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20", UNIT)
    match = re.search(r"Overall exposure level for aigw\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= 2.0
    # The directives that matter most, in case the score model changes under us.
    for line in result.stdout.splitlines():
        if re.match(r"\W*(NoNewPrivileges|ProtectSystem|DynamicUser|SystemCallFilter)=", line):
            assert line.lstrip().startswith("✓"), line


def test_exec_start_uses_only_flags_that_aigw_serve_has() -> None:
    exec_start = next(
        line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")
    )
    flags = re.findall(r"\s(--[a-z-]+)", exec_start)
    assert flags == ["--conf-dir", "--listen", "--admin-listen", "--state-dir"]
    help_text = run(sys.executable, "-m", "aigw", "serve", "--help").stdout
    for flag in flags:
        assert flag in help_text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prefix", "opt/aigw"], "must be an absolute path"),
        (["--prefix", "/"], "must not be /"),
        (["--prefix", "/opt/my aigw"], "may only contain"),
        (["--frobnicate"], "unknown argument"),
    ],
)
def test_install_script_refuses_bad_arguments(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run(INSTALL, "--destdir", tmp_path, *args, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_uninstall_removes_only_a_venv_it_could_have_made(tmp_path: Path) -> None:
    # A mistyped --prefix pointing at someone's data must not be wiped.
    data = tmp_path / "srv" / "data"
    data.mkdir(parents=True)
    (data / "precious.txt").write_text("keep me")
    run(INSTALL, "--uninstall", "--destdir", tmp_path, "--prefix", "/srv/data")
    assert (data / "precious.txt").read_text() == "keep me"


def test_destdir_install_upgrade_uninstall(tmp_path: Path) -> None:
    """SLOW (pip install of the checkout): install, reinstall over local edits, uninstall."""
    root = tmp_path / "root"
    venv = root / "opt" / "aigw" / "venv"
    etc = root / "etc" / "aigw"
    unit = root / "etc" / "systemd" / "system" / "aigw.service"
    examples = sorted((REPO / "conf.d").glob("*.yaml"))
    assert examples

    first = run(INSTALL, "--destdir", root, "--python", sys.executable)
    assert "staged in" in first.stdout

    # The venv: a regular (not editable) install, its scripts aimed at the final path.
    script = venv / "bin" / "aigw"
    assert script.read_text().startswith("#!/opt/aigw/venv/bin/python\n")
    python = venv / "bin" / "python"
    assert run(python, script, "--version").stdout.strip() == f"aigw {aigw.__version__}"
    location = run(python, "-c", "import aigw; print(aigw.__file__)").stdout.strip()
    assert Path(location).is_relative_to(venv), location

    assert unit.read_text() == UNIT.read_text()  # default prefix: nothing substituted
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    for example in examples:
        installed = etc / "conf.d" / example.name
        assert installed.read_bytes() == example.read_bytes()
        assert stat.S_IMODE(installed.stat().st_mode) == 0o644
    env_file = etc / "aigw.env"
    assert env_file.read_text() == ENV_EXAMPLE.read_text()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    # The installed gateway accepts the installed example routes.
    env = {**os.environ, "AZURE_OPENAI_KEY": "k" * 32, "AZURE_INSTANCE": "example"}
    check = subprocess.run(
        [python, script, "check", "--conf-dir", etc / "conf.d"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert f"{len(examples)} route(s) accepted, 0 file(s) rejected" in check.stdout

    if SYSTEMD_ANALYZE is not None:
        assert_clean(verify(unit.read_text(), script, tmp_path))

    # The operator edits a route, deletes another and fills in the secrets;
    # a reinstall (an upgrade) keeps all of it.
    edited = etc / "conf.d" / examples[0].name
    edited.write_text(edited.read_text() + "# operator's edit\n")
    for example in examples[1:]:
        (etc / "conf.d" / example.name).unlink()
    env_file.write_text("AZURE_OPENAI_KEY=secret\n")
    unit_drop_in = unit.with_name("aigw.service.d")
    unit_drop_in.mkdir()
    (unit_drop_in / "override.conf").write_text("[Service]\nMemoryMax=2G\n")

    second = run(INSTALL, "--destdir", root, "--python", sys.executable)
    assert "already has routes, left as is" in second.stdout
    assert "aigw.env exists, left as is" in second.stdout
    assert edited.read_text().endswith("# operator's edit\n")
    assert sorted(p.name for p in (etc / "conf.d").iterdir()) == [examples[0].name]
    assert env_file.read_text() == "AZURE_OPENAI_KEY=secret\n"
    assert run(python, script, "--version").returncode == 0

    gone = run(INSTALL, "--uninstall", "--destdir", root)
    assert not unit.exists()
    assert not (root / "opt" / "aigw").exists()
    assert "kept" in gone.stdout
    assert edited.read_text().endswith("# operator's edit\n")
    assert env_file.read_text() == "AZURE_OPENAI_KEY=secret\n"
    assert (unit_drop_in / "override.conf").exists()  # the operator's, like /etc/aigw

    run(INSTALL, "--uninstall", "--destdir", root)  # idempotent
