"""Tests marked with one `xdist_group` run on one worker under `--dist loadgroup`, so that what
they share (a module's stand-in, a synthesized template, a Ray head) is built once. pytest 9.2
broke pytest-xdist's way of marking them (tests/xdist_groups.py); this runs a small suite of
its own in parallel and looks where each test ran."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]

CONFTEST = f"""
import os, sys
sys.path.insert(0, {str(PROJECT_DIR)!r})
from tests.xdist_groups import pytest_collection_modifyitems  # noqa: F401


def pytest_runtest_call(item):
    with open(os.path.join({{ran!r}}, item.name), "w") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"])
"""

MODULE = "import pytest\nSHARED = pytest.mark.xdist_group('shared')\n" + "".join(
    f"\n@SHARED\ndef test_grouped_{i}():\n    pass\n\ndef test_alone_{i}():\n    pass\n" for i in range(8)
)


def test_tests_of_one_group_run_on_one_worker(tmp_path: Path) -> None:
    # Given a suite whose eight grouped tests are interleaved with eight ungrouped ones
    suite, ran = tmp_path / "suite", tmp_path / "ran"
    suite.mkdir()
    ran.mkdir()
    (suite / "conftest.py").write_text(CONFTEST.format(ran=str(ran)))
    (suite / "test_groups.py").write_text(MODULE)
    # When it runs on three workers with --dist loadgroup
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "3", "--dist", "loadgroup", "-q", "-p", "no:cacheprovider", str(suite)],
        cwd=suite, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # Then every grouped test ran on the same worker; the others went wherever there was room
    workers = {path.name: path.read_text() for path in ran.iterdir()}
    assert len(workers) == 16, workers
    assert len({w for name, w in workers.items() if name.startswith("test_grouped_")}) == 1, workers
