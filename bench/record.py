"""What every bench writes next to its figures: the machine and the code they were measured on.

``write_result(name, document)`` adds ``machine`` and writes ``bench/results/<name>.json``;
``bench/report.py`` turns those files into the table of ``bench/README.md``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout.strip()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def machine() -> dict[str, Any]:
    """Cores, memory, Python, Ray and pyarrow versions, and the commit (``dirty``: with
    uncommitted changes to tracked files other than the bench's own results and report, which
    an earlier bench of the same `make bench` has just rewritten; so the figures may not be
    that commit's)."""
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "ray": _version("ray"),
        "pyarrow": _version("pyarrow"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".",
                           ":(exclude)bench/results", ":(exclude)bench/README.md")),
    }


def write_result(name: str, document: dict[str, Any]) -> Path:
    """Write ``document`` plus ``machine`` to ``bench/results/<name>.json``; return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{name}.json"
    out.write_text(json.dumps({"bench": name, **document, "machine": machine()}, indent=1) + "\n")
    print(f"written to {out.relative_to(REPO_ROOT)}")
    return out
