"""The systemd packaging: the unit passes systemd-analyze, and install.sh stages and removes it.

Nothing here needs systemd as PID 1: the unit is checked with systemd-analyze
(skipped where it is not installed), and install.sh runs against a DESTDIR.

SLOW: ``test_destdir_install_upgrade_uninstall`` creates a virtualenv and
pip-installs a copy of this checkout into it, dependencies included (about 20 s
with a warm pip cache, 30-60 s on a cold one; it needs the package index). It
needs a system Python >= 3.11 with venv (outside /home and /root, as the
installer insists) and git.
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
# Where ProtectHome=yes hides an interpreter from the service.
HOME_DIRS = ("/home/", "/root/", "/run/user/")


def base_interpreter(python: str | Path) -> str:
    """The real path of the interpreter a venv made from *python* runs."""
    return run(
        python, "-c", "import os, sys; print(os.path.realpath(sys._base_executable))"
    ).stdout.strip()


def system_python() -> str | None:
    """A Python >= 3.11 with venv that the installer accepts, if this machine has one."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if not Path(candidate).exists():
            continue
        ok = run(
            candidate, "-c",
            "import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))",
            check=False,
        )  # fmt: skip
        if ok.returncode == 0 and not base_interpreter(candidate).startswith(HOME_DIRS):
            return candidate
    return None


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


def fake_pyenv_python(tmp_path: Path) -> Path:
    """An interpreter that answers the installer as a pyenv Python 3.12 in /home would."""
    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    python.write_text(
        "#!/bin/sh\n"
        'case "$*" in *realpath*)\n'
        "    echo /home/alice/.pyenv/versions/3.12.1/bin/python3.12\n"
        "    echo /home/alice/.pyenv/versions/3.12.1 ;;\n"
        "esac\n"
    )
    python.chmod(0o755)
    return python


def test_install_refuses_a_python_the_service_cannot_read(tmp_path: Path) -> None:
    python = fake_pyenv_python(tmp_path)
    root = tmp_path / "root"
    result = run(INSTALL, "--destdir", root, "--python", python, check=False)
    assert result.returncode == 1
    assert result.stderr == (
        f"install.sh: {python} runs from /home/alice/.pyenv/versions/3.12.1/bin/python3.12, "
        "which the service cannot read (the unit's ProtectHome=yes and DynamicUser=): "
        "use a system Python >= 3.11 instead, e.g. make install PYTHON=/usr/bin/python3 "
        "(or --python /usr/bin/python3)\n"
    )
    assert list(root.iterdir()) == []


@pytest.mark.skipif(
    not base_interpreter(sys.executable).startswith(HOME_DIRS),
    reason="the tests' own Python is not under /home or /root",
)
def test_install_refuses_a_venv_whose_base_python_is_under_home(tmp_path: Path) -> None:
    """The tests' venv made from pyenv: the venv's own path is fine, its base is not."""
    result = run(INSTALL, "--destdir", tmp_path, "--python", sys.executable, check=False)
    assert result.returncode == 1
    assert f"runs from {base_interpreter(sys.executable)}, which the service" in result.stderr


