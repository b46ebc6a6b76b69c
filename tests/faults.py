"""The fault table: every fault scenario of the suite adds one row from what its run measured;
at the end of the session the rows are written to docs/faults.md (and docs/faults.json, from
which rows of scenarios not run this time are kept, marked with the run they come from).

A row: the terminal state and reason the job ended with, its attempts, how long the cluster
stayed up after the fault, the clusters left afterwards, input objects lost and processed twice.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
JSON_PATH = PROJECT_DIR / "docs" / "faults.json"
MD_PATH = PROJECT_DIR / "docs" / "faults.md"


@dataclass
class FaultRow:
    scenario: str
    backend: str  # "local" (local Ray), "ec2 stand-in", "moto" (no cluster), "in memory"
    terminal_state: str
    reason: str
    attempts: int
    cluster_seconds_after_fault: float | None  # None: no cluster existed when the fault hit
    clusters_left: int
    objects_lost: int
    objects_processed_twice: int
    run: str = ""  # when and at which commit the row was measured

    @property
    def key(self) -> str:
        return f"{self.scenario} [{self.backend}]"


_ROWS: list[FaultRow] = []


def record(row: FaultRow) -> FaultRow:
    """Add a measured row (called by the scenario's test, after its assertions)."""
    _ROWS.append(row)
    return row


def export() -> list[dict[str, object]]:
    """This worker's rows, for the controller (pytest-xdist) to write."""
    return [json.loads(json.dumps(asdict(r))) for r in _ROWS]  # plain values: execnet sends no enums


def merge(rows: list[dict[str, object]]) -> None:
    """Rows a worker measured (the controller writes the table)."""
    _ROWS.extend(FaultRow(**r) for r in rows)  # type: ignore[arg-type]


def input_accounting(uploaded: list[str], manifests: dict[str, list[str]], succeeded: set[str]) -> tuple[int, int]:
    """(lost, processed twice): uploaded inputs in no job's manifest at all (dropped: no job, no
    reason), and inputs in the manifests of more than one succeeded job. `manifests`: job id ->
    the inputs its manifest names (key or key@version)."""
    named = {key for keys in manifests.values() for key in keys}
    counts: dict[str, int] = {}
    for job_id, keys in manifests.items():
        if job_id in succeeded:
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
    return sum(1 for k in uploaded if k not in named), sum(1 for c in counts.values() if c > 1)


def manifest_inputs(manifest: dict) -> list[str]:  # type: ignore[type-arg]
    """Every write a manifest accounts for, as key@version (key@sequencer when unversioned):
    the objects it reads, and the older writes it recorded as superseded by them."""
    return [f"{o['key']}@{o.get('version_id') or o.get('sequencer')}"
            for o in manifest["objects"] + manifest.get("superseded", [])]  # fmt: skip


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_DIR, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "?"


def write_table(footer: str = "") -> None:
    """Merge this session's rows into docs/faults.json and render docs/faults.md (`footer`: the
    session's secrets-scan summary, kept with the run it comes from)."""
    if not _ROWS:
        return
    run = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC @ {_commit()}"
    try:
        kept = {r["scenario"] + " [" + r["backend"] + "]": FaultRow(**r) for r in json.loads(JSON_PATH.read_text())}
    except (OSError, ValueError, TypeError):
        kept = {}
    for row in _ROWS:
        row.run = run
        kept[row.key] = row
    rows = sorted(kept.values(), key=lambda r: (r.backend, r.scenario))
    JSON_PATH.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n", encoding="utf-8")
    lines = [
        "# Fault table",
        "",
        "Written by the test suite from its own runs (`tests/faults.py`): each row is one fault",
        "scenario as a test drove it, with what it measured. Rows of scenarios not run in the last",
        "session keep the run they come from. The promise: 0 clusters left, 0 objects lost,",
        "0 processed twice, and a reason on every failed job.",
        "",
        "| scenario | backend | terminal state | reason | attempts | cluster s after the fault | clusters left | objects lost | processed twice | run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        after = "–" if r.cluster_seconds_after_fault is None else f"{r.cluster_seconds_after_fault:.1f}"
        lines.append(f"| {r.scenario} | {r.backend} | {r.terminal_state} | {r.reason or '–'} | {r.attempts} | "
                     f"{after} | {r.clusters_left} | {r.objects_lost} | {r.objects_processed_twice} | {r.run} |")  # fmt: skip
    if footer:
        lines += ["", f"{footer} ({run})"]
    MD_PATH.write_text("\n".join(lines) + "\n", encoding="utf-8")
