"""Finding and removing what stand-ins made: namespaces, bridge and veths (by name), node
processes (by namespace and by the marker variable), and their files. Only ever ours."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import psutil

from raylauncher.clusters.processes import is_ours
from raylauncher.local.ec2_standin.network import (
    BRIDGE_PREFIX,
    VETH_PREFIX,
    ip,
    namespace_pids,
    our_links,
    our_namespaces,
)
from raylauncher.local.ec2_standin.node import MARKER_ENV, kill_namespace_processes

_ID = re.compile(rf"^(?:{BRIDGE_PREFIX}|{VETH_PREFIX})([0-9a-f]{{5}})")


def _marked(standin_id: str | None = None) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            value = proc.environ().get(MARKER_ENV)
        except psutil.Error:
            continue
        if value is not None and (standin_id is None or value == standin_id):
            found.append(proc)
    return found


def leftovers(standin_id: str | None = None) -> list[str]:
    """One line per thing a stand-in made that still exists (all stand-ins when no id)."""
    lines = [f"network namespace {ns} (pids {namespace_pids(ns) or 'none'})" for ns in our_namespaces(standin_id)]
    lines += [f"link {name}" for name in our_links(standin_id)]
    for proc in _marked(standin_id):
        try:
            lines.append(f"process {proc.pid}: {' '.join(proc.cmdline())[:160]}")
        except psutil.Error:
            continue
    return lines


def remove_standin(standin_id: str, state_root: Path) -> None:
    """Kill every process of stand-in `standin_id`, delete its namespaces, links and files."""
    for ns in our_namespaces(standin_id):
        kill_namespace_processes(ns)
        ip("netns", "del", ns, check=False)
    for proc in _marked(standin_id):
        try:
            proc.kill()
        except psutil.Error:
            pass
    for name in our_links(standin_id):
        ip("link", "del", name, check=False)
    shutil.rmtree(state_root / standin_id, ignore_errors=True)


def _owner(state_root: Path, standin_id: str) -> dict[str, object]:
    try:
        owner = json.loads((state_root / standin_id / "owner.json").read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


#: A state dir younger than this without owner.json is a stand-in starting, not a dead one.
STARTING_GRACE_S = 60.0


def _owner_alive(state_root: Path, standin_id: str) -> bool:
    try:
        pid = int(_owner(state_root, standin_id)["pid"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        try:  # `start` writes owner.json right after making the dir: give it the time to
            return time.time() - (state_root / standin_id).stat().st_mtime < STARTING_GRACE_S
        except OSError:
            return False
    return psutil.pid_exists(pid) and pid != 0


def owner_checkout(state_root: Path, standin_id: str) -> str | None:
    """The checkout whose code started the stand-in (None: unknown, e.g. older code)."""
    checkout = _owner(state_root, standin_id).get("checkout")
    return checkout if isinstance(checkout, str) else None


def scoped_ids(state_root: Path) -> tuple[set[str], set[str], set[str]]:
    """Stand-ins by whose they are: (this checkout's and scope's, dead ones of another or no
    known checkout, live ones of another or no known checkout). The first two are safe to
    remove; the last belongs to someone running it now and must be left alone."""
    ours, dead, theirs = set(), set(), set()
    for standin_id in known_ids(state_root):
        if is_ours(owner_checkout(state_root, standin_id)):
            ours.add(standin_id)
        elif _owner_alive(state_root, standin_id):
            theirs.add(standin_id)
        else:
            dead.add(standin_id)
    return ours, dead, theirs


def known_ids(state_root: Path) -> set[str]:
    ids = {p.name for p in state_root.glob("*") if p.is_dir()} if state_root.is_dir() else set()
    for name in [*our_namespaces(), *our_links()]:
        match = _ID.match(name)
        if match:
            ids.add(match.group(1))
    for proc in _marked():
        try:
            ids.add(proc.environ()[MARKER_ENV])
        except (psutil.Error, KeyError):
            continue
    return ids


def remove_dead_standins(state_root: Path) -> list[str]:
    """Remove what stand-ins whose owner process is gone left behind (a crash, a SIGKILL)."""
    dead = sorted(i for i in known_ids(state_root) if not _owner_alive(state_root, i))
    for standin_id in dead:
        remove_standin(standin_id, state_root)
    return dead


def remove_all(state_root: Path) -> None:
    for standin_id in sorted(known_ids(state_root)):
        remove_standin(standin_id, state_root)
    if os.path.isdir(state_root) and not any(Path(state_root).iterdir()):
        os.rmdir(state_root)
