"""Builds the CDK app: context from cdk.json, both configs validated, cdk-nag's AwsSolutions pack
attached. `app.py` calls this; so do the infrastructure tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from cdk.config import CONTEXT_KEY, load_deployment
from cdk.stack import RayLauncherStack

STACK_NAME = "RayLauncher"


def cdk_json_context(project_dir: Path) -> dict[str, Any]:
    return dict(json.loads((project_dir / "cdk.json").read_text(encoding="utf-8")).get("context", {}))


def build_app(
    project_dir: Path, *, context: dict[str, Any] | None = None, outdir: str | None = None
) -> tuple[cdk.App, RayLauncherStack]:
    """The app and its one stack. Raises ConfigError naming the bad field of cdk.json's
    `context.raylauncher` or of the pipelines file."""
    context = cdk_json_context(project_dir) if context is None else context
    app = cdk.App(context=context, outdir=outdir, analytics_reporting=False)
    # CDK CLI context (cdk.json, -c) wins over ours, as the CLI documents; read the merged value.
    config, pipelines = load_deployment(app.node.try_get_context(CONTEXT_KEY), project_dir)
    stack = RayLauncherStack(
        app, STACK_NAME, config=config, pipelines=pipelines, project_dir=project_dir,
        description="raylauncher: event-driven, ephemeral Ray clusters in a private VPC",
        env=cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION")),
    )  # fmt: skip
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack
