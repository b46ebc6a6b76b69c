"""The temp dirs of local clusters (`/tmp/rl-*`: Ray's sockets and session logs): one per
cluster, marked with the attempt and the checkout (and scope) whose code made it, removed once
the cluster is verified gone — by its driver, or by the watchdog that took the attempt over
from a dead driver (which may have died before it recorded the dir) — and found by the
leftovers check when nobody removed them."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import psutil

from raylauncher.clusters.processes import checkout_id, is_ours

#: Prefix of every local cluster's temp dir (short: Ray's unix sockets live under it).
TEMP_DIR_PREFIX = "rl-"
TEMP_ROOT = Path("/tmp")
#: A file in the temp dir: {"checkout": checkout_id(), "run_id": the attempt's run id}.
OWNER_FILE = "raylauncher-owner.json"


def make_temp_dir(run_id: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=TEMP_DIR_PREFIX, dir=TEMP_ROOT))
    (path / OWNER_FILE).write_text(json.dumps({"checkout": checkout_id(), "run_id": run_id}), encoding="utf-8")
    return path


def _owner(path: Path) -> dict[str, str]:
    try:
        owner = json.loads((path / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def our_temp_dirs(run_id: str | None = None) -> list[Path]:
    """Temp dirs of our local clusters (of one attempt, given `run_id`)."""
    found = []
    for path in TEMP_ROOT.glob(f"{TEMP_DIR_PREFIX}*"):
        owner = _owner(path)
        if is_ours(owner.get("checkout")) and (run_id is None or owner.get("run_id") == run_id):
            found.append(path)
    return sorted(found)


def remove_temp_dirs(run_id: str) -> list[Path]:
    """Remove the temp dirs of attempt `run_id` (call once its processes are gone); returns
    those that could not be removed."""
    for path in our_temp_dirs(run_id):
        shutil.rmtree(path, ignore_errors=True)
    return our_temp_dirs(run_id)


def leftover_temp_dirs(live: Iterable[psutil.Process]) -> list[Path]:
    """Our temp dirs that no live process of ours (`live`) runs in: their cluster is gone."""
    in_use = []
    for proc in live:
        try:
            in_use.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    return [p for p in our_temp_dirs() if not any(str(p) in line for line in in_use)]


def remove_leftover_temp_dirs(live: Iterable[psutil.Process]) -> list[Path]:
    """Remove what `leftover_temp_dirs` finds; returns what is still there."""
    for path in leftover_temp_dirs(live):
        shutil.rmtree(path, ignore_errors=True)
    return [p for p in leftover_temp_dirs(live) if p.exists()]
