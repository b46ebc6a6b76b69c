"""The bastion's user data, run for real in a sandbox: the synthesized script with its paths
moved under a temp dir and the outside world (dnf, aws, curl to the instance metadata service,
unzip, python, systemctl) stubbed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.infrastructure.conftest import Synthesized, render

# pytest-xdist: one worker runs these tests (they share the synthesized stacks are made once per worker).
pytestmark = pytest.mark.xdist_group("cdk-synth")

ROOTS = ("/opt/raylauncher", "/etc/raylauncher", "/var/lib/raylauncher")
STUBS = {
    "dnf": 'echo "dnf $*" >> "$SANDBOX/calls"',
    # prints the fixture's units only when asked exactly as the installer must ask
    "systemctl": """echo "systemctl $*" >> "$SANDBOX/calls"
[ "$*" = "list-units --type=service --state=active,activating,deactivating,reloading --no-legend raylauncher-driver-*" ] \\
  && cat "$SANDBOX/driver-units" 2>/dev/null; true""",
    "aws": """echo "aws $*" >> "$SANDBOX/calls"
case "$1 $2" in
  "ssm get-parameter") [ -f "$SANDBOX/ssm-down" ] && exit 255; cat "$SANDBOX/params/$4" ;;
  "s3 cp") cp "$SANDBOX/bundle.zip" "$4" ;;
  "cloudformation signal-resource") ;;
  *) exit 2 ;;
esac""",
    # the instance metadata service (IMDSv2): a token for the PUT, the instance id for the GET
    "curl": """echo "curl $*" >> "$SANDBOX/calls"
[ -f "$SANDBOX/imds-down" ] && exit 7
case "$*" in
  *"-X PUT http://169.254.169.254/latest/api/token"*) echo imds-token ;;
  *"X-aws-ec2-metadata-token: imds-token"*"/latest/meta-data/instance-id") echo i-0sandbox ;;
  *) exit 22 ;;
esac""",
    "unzip": 'echo "unzip $*" >> "$SANDBOX/calls"; mkdir -p "${@: -1}"; touch "${@: -1}/pyproject.toml"',
    "python3.11": """echo "python3.11 $*" >> "$SANDBOX/calls"
venv="${@: -1}"; mkdir -p "$venv/bin"
printf '#!/bin/bash\\necho "pip $*" >> "$SANDBOX/calls"\\n' > "$venv/bin/pip"; chmod +x "$venv/bin/pip"
printf '#!/bin/bash\\necho raylauncher "$@"\\n' > "$venv/bin/raylauncher"; chmod +x "$venv/bin/raylauncher\"""",
}


class Sandbox:
    def __init__(self, s: Synthesized, root: Path) -> None:
        self.root = root
        instance = s.resource(s.stack.bastion.instance)
        script = render(instance["Properties"]["UserData"]["Fn::Base64"])
        for prefix in ROOTS:
            script = script.replace(prefix, str(root) + prefix)
        self.user_data = root / "user-data.sh"
        self.user_data.write_text(script)
        (root / "bin").mkdir()
        for name, body in STUBS.items():
            stub = root / "bin" / name
            stub.write_text(f"#!/bin/bash\n{body}\n")
            stub.chmod(0o755)
        (root / "params").mkdir()
        self.values = {}
        for name, param in s.stack.bastion.parameters.items():
            self.values[name] = render(s.resource(param)["Properties"]["Value"])
            (root / "params" / s.logical_id(param)).write_text(self.values[name] + "\n")
        (root / "bundle.zip").write_bytes(b"PK")
        self.env = {**os.environ, "PATH": f"{root / 'bin'}:{os.environ['PATH']}", "SANDBOX": str(root),
                    "RAYLAUNCHER_RETRY_DELAY_S": "0"}  # fmt: skip

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def run(self, *args: str, script: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(script or self.user_data), *args], env=self.env, capture_output=True,
                              text=True, check=False, timeout=60)  # fmt: skip

    def calls(self) -> list[str]:
        return self.path("calls").read_text().splitlines() if self.path("calls").exists() else []


@pytest.fixture
def sandbox(default_stack: Synthesized, tmp_path: Path) -> Sandbox:
    return Sandbox(default_stack, tmp_path)


def test_without_egress_the_image_s_ray_is_used_and_nothing_is_downloaded(existing_vpc_stack: Synthesized, tmp_path: Path) -> None:
    sandbox = Sandbox(existing_vpc_stack, tmp_path)
    # When an egress-less bastion boots (its image brings Python, setuptools and the pinned Ray)
    done = sandbox.run()
    # Then only our package is installed, into a venv that sees the image's packages
    assert done.returncode == 0, done.stderr
    calls = sandbox.calls()
    assert not [c for c in calls if c.startswith("dnf")]
    assert f"python3.11 -m venv --system-site-packages {sandbox.path('/opt/raylauncher/venv')}" in calls
    assert f"pip install --no-index --no-deps --no-build-isolation {sandbox.path('/opt/raylauncher/app')}" in calls


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_boot_installs_the_deployment(sandbox: Sandbox) -> None:
    # When the instance boots with the synthesized user data
    done = sandbox.run()
    # Then it succeeded and wrote an executable installer and ran it
    assert done.returncode == 0, done.stderr
    installer = sandbox.path("/opt/raylauncher/install.sh")
    assert mode(installer) == 0o755
    # And the driver settings and the EC2 deployment are the stack's parameters, the env file private
    env_file = sandbox.path("/etc/raylauncher/env")
    assert env_file.read_text() == sandbox.values["env"].rstrip("\n") + "\n" and mode(env_file) == 0o600
    deployment = json.loads(sandbox.path("/etc/raylauncher/ec2-deployment.json").read_text())
    assert deployment == json.loads(sandbox.values["ec2_deployment"])
    # And the bundle named by its parameter was installed with its cluster extra into a venv
    calls = sandbox.calls()
    assert f"aws s3 cp {sandbox.values['bundle']} {sandbox.path('/opt/raylauncher/bundle.zip')}" in calls
    assert f"pip install --quiet {sandbox.path('/opt/raylauncher/app')}[cluster]" in calls
    assert calls[0].startswith("dnf install")
    # And the launcher the SSM command runs reads the env file, then runs the venv's raylauncher
    launcher = sandbox.path("/opt/raylauncher/bin/raylauncher")
    assert mode(launcher) == 0o755
    ran = subprocess.run([str(launcher), "driver", "start", "x"], env=sandbox.env, capture_output=True, text=True, check=False)
    assert ran.returncode == 0 and ran.stdout.strip() == "raylauncher driver start x", ran.stderr


