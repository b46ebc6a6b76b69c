"""A release is named by its content: same files and settings, same id; any change, a new one."""

from __future__ import annotations

from pathlib import Path

from raylauncher.releases import RELEASE_ID_LENGTH, release_id


def project(root: Path) -> Path:
    (root / "jobs" / "a").mkdir(parents=True)
    (root / "jobs" / "a" / "main.py").write_text("print('a')\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root


def test_the_same_content_anywhere_is_the_same_release_and_any_change_is_a_new_one(tmp_path: Path) -> None:
    # Given two copies of one project, one with compiled bytecode beside its code
    one, two = project(tmp_path / "one"), project(tmp_path / "two")
    (two / "jobs" / "a" / "__pycache__").mkdir()
    (two / "jobs" / "a" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\x00bytecode")
    names, settings = ("pyproject.toml", "jobs"), {"driver": {"RAYLAUNCHER_TABLE": "t"}}
    # Then both are one release (bytecode caches do not count), named by 12 hex digits
    first = release_id(one, names, settings)
    assert first == release_id(two, names, settings) and len(first) == RELEASE_ID_LENGTH
    int(first, 16)
    # When a job's code, a file's name or a setting changes, Then it is another release
    (two / "jobs" / "a" / "main.py").write_text("print('b')\n")
    assert release_id(two, names, settings) != first
    (one / "jobs" / "a" / "main.py").rename(one / "jobs" / "a" / "other.py")
    assert release_id(one, names, settings) != first
    assert release_id(project(tmp_path / "three"), names, {"driver": {"RAYLAUNCHER_TABLE": "u"}}) != first
