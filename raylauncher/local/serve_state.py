"""The state file `raylauncher serve` writes while it runs (`.local/state/serve.json`): where its
API listens. The operator CLI reads it to make `--target local` its default. Light on purpose
(stdlib only): the CLI imports it without moto or Ray."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from raylauncher import PROJECT_DIR

#: Overrides where the state file is (tests, or a second checkout's serve).
STATE_FILE_ENV = "RAYLAUNCHER_SERVE_STATE"
DEFAULT_STATE_FILE = PROJECT_DIR / ".local" / "state" / "serve.json"


@dataclass(frozen=True)
class ServeState:
    api_url: str
    pid: int
    bucket: str
    table: str
    region: str
    #: The local AWS (moto server) the system runs on: `raylauncher cluster-token --target local`
    #: reads a cluster's Ray token from its SSM. None in a file written before it was recorded.
    endpoint_url: str | None = None


def state_file(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    return Path(env.get(STATE_FILE_ENV) or DEFAULT_STATE_FILE)


def write_state(path: Path, state: ServeState) -> None:
    """Written whole or not at all (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_state(path: Path) -> ServeState | None:
    """The running serve's state, or None when there is none (no file, unreadable, or its
    process is gone: a serve killed with SIGKILL leaves the file behind)."""
    try:
        state = ServeState(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    return state if _alive(state.pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
