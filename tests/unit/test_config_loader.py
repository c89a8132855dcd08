"""Files and directories: discover() filtering, load_dir() isolation, digests, read errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from aigw.config import (
    ConfigDirectoryError,
    ConfigError,
    DirLoad,
    discover,
    load_dir,
    load_file,
)
from tests.unit.test_config import CANONICAL, ENV, edit


def route(name: str) -> str:
    return edit(
        ("name: azure-gpt-4o", f"name: {name}"),
        ("deployments/gpt-4o/chat", f"deployments/{name}/chat"),
    )


def test_discover_filters_and_sorts(tmp_path: Path) -> None:
    """Only *.yaml / *.yml regular files (or symlinks to them), by name, not recursive."""
    for name in (
        "b.yml",
        "a.yaml",
        "Z.yaml",
        ".hidden.yaml",
        "c.yaml~",
        "d.yaml.swp",
        ".d.yaml.swp",
        ".d.yaml.swx",
        "4913",
        "notes.txt",
        "yaml",
        "e.YAML",
    ):
        (tmp_path / name).write_text("x")
    # Kubernetes ConfigMap layout: name.yaml -> ..data/name.yaml -> ..2024_01_01/name.yaml
    (tmp_path / "..2024_01_01").mkdir()
    (tmp_path / "..2024_01_01" / "cm.yaml").write_text("x")
    (tmp_path / "..data").symlink_to("..2024_01_01")
    (tmp_path / "cm.yaml").symlink_to("..data/cm.yaml")
    (tmp_path / ".#a.yaml").symlink_to("user@host.1234")  # emacs lock: a dangling symlink
    (tmp_path / "broken.yaml").symlink_to("nowhere.yaml")
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.yaml").write_text("x")
    os.mkfifo(tmp_path / "fifo.yaml")  # must never be opened: reading would block
    assert [p.name for p in discover(tmp_path)] == ["Z.yaml", "a.yaml", "b.yml", "cm.yaml"]
    assert discover(tmp_path)[0] == tmp_path / "Z.yaml", "paths are built from the given dir"


def test_discover_empty_directory(tmp_path: Path) -> None:
    """An empty directory is not an error: the gateway serves nothing (and says so)."""
    assert discover(tmp_path) == []
    assert load_dir(tmp_path, ENV) == DirLoad((), ())


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda p: p / "missing", "directory does not exist", id="missing"),
        pytest.param(lambda p: p / "file", "not a directory", id="file"),
    ],
)
def test_unusable_directory_is_a_specific_error(make: object, reason: str, tmp_path: Path) -> None:
    """A missing directory is a ConfigDirectoryError (also a ConfigError), not an empty load."""
    (tmp_path / "file").write_text("x")
    assert callable(make)
    conf_dir = make(tmp_path)
    for call in (lambda: discover(conf_dir), lambda: load_dir(conf_dir, ENV)):
        with pytest.raises(ConfigDirectoryError) as caught:
            call()
        assert caught.value.directory == str(conf_dir)
        assert str(caught.value) == f"{conf_dir}: {reason}"
        assert isinstance(caught.value, ConfigError)


def test_unreadable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission problems name the OS reason."""

    def denied(path: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(ConfigDirectoryError, match="cannot read directory: Permission denied"):
        discover(tmp_path)


def test_load_dir_isolates_bad_files(tmp_path: Path) -> None:
    """Each file stands alone: broken ones are rejected with all their issues, the rest load."""
    (tmp_path / "a.yaml").write_text(route("a"))
    (tmp_path / "b.yaml").write_text(route("b").replace("header_value:", "header_vaule:"))
    (tmp_path / "c.yaml").write_text("route: [unclosed\n")
    (tmp_path / "d.yml").write_text(route("d"))
    (tmp_path / "e.yaml").write_text(route("e").replace("${AZURE_INSTANCE}", "${NOPE}"))
    loaded = load_dir(tmp_path, ENV)
    assert [f.route.name for f in loaded.accepted] == ["a", "d"]
    assert [Path(e.source).name for e in loaded.rejected] == ["b.yaml", "c.yaml", "e.yaml"]
    b, c, e = loaded.rejected
    assert [i.key_path.rsplit(".", 1)[-1] for i in b.issues] == ["header_value", "header_vaule"]
    assert c.issues[0].reason.startswith("invalid YAML")
    assert "`NOPE`" in e.issues[0].reason
    assert all(i.file == str(tmp_path / "b.yaml") for i in b.issues)


def test_load_dir_rejects_a_reused_route_name(tmp_path: Path) -> None:
    """Route names identify routes in logs; the later file (by name) is rejected."""
    (tmp_path / "1.yaml").write_text(route("same"))
    (tmp_path / "2.yaml").write_text(route("same").replace("/same/", "/other/"))
    loaded = load_dir(tmp_path, ENV)
    assert [Path(f.source).name for f in loaded.accepted] == ["1.yaml"]
    (error,) = loaded.rejected
    assert str(error) == (
        f"{tmp_path / '2.yaml'}: route.name: route name `same` is already used by "
        f"{tmp_path / '1.yaml'}"
    )


def test_load_dir_reports_a_file_that_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that vanishes or is unreadable after discover() is one rejected file."""
    (tmp_path / "a.yaml").write_text(route("a"))
    (tmp_path / "b.yaml").write_text(route("b"))
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "b.yaml":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    loaded = load_dir(tmp_path, ENV)
    assert [f.route.name for f in loaded.accepted] == ["a"]
    assert str(loaded.rejected[0]) == f"{tmp_path / 'b.yaml'}: cannot read file: Permission denied"


def test_load_file(tmp_path: Path) -> None:
    """load_file reads the bytes, keeps the path as given, and digests the raw bytes."""
    path = tmp_path / "r.yaml"
    path.write_text(CANONICAL)
    loaded = load_file(path, ENV)
    assert loaded.source == str(path)
    assert loaded.digest == hashlib.sha256(CANONICAL.encode()).hexdigest()
    path.write_text(CANONICAL + "# a comment changes the digest\n")
    assert load_file(path, ENV).digest != loaded.digest
    with pytest.raises(ConfigError, match="cannot read file: No such file or directory"):
        load_file(tmp_path / "missing.yaml", ENV)


def test_many_files_load_quickly(tmp_path: Path) -> None:
    """A large conf.d stays cheap to (re)load; the real measurement is bench/."""
    import time

    for index in range(200):
        (tmp_path / f"r{index:04}.yaml").write_text(route(f"r{index}"))
    started = time.perf_counter()
    loaded = load_dir(tmp_path, ENV)
    elapsed = time.perf_counter() - started
    assert len(loaded.accepted) == 200 and not loaded.rejected
    assert elapsed < 1.0, f"{elapsed:.3f}s for 200 files"
