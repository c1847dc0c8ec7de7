"""tests/helpers/gobuild.py: the cache key and the failure paths of the cached Go builds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import gobuild


def _module(tmp_path: Path) -> Path:
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "go.mod").write_text("module example.test/m\n\ngo 1.26\n")
    (mod / "go.sum").write_text("")
    (mod / "main.go").write_text("package main\n\nfunc main() {}\n")
    (mod / "README").write_text("not part of the key\n")
    return mod


def test_module_hash_follows_go_files_go_mod_and_go_sum(tmp_path: Path) -> None:
    mod = _module(tmp_path)
    first = gobuild.module_hash(mod)
    (mod / "README").write_text("changed\n")
    assert gobuild.module_hash(mod) == first
    for name, text in (("go.sum", "x h1:y=\n"), ("main.go", "package main\n"), ("go.mod", "")):
        before = gobuild.module_hash(mod)
        (mod / name).write_text(text)
        assert gobuild.module_hash(mod) != before, name


def test_cache_root_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(gobuild.GO_CACHE_ENV, str(tmp_path / "c"))
    assert gobuild.go_cache_root() == tmp_path / "c"
    env = gobuild.go_env()
    assert env["GOMODCACHE"] == str(tmp_path / "c" / "mod")
    assert env["GOCACHE"] == str(tmp_path / "c" / "build")
    assert "-mod=readonly" in env["GOFLAGS"].split()
    monkeypatch.delenv(gobuild.GO_CACHE_ENV)
    assert gobuild.go_cache_root() == gobuild.DEFAULT_GO_CACHE


def test_no_go_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(gobuild.GO_CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(gobuild, "go_executable", lambda: None)
    with pytest.raises(gobuild.GoBuildError, match="no Go toolchain"):
        gobuild.build_program("examples/go")


def test_a_failing_go_command_names_the_command_and_its_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "go"
    fake.write_text('#!/bin/sh\necho "go: reading module: 403 Forbidden" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv(gobuild.GO_CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(gobuild, "go_executable", lambda: str(fake))
    with pytest.raises(gobuild.GoBuildError) as err:
        gobuild.build_program("examples/go")
    assert "mod download" in str(err.value)
    assert "403 Forbidden" in str(err.value)
    assert not list((tmp_path / "cache" / "bin").glob("slinky-*"))


def test_a_cached_binary_is_reused_without_running_go(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(gobuild.GO_CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(gobuild, "go_executable", lambda: "/nonexistent/go")
    key = gobuild.module_hash(gobuild.ROOT / "examples" / "go")
    cached = tmp_path / "bin" / f"slinky-{key}"
    cached.parent.mkdir()
    cached.write_text("#!/bin/sh\n")
    cached.chmod(0o755)
    assert gobuild.build_program("examples/go") == cached
    assert os.access(cached, os.X_OK)


def test_main_refuses_an_unknown_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert gobuild.main(["examples/rust"]) == 2
    assert "unknown module" in capsys.readouterr().out
