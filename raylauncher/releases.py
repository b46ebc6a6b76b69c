"""A release: everything the bastion runs a job with, named by its content hash.

`release_id(root, names, extra)` hashes the files under `root/<name>` (sorted, bytecode caches
left out) and the `extra` settings (JSON, keys sorted): the same content gives the same id on
any machine. The stack computes it over the bastion bundle, the driver's settings and the EC2
deployment as synthesized; local mode over the checkout's package, jobs and pipelines. The
Lambdas (and the local handlers) stamp it on every job they create (`Job.release`), so
`jobs show` and GET /jobs/{id} tell which code and settings a job was created under.

Not covered: values CloudFormation resolves at deploy time (the node image id from its SSM
parameter, the ids of created resources) enter only as the references the template holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: Length of a release id (hex digits of the SHA-256).
RELEASE_ID_LENGTH = 12
_SKIPPED = ("__pycache__", ".pyc", ".pyo")


def _files(root: Path, names: Iterable[str]) -> list[Path]:
    found = []
    for name in names:
        path = root / name
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        found += [p for p in candidates if not any(part.endswith(_SKIPPED) or part in _SKIPPED for part in p.parts)]
    return sorted(found)


def release_id(root: Path, names: Iterable[str], extra: Mapping[str, Any] | None = None) -> str:
    """The content hash of `root/<name>` for each name (file or folder) and of `extra`."""
    digest = hashlib.sha256()
    for path in _files(root, names):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:RELEASE_ID_LENGTH]