def signals(sandbox: Sandbox) -> list[str]:
    return [c for c in sandbox.calls() if c.startswith("aws cloudformation signal-resource")]


def test_the_stack_waits_for_the_install_and_hears_whether_it_succeeded(default_stack: Synthesized, sandbox: Sandbox) -> None:
    # Given the bastion instance: CloudFormation waits for one signal before CREATE_COMPLETE
    instance_id = default_stack.logical_id(default_stack.stack.bastion.instance)
    policy = default_stack.template_json["Resources"][instance_id]["CreationPolicy"]
    assert policy == {"ResourceSignal": {"Count": 1, "Timeout": "PT30M"}}
    # When the first boot's install succeeds
    assert sandbox.run().returncode == 0
    # Then the user data signalled SUCCESS for this instance of this stack, with IMDSv2's instance id
    assert signals(sandbox) == [
        f"aws cloudformation signal-resource --region eu-west-1 --stack-name AWS::StackName --logical-resource-id "
        f"{instance_id} --unique-id i-0sandbox --status SUCCESS"
    ]


def test_the_signal_is_sent_even_when_the_metadata_service_does_not_answer(sandbox: Sandbox) -> None:
    # Given an instance whose metadata service does not answer (curl fails inside the exit trap)
    sandbox.path("imds-down").write_text("")
    sandbox.path("ssm-down").write_text("")
    # When the install fails
    done = sandbox.run()
    # Then CloudFormation still hears FAILURE (another unique id will do), and the exit code is kept
    assert done.returncode != 0 and done.returncode != 7
    assert [c.rsplit(" ", 1)[-1] for c in signals(sandbox)] == ["FAILURE"]


def test_a_failed_install_fails_the_stack_instead_of_leaving_a_broken_bastion(sandbox: Sandbox) -> None:
    # Given SSM that cannot be reached at first boot
    sandbox.path("ssm-down").write_text("")
    # When the instance boots
    done = sandbox.run()
    # Then the install failed, and CloudFormation heard so (the stack rolls back, no job reaches it)
    assert done.returncode != 0
    assert [c.rsplit(" ", 1)[-1] for c in signals(sandbox)] == ["FAILURE"]


def test_the_bastion_may_signal_this_stack_only_and_reach_cloudformation_without_internet(
    default_stack: Synthesized,
) -> None:
    from tests.iam_contract import contract_roles, stack_documents
    from tests.iam_eval import ALLOWED, IMPLICIT_DENY, evaluate

    documents = stack_documents(default_stack.template_json, contract_roles(default_stack)["bastion"])

    def signal(stack: str) -> str:
        arn = f"arn:aws:cloudformation:eu-west-1:123456789012:stack/{stack}/0f1e2d3c-aaaa-bbbb-cccc-000000000000"
        return evaluate(documents, "cloudformation:SignalResource", arn, {}, render)

    assert signal("AWS::StackName") == ALLOWED  # render() shows the stack's own name as its Ref
    assert signal("SomeoneElsesStack") == IMPLICIT_DENY
    endpoints = default_stack.resources("AWS::EC2::VPCEndpoint").values()
    assert any(render(e["Properties"]["ServiceName"]).endswith(".cloudformation") for e in endpoints)


def test_rerun_refuses_while_drivers_run_and_keeps_files_whole_when_ssm_fails(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    installer = sandbox.path("/opt/raylauncher/install.sh")
    env_before = sandbox.path("/etc/raylauncher/env").read_text()
    # Given a driver stopping on the bastion (SIGTERM received, its `ray down` still running)
    sandbox.path("driver-units").write_text("raylauncher-driver-x.service loaded deactivating stop-sigterm\n")
    # When the installer is run again
    refused = sandbox.run(script=installer)
    # Then it refuses (its venv holds the running driver's `ray down`) and changes nothing
    assert refused.returncode == 3 and "drivers are running" in refused.stderr
    assert sandbox.path("/opt/raylauncher/venv/bin/pip").exists()
    # When it is forced while SSM cannot be reached
    sandbox.path("ssm-down").write_text("")
    failed = sandbox.run("--force", script=installer)
    # Then it fails after its retries and the settings files are still whole
    assert failed.returncode != 0
    assert sandbox.path("/etc/raylauncher/env").read_text() == env_before
    assert not list(sandbox.path("/etc/raylauncher").glob("env.*"))  # no temp file left behind