def test_make_install_passes_python_through() -> None:
    result = subprocess.run(
        ["make", "-n", "-C", str(REPO), "install", "PYTHON=/usr/bin/python3.12"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert '--python "/usr/bin/python3.12"' in result.stdout


def test_uninstall_removes_only_a_venv_it_could_have_made(tmp_path: Path) -> None:
    # A mistyped --prefix pointing at someone's data must not be wiped.
    data = tmp_path / "srv" / "data"
    data.mkdir(parents=True)
    (data / "precious.txt").write_text("keep me")
    run(INSTALL, "--uninstall", "--destdir", tmp_path, "--prefix", "/srv/data")
    assert (data / "precious.txt").read_text() == "keep me"


def git(cwd: Path, *args: str) -> str:
    return run(
        "git", "-C", cwd, "-c", "user.name=t", "-c", "user.email=t@example.com", *args
    ).stdout


def checkout_copy(tmp_path: Path) -> Path:
    """A git checkout of this project's installable files, with an untracked experiment."""
    src = tmp_path / "checkout"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "aigw", "systemd"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    (src / "conf.d").mkdir()
    for name in git(REPO, "ls-files", "conf.d").split():
        shutil.copy(REPO / name, src / name)
    git(src, "init", "-q")
    git(src, "add", ".")
    git(src, "commit", "-q", "-m", "copy")
    # What a user tries out in their checkout is not an example to install.
    (src / "conf.d" / "my-experiment.yaml").write_text("route: {name: mine}\n")
    (src / "conf.d" / "gpt-4o.yaml~").write_text("an editor's backup\n")
    return src


@pytest.mark.skipif(system_python() is None, reason="no system Python >= 3.11 with venv")
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_destdir_install_upgrade_uninstall(tmp_path: Path) -> None:
    """SLOW (pip install of the checkout): install, reinstall over local edits, uninstall."""
    base_python = system_python()
    assert base_python is not None
    src = checkout_copy(tmp_path)
    install = src / "systemd" / "install.sh"
    root = tmp_path / "root"
    venv = root / "opt" / "aigw" / "venv"
    etc = root / "etc" / "aigw"
    unit = root / "etc" / "systemd" / "system" / "aigw.service"
    examples = sorted(src / name for name in git(src, "ls-files", "conf.d").split())
    assert len(examples) >= 2
    # An operator's symlink to a config not mounted yet: never replaced.
    mounted = tmp_path / "mnt" / examples[0].name
    (etc / "conf.d").mkdir(parents=True)
    (etc / "conf.d" / examples[0].name).symlink_to(mounted)

    first = run(install, "--destdir", root, "--python", base_python)
    assert "staged in" in first.stdout
    assert (etc / "conf.d" / examples[0].name).readlink() == mounted
    assert sorted(p.name for p in (etc / "conf.d").iterdir()) == [p.name for p in examples]
    mounted.parent.mkdir()
    shutil.copy(examples[0], mounted)

    # The venv: a regular (not editable) install, its scripts aimed at the final path.
    script = venv / "bin" / "aigw"
    assert script.read_text().startswith("#!/opt/aigw/venv/bin/python\n")
    python = venv / "bin" / "python"
    assert run(python, script, "--version").stdout.strip() == f"aigw {aigw.__version__}"
    location = run(python, "-c", "import aigw; print(aigw.__file__)").stdout.strip()
    assert Path(location).is_relative_to(venv), location

    assert unit.read_text() == UNIT.read_text()  # default prefix: nothing substituted
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    for example in examples[1:]:
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

    # The operator replaces the link with an edited copy, deletes the other
    # routes and fills in the secrets; a reinstall (an upgrade) keeps all of it.
    edited = etc / "conf.d" / examples[0].name
    edited.unlink()
    shutil.copy(examples[0], edited)
    edited.write_text(edited.read_text() + "# operator's edit\n")
    for example in examples[1:]:
        (etc / "conf.d" / example.name).unlink()
    env_file.write_text("AZURE_OPENAI_KEY=secret\n")
    unit_drop_in = unit.with_name("aigw.service.d")
    unit_drop_in.mkdir()
    (unit_drop_in / "override.conf").write_text("[Service]\nMemoryMax=2G\n")

    second = run(install, "--destdir", root, "--python", base_python)
    assert "already has routes, left as is" in second.stdout
    assert "aigw.env exists, left as is" in second.stdout
    assert edited.read_text().endswith("# operator's edit\n")
    assert sorted(p.name for p in (etc / "conf.d").iterdir()) == [examples[0].name]
    assert env_file.read_text() == "AZURE_OPENAI_KEY=secret\n"
    assert run(python, script, "--version").returncode == 0

    gone = run(install, "--uninstall", "--destdir", root)
    assert not unit.exists()
    assert not (root / "opt" / "aigw").exists()
    assert "kept" in gone.stdout
    assert edited.read_text().endswith("# operator's edit\n")
    assert env_file.read_text() == "AZURE_OPENAI_KEY=secret\n"
    assert (unit_drop_in / "override.conf").exists()  # the operator's, like /etc/aigw

    run(install, "--uninstall", "--destdir", root)  # idempotent
