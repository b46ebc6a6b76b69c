"""What the stack ships, staged from this checkout at synth (no Docker, no pip, no network).

- Lambda code: `raylauncher/` (without the driver-side parts) + `lambdas/` + the pipelines as
  JSON. Powertools and pydantic come from the Powertools layer, boto3 from the runtime.
- Bastion bundle: the installable project (`pyproject.toml`, `raylauncher/`), `jobs/` and the
  pipelines as JSON; the bastion pip-installs it with its `cluster` extra (the pinned Ray).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from raylauncher.config import PipelinesConfig, pipelines_json

#: Where the pipelines land inside both bundles.
PIPELINES_JSON = "pipelines.json"
#: Driver-side code a Lambda never imports (it would pull in Ray or PyYAML).
LAMBDA_EXCLUDED = ("local", "clusters", "driver.py", "cli.py", "__main__.py")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def _write_pipelines(pipelines: PipelinesConfig, out: Path) -> None:
    (out / PIPELINES_JSON).write_text(pipelines_json(pipelines), encoding="utf-8")


def _staging_dir(kind: str) -> Path:
    """A fresh directory for one synth: CDK copies it into the cloud assembly; removed at exit."""
    out = Path(tempfile.mkdtemp(prefix=f"raylauncher-{kind}-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    return out


def stage_lambda_code(project_dir: Path, pipelines: PipelinesConfig) -> Path:
    out = _staging_dir("lambda")
    shutil.copytree(project_dir / "raylauncher", out / "raylauncher", ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", *LAMBDA_EXCLUDED))  # fmt: skip
    shutil.copytree(project_dir / "lambdas", out / "lambdas", ignore=_IGNORE)
    _write_pipelines(pipelines, out)
    return out


def stage_bastion_bundle(project_dir: Path, pipelines: PipelinesConfig) -> Path:
    out = _staging_dir("bastion")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(project_dir / name, out / name)
    for name in ("raylauncher", "jobs"):
        shutil.copytree(project_dir / name, out / name, ignore=_IGNORE)
    _write_pipelines(pipelines, out)
    return out
