"""`raylauncher doctor`: can this machine operate the target? One line per check."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from rich.text import Text

from raylauncher import PROJECT_DIR
from raylauncher.cli import exits, render
from raylauncher.cli.checks import Check
from raylauncher.cli.http import ApiClient, ApiError
from raylauncher.cli.stack_checks import stack_checks
from raylauncher.cli.targets import (
    REQUIRED_OUTPUTS,
    Target,
    TargetError,
    aws_session,
    chosen_stack,
    local_target,
    session_region,
    stack_outputs,
    stack_target,
)

TEMPLATE = PROJECT_DIR / "raylauncher" / "clusters" / "templates" / "cluster.yaml"
_PIN = re.compile(r"^ray(\[[^\]]*\])?==(?P<version>[0-9][0-9.]*)$")
_TEMPLATE_RAY = re.compile(r"\(Ray (?P<version>[0-9][0-9.]*)\)")


def ray_pins(pyproject: str, template: str, installed: str | None) -> Check:
    """The Ray the bastion installs (pyproject's `cluster` extra: the bastion bundle installs it,
    and the nodes get the bastion's Ray at `ray up`) against the release the cluster template
    is written for, and this machine's Ray if it has one."""
    pins = [m.group("version") for dep in tomllib.loads(pyproject)["project"]["optional-dependencies"]["cluster"]
            if (m := _PIN.match(dep.replace(" ", "")))]  # fmt: skip
    written_for = _TEMPLATE_RAY.search(template)
    if len(pins) != 1:
        return Check("ray pins", "fail", "pyproject.toml's `cluster` extra must pin ray exactly once (ray[...]==X.Y.Z)")
    pin = pins[0]
    if written_for is None:
        return Check("ray pins", "warn", f"bastion pins ray {pin}; the cluster template names no Ray release")
    if not (pin + ".").startswith(written_for.group("version") + "."):
        return Check("ray pins", "fail", f"bastion installs ray {pin} but the cluster template is written for "
                     f"Ray {written_for.group('version')}: update one of them and redeploy")  # fmt: skip
    detail = f"bastion and nodes: ray {pin}; cluster template: Ray {written_for.group('version')}"
    if installed and installed != pin:
        return Check("ray pins", "warn", detail + f"; this machine has ray {installed} (only the bastion's matters)")
    return Check("ray pins", "ok", detail)


def _ray_pins_here() -> Check:
    try:
        installed: str | None = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    try:
        return ray_pins((PROJECT_DIR / "pyproject.toml").read_text(), TEMPLATE.read_text(), installed)
    except OSError as err:
        return Check("ray pins", "skip", f"no checkout here to compare ({err.filename})")


def _api_check(target: Target) -> Check:
    try:
        ApiClient(target, timeout_s=10).list_jobs(limit=1)
    except ApiError as err:
        if err.status == 403:
            return Check("api", "fail", f"{target.api_url} refused the signed request ({err.message}): use a role "
                         "allowed execute-api:Invoke on it, e.g. the stack's OperatorRoleArn")  # fmt: skip
        return Check("api", "fail", str(err))
    return Check("api", "ok", f"{target.api_url} answers")


def run_checks(args: argparse.Namespace, which: Callable[[str], str | None] = shutil.which,
               ssm_client: Any = None, quota: Callable[[str], float | None] | None = None) -> list[Check]:  # fmt: skip
    """The checks for the target `args` names. `which` finds programs; `ssm_client` replaces the
    SSM client made from the session (tests: moto has no DescribeInstanceInformation), `quota`
    the Service Quotas reader (moto has no EC2 quotas)."""
    checks: list[Check] = []
    stack = chosen_stack(args.target, args.stack)
    if not stack:
        try:
            target = local_target()
        except TargetError as err:
            return [Check("local system", "fail", str(err)), _ray_pins_here()]
        checks.append(Check("local system", "ok", f"raylauncher serve: {target.api_url}"))
        checks.append(_api_check(target))
        checks.append(Check("session-manager-plugin", "skip", "not needed locally (dashboard prints a local URL)"))
        checks.append(_ray_pins_here())
        return checks

    session = aws_session(args.region)
    try:
        region = session_region(session)
    except TargetError as err:
        return [Check("aws credentials", "fail", str(err))]
    try:
        identity = session.create_client("sts", region_name=region).get_caller_identity()
        checks.append(Check("aws credentials", "ok", f"{identity['Arn']} in {region}"))
    except Exception as err:  # noqa: BLE001 - any failure here is the answer to this check
        return [Check("aws credentials", "fail", f"{type(err).__name__}: {err} (run `aws configure` or `aws sso login`)")]
    try:
        outputs = stack_outputs(session, region, stack)
    except TargetError as err:
        return [*checks, Check("stack", "fail", str(err))]
    missing = [k for k in (*REQUIRED_OUTPUTS, "OperatorRoleArn") if k not in outputs]
    checks.append(Check("stack", "fail" if set(missing) & set(REQUIRED_OUTPUTS) else "warn" if missing else "ok",
                        f"{stack}: " + (f"missing output(s) {', '.join(missing)}" if missing else
                                             f"outputs {', '.join(sorted(outputs))}")))  # fmt: skip
    if checks[-1].outcome == "fail":
        return checks
    target = stack_target(stack, region, session)
    checks.append(_api_check(target))
    ssm = ssm_client or session.create_client("ssm", region_name=region)
    checks.append(_bastion_check(ssm, str(target.bastion_id)))
    try:
        listed = ApiClient(target, timeout_s=10).pipelines()
        pipelines = listed["pipelines"]
        checks.append(Check("release", "ok" if listed.get("release") else "warn",
                            f"the API runs release {listed['release']}" if listed.get("release")
                            else "the API names no release (deployed before releases)"))  # fmt: skip
    except ApiError as err:
        checks.append(Check("vcpu quota", "skip", f"the API did not list the pipelines: {err}"))
        pipelines = []
    checks += stack_checks(session, region, stack, str(target.bastion_id), pipelines, quota)
    plugin = which("session-manager-plugin")
    checks.append(Check("session-manager-plugin", "ok" if plugin else "warn",
                        plugin or "not on PATH: `raylauncher dashboard` needs it; "
                        "https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html"))  # fmt: skip
    checks.append(_ray_pins_here())
    return checks


def _bastion_check(ssm: Any, instance_id: str) -> Check:
    try:
        infos = ssm.describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])["InstanceInformationList"]  # fmt: skip
    except Exception as err:  # noqa: BLE001
        return Check("bastion", "fail", f"cannot ask SSM about {instance_id}: {err}")
    if not infos:
        return Check("bastion", "fail", f"{instance_id} is not registered with SSM (agent not running, or no route to SSM)")
    ping = infos[0].get("PingStatus")
    if ping != "Online":
        return Check("bastion", "fail", f"{instance_id} is {ping} in SSM: jobs cannot launch until it is Online")
    return Check("bastion", "ok", f"{instance_id} Online in SSM (agent {infos[0].get('AgentVersion', '?')})")


def cmd_doctor(args: argparse.Namespace, **injected: Any) -> int:
    checks = run_checks(args, **injected)
    if args.output == "json":
        render.print_json([asdict(c) for c in checks])
    else:
        styles = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}
        console = render.stdout()
        for c in checks:
            console.print(Text.assemble((f"{c.outcome:<4}", styles[c.outcome]), f" {c.name:<24} {c.detail}"))
    return exits.ERROR if any(c.outcome == "fail" for c in checks) else exits.OK
