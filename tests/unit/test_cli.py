"""The command line's pure parts: arguments, rendering, the Ray pin check, and that the bastion's
`raylauncher driver …` never needs the terminal UI."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from rich.console import Console

from raylauncher.cli import build_parser, commands, exits, main, render, tokens
from raylauncher.cli.http import ApiError
from raylauncher.cli.targets import Target, TargetError
from raylauncher.cli.arguments import param_value, since_time, since_value
from raylauncher.cli.doctor import ray_pins

PYPROJECT = '[project]\nname = "x"\n[project.optional-dependencies]\ncluster = ["ray[default,data]==2.60.0", "pyarrow>=14"]\n'


def test_building_the_parser_imports_no_terminal_ui() -> None:
    # Given the bastion, which installs the `cluster` extra only (no rich)
    code = "import sys; from raylauncher.cli import build_parser; build_parser().parse_args(['driver', 'run', 'abc-def']);" \
           "assert not [m for m in sys.modules if m == 'rich' or m.startswith('rich.')], 'rich imported'"  # fmt: skip
    # Then parsing a driver command loads no rich
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False).returncode == 0


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found += subcommands(sub, (*prefix, name))
    return found


def test_every_subcommand_has_help_that_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    commands = subcommands(build_parser())
    assert {("submit",), ("jobs", "list"), ("jobs", "show"), ("jobs", "logs"), ("jobs", "cancel"), ("cancel",),
            ("pipelines", "list"), ("pipelines", "show"), ("dashboard",), ("cluster-token",), ("doctor",), ("driver", "start"),
            ("driver", "run"), ("serve",), ("demo",), ("watchdog",), ("fire-schedule",), ("export-pipelines",)} <= set(commands)  # fmt: skip
    for command in commands:
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([*command, "--help"])
        text = capsys.readouterr().out
        assert done.value.code == 0
        assert text.startswith("usage: raylauncher " + " ".join(command))
        assert len(text.splitlines()) > 4, f"{command}: its help says nothing"
    # and the exit codes of --wait are documented where it is
    build_help = build_parser()
    with pytest.raises(SystemExit):
        build_help.parse_args(["submit", "--help"])
    assert "13 TEARDOWN_FAILED" in capsys.readouterr().out


def test_since_and_params() -> None:
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    assert since_time(since_value("30m"), now) == datetime(2026, 1, 2, 11, 30, tzinfo=UTC)
    assert since_time(since_value("2d"), now) == datetime(2025, 12, 31, 12, 0, tzinfo=UTC)
    assert since_time(since_value("2026-01-01T00:00:00Z"), now) == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="30m, 1h, 2d"):
        since_value("yesterday")
    assert param_value("input_prefix=incoming/a=b/") == ("input_prefix", "incoming/a=b/")
    assert param_value("limit:=5") == ("limit", 5)
    assert param_value("dry_run:=true") == ("dry_run", True)
    for bad in ("novalue", "=x", "x:=not json"):
        with pytest.raises(argparse.ArgumentTypeError):
            param_value(bad)


JOB = {
    "job_id": "probe-20260101-000000-1a2b3c4d", "pipeline": "probe", "trigger": "api", "status": "SUCCEEDED",
    "created_at": "2026-01-01T00:00:00+00:00",
    "phase_times": [{"status": s, "at": f"2026-01-01T00:{m:02d}:00+00:00"} for s, m in
                    (("QUEUED", 0), ("LAUNCHING", 0), ("PROVISIONING", 1), ("RUNNING", 4), ("TEARING_DOWN", 10),
                     ("SUCCEEDED", 11))],
    "cluster_seconds": 600.0, "attempts": [],
}  # fmt: skip


def test_phases_take_the_time_to_the_next_phase_and_the_terminal_one_none() -> None:
    spans = render.phases(JOB)
    assert [(s, d) for s, _, d in spans] == [("QUEUED", 0), ("LAUNCHING", 60), ("PROVISIONING", 180), ("RUNNING", 360),
                                            ("TEARING_DOWN", 60), ("SUCCEEDED", None)]  # fmt: skip
    assert render.elapsed(JOB) == 660
    running = {**JOB, "status": "RUNNING", "phase_times": JOB["phase_times"][:4]}
    assert render.phases(running, now=datetime(2026, 1, 1, 0, 5, tzinfo=UTC))[-1][2] == 60


def test_no_color_turns_colours_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def show(env_no_color: bool) -> str:
        if env_no_color:
            monkeypatch.setenv("NO_COLOR", "1")
        else:
            monkeypatch.delenv("NO_COLOR", raising=False)
        out = io.StringIO()
        Console(file=out, force_terminal=True, width=120).print(render.job_detail(JOB))
        return out.getvalue()

    assert "\x1b[32m" in show(False)  # SUCCEEDED in green
    assert "\x1b[3" not in show(True)  # no foreground colours (bold may stay)


def test_ray_pins_agree_or_say_what_differs() -> None:
    template = "# Base Ray cluster launcher config (Ray 2.60) for one job's cluster\n"
    assert ray_pins(PYPROJECT, template, "2.60.0").outcome == "ok"
    assert ray_pins(PYPROJECT, template, None).outcome == "ok"
    assert ray_pins(PYPROJECT, template, "2.49.0").outcome == "warn"
    mismatch = ray_pins(PYPROJECT, template.replace("2.60", "2.61"), None)
    assert mismatch.outcome == "fail" and "2.60.0" in mismatch.detail and "2.61" in mismatch.detail
    assert ray_pins(PYPROJECT.replace("==2.60.0", ">=2.60"), template, None).outcome == "fail"


def test_wait_exit_codes_are_distinct() -> None:
    codes = exits.JOB_OUTCOMES
    assert codes["SUCCEEDED"] == 0
    assert len(set(codes.values())) == len(codes)
    assert not set(codes.values()) & {exits.ERROR, exits.USAGE, exits.NOT_FOUND, exits.UNREACHABLE} - {0}


# ---------------------------------------------------------------- dashboard: the Ray token hint

RUNNING_JOB = "sales-summary-20260101-000000-1a2b3c4d"
BASTION = "i-0123456789abcdef0"
LOCAL = Target(kind="local", api_url="http://127.0.0.1:8080", region="us-east-1")
STACK = Target(kind="stack", api_url="https://api.example/v1", region="eu-west-1", bastion_id=BASTION, stack_name="S")


class FakeApi:
    """The API's job view, for the commands that read one job (no HTTP)."""

    jobs: dict[str, dict[str, Any]] = {}

    def __init__(self, target: Target) -> None:
        self.target = target

    def job(self, job_id: str) -> dict[str, Any]:
        if job_id not in self.jobs:
            raise ApiError(404, "JOB_NOT_FOUND", f"no job {job_id}")
        return self.jobs[job_id]


@pytest.fixture
def api_jobs(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Jobs the commands read (through FakeApi), on a target the test chooses with `on`."""
    jobs: dict[str, dict[str, Any]] = {}
    monkeypatch.setattr(FakeApi, "jobs", jobs)
    for module in (commands, tokens):
        monkeypatch.setattr(module, "ApiClient", FakeApi)
    return jobs


def on(monkeypatch: pytest.MonkeyPatch, target: Target | None) -> None:
    """Every command's target: `target`, or (None) no target at all (as on the bastion)."""

    def resolve(kind: str | None, stack: str | None, region: str | None) -> Target:
        if target is None:
            raise TargetError("no target")
        return target

    for module in (commands, tokens):
        monkeypatch.setattr(module, "resolve_target", resolve)


def cli(capsys: pytest.CaptureFixture[str], *argv: str, **injected: Any) -> tuple[int, str, str]:
    code = main(list(argv), **injected)
    out, err = capsys.readouterr()
    return code, out, err


def test_dashboard_locally_prints_the_url_on_stdout_and_the_token_hint_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], api_jobs: dict[str, dict[str, Any]]
) -> None:
    # Given a running job of the local system, its cluster's dashboard on port 50569
    on(monkeypatch, LOCAL)
    url = "http://127.0.0.1:50569"
    api_jobs[RUNNING_JOB] = {"job_id": RUNNING_JOB, "status": "RUNNING", "attempt": 1,
                             "cluster": {"backend": "local", "dashboard_url": url}}  # fmt: skip
    # When the operator asks for its dashboard
    code, out, err = cli(capsys, "dashboard", RUNNING_JOB)
    # Then stdout is the URL alone, and stderr says the cluster wants its token and how to get it
    assert (code, out) == (exits.OK, url + "\n")
    assert "requires its Ray token" in err and "browser keeps a cookie" in err
    assert f"raylauncher cluster-token {RUNNING_JOB} --target local" in err
    assert "Authorization: Bearer <token>" in err
    assert f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<token> ray job list --address {url}" in err
    # When it asks for JSON: stdout stays one JSON document, with the command that prints the token
    code, out, err = cli(capsys, "dashboard", RUNNING_JOB, "-o", "json")
    assert code == exits.OK
    assert json.loads(out) == {"url": url, "token_command": f"raylauncher cluster-token {RUNNING_JOB} --target local"}
    assert "requires its Ray token" in err


def test_dashboard_on_a_stack_says_before_forwarding_that_the_token_is_read_on_the_bastion(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], api_jobs: dict[str, dict[str, Any]]
) -> None:
    # Given a running job on a stack whose bastion is BASTION, the AWS CLI and the plugin installed
    on(monkeypatch, STACK)
    api_jobs[RUNNING_JOB] = {"job_id": RUNNING_JOB, "status": "RUNNING", "attempt": 1,
                             "cluster": {"backend": "ec2", "head_ip": "10.0.1.23"}}  # fmt: skip
    seen_before_forwarding: list[str] = []

    def run(command: list[str]) -> int:
        seen_before_forwarding.append(capsys.readouterr().err)
        return 0

    # When the operator opens its dashboard
    code, out, err = cli(capsys, "dashboard", RUNNING_JOB, run=run, which=lambda tool: f"/usr/bin/{tool}")
    # Then before the port forwarding started, stderr said where the token is read: on the bastion
    assert code == exits.OK and len(seen_before_forwarding) == 1
    hint = seen_before_forwarding[0]
    assert "requires its Ray token" in hint and "not the operator role" in hint
    assert f"$ aws ssm start-session --region eu-west-1 --target {BASTION}" in hint
    assert f"$ sudo /opt/raylauncher/bin/raylauncher cluster-token {RUNNING_JOB}" in hint
    assert "Authorization: Bearer <token>" in hint and "--address http://127.0.0.1:8265" in hint
    # and none of it on stdout (the URL and the session command only)
    assert "token" not in out
    # When it asks for JSON: token_command (run on the bastion) and the shell to open there
    code, out, _ = cli(capsys, "dashboard", RUNNING_JOB, "-o", "json", run=lambda c: 0, which=lambda t: "/x")
    body = json.loads(out)
    assert body["token_command"] == f"sudo /opt/raylauncher/bin/raylauncher cluster-token {RUNNING_JOB}"
    assert body["token_shell"] == ["aws", "ssm", "start-session", "--region", "eu-west-1", "--target", BASTION]


# ---------------------------------------------------------------- cluster-token


TOKEN = "ab" * 32


class FakeSsm:
    """The SSM calls SsmClusterTokens makes: parameters by name, or one error for every call.
    `page` parameters per GetParametersByPath answer (to see pagination followed)."""

    def __init__(self, parameters: dict[str, str] | None = None, error: Exception | None = None, page: int = 1) -> None:
        self.parameters, self.error, self.page = parameters or {}, error, page
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def get_parameter(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("get_parameter", kwargs))
        if self.error:
            raise self.error
        if kwargs["Name"] not in self.parameters:
            raise ClientError({"Error": {"Code": "ParameterNotFound", "Message": ""}}, "GetParameter")
        return {"Parameter": {"Name": kwargs["Name"], "Value": self.parameters[kwargs["Name"]]}}

    def get_parameters_by_path(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("get_parameters_by_path", kwargs))
        if self.error:
            raise self.error
        under = sorted(n for n in self.parameters if n.rsplit("/", 1)[0] == kwargs["Path"])
        start = int(kwargs.get("NextToken") or 0)
        answer: dict[str, Any] = {"Parameters": [{"Name": n, "Value": self.parameters[n]} for n in under[start:start + self.page]]}
        if start + self.page < len(under):
            answer["NextToken"] = str(start + self.page)
        return answer


def denied(code: str = "AccessDeniedException") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "not authorized"}}, "GetParameter")


def test_cluster_token_on_the_bastion_prints_the_highest_attempts_token_alone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given no target (on the bastion), and tokens of attempts 1, 2 and 10 of a job (one per page)
    on(monkeypatch, None)
    path = f"/raylauncher/ray-auth/{RUNNING_JOB}/"
    ssm = FakeSsm({path + RUNNING_JOB: "one", path + f"{RUNNING_JOB}-a2": "two", path + f"{RUNNING_JOB}-a10": TOKEN,
                   f"/raylauncher/ray-auth/{RUNNING_JOB}x/{RUNNING_JOB}x": "another job's"}, page=1)  # fmt: skip
    # When the token is asked for
    code, out, err = cli(capsys, "cluster-token", RUNNING_JOB, ssm_client=ssm)
    # Then stdout is the highest attempt's token and a newline, nothing else, and it is nowhere else
    assert (code, out) == (exits.OK, TOKEN + "\n")
    assert TOKEN not in err
    assert len(ssm.calls) == 3 and ssm.calls[0] == (
        "get_parameters_by_path", {"Path": path.rstrip("/"), "Recursive": False, "WithDecryption": True})
    # When asked as JSON, and for attempt 2 by number
    code, out, _ = cli(capsys, "cluster-token", RUNNING_JOB, "-o", "json", ssm_client=ssm)
    assert json.loads(out) == {"job_id": RUNNING_JOB, "run_id": f"{RUNNING_JOB}-a10", "token": TOKEN}
    code, out, _ = cli(capsys, "cluster-token", RUNNING_JOB, "--attempt", "2", ssm_client=ssm)
    assert (code, out) == (exits.OK, "two\n")
    assert ssm.calls[-1] == ("get_parameter", {"Name": path + f"{RUNNING_JOB}-a2", "WithDecryption": True})


def test_cluster_token_exit_codes_without_a_token_or_without_the_right(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    on(monkeypatch, None)
    # Given no token for the job (its cluster was torn down): 3, and why
    code, out, err = cli(capsys, "cluster-token", RUNNING_JOB, ssm_client=FakeSsm())
    assert (code, out) == (exits.NOT_FOUND, "")
    assert f"no Ray token for any attempt of {RUNNING_JOB}" in err and "deleted at teardown" in err
    code, _, err = cli(capsys, "cluster-token", RUNNING_JOB, "--attempt", "3", ssm_client=FakeSsm())
    assert code == exits.NOT_FOUND and f"attempt 3 ({RUNNING_JOB}-a3)" in err
    # Given credentials that may not read tokens (the operator role): 1, and where to run it
    code, out, err = cli(capsys, "cluster-token", RUNNING_JOB, ssm_client=FakeSsm(error=denied()))
    assert (code, out) == (exits.ERROR, "")
    assert "only the bastion and the cluster's nodes may read Ray tokens" in err
    assert f"sudo /opt/raylauncher/bin/raylauncher cluster-token {RUNNING_JOB}" in err
    # Given SSM not answering: 4
    unreachable = FakeSsm(error=EndpointConnectionError(endpoint_url="https://ssm.eu-west-1.amazonaws.com"))
    code, _, err = cli(capsys, "cluster-token", RUNNING_JOB, ssm_client=unreachable)
    assert code == exits.UNREACHABLE and "SSM did not answer" in err
    # Given any other refusal: 1, with its code
    code, _, err = cli(capsys, "cluster-token", RUNNING_JOB, ssm_client=FakeSsm(error=denied("ThrottlingException")))
    assert code == exits.ERROR and "ThrottlingException" in err


def test_cluster_token_with_a_target_reads_the_current_attempt_only_while_its_cluster_is_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], api_jobs: dict[str, dict[str, Any]]
) -> None:
    # Given a stack whose API says the job runs its second attempt
    on(monkeypatch, STACK)
    name = f"/raylauncher/ray-auth/{RUNNING_JOB}/{RUNNING_JOB}-a2"
    ssm = FakeSsm({name: TOKEN})
    api_jobs[RUNNING_JOB] = {"job_id": RUNNING_JOB, "status": "RUNNING", "attempt": 2}
    # When its token is asked for: that attempt's parameter is read
    code, out, _ = cli(capsys, "cluster-token", RUNNING_JOB, "--stack", "S", ssm_client=ssm)
    assert (code, out) == (exits.OK, TOKEN + "\n") and ssm.calls == [("get_parameter", {"Name": name, "WithDecryption": True})]
    # Given the job ended, or has no cluster yet: 3 without asking SSM
    for status, why in (("SUCCEEDED", "tokens are deleted when their cluster is torn down"), ("LAUNCHING", "not started yet")):
        api_jobs[RUNNING_JOB]["status"] = status
        code, out, err = cli(capsys, "cluster-token", RUNNING_JOB, "--stack", "S", ssm_client=ssm)
        assert (code, out) == (exits.NOT_FOUND, "") and f"is {status}" in err and why in err
    assert len(ssm.calls) == 1
    # Given no such job: 3, the API's answer
    code, _, err = cli(capsys, "cluster-token", "sales-summary-20260101-000000-deadbeef", "--stack", "S", ssm_client=ssm)
    assert code == exits.NOT_FOUND and "JOB_NOT_FOUND" in err
    # Given the stack's credentials may not read it: 1, naming this stack's bastion
    api_jobs[RUNNING_JOB]["status"] = "RUNNING"
    code, _, err = cli(capsys, "cluster-token", RUNNING_JOB, "--stack", "S", ssm_client=FakeSsm(error=denied()))
    assert code == exits.ERROR and f"aws ssm start-session --region eu-west-1 --target {BASTION}" in err


def test_cluster_token_arguments(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                 tmp_path: Path) -> None:  # fmt: skip
    # Bad attempt numbers and job ids are usage errors (2)
    for argv in (["--attempt", "0"], ["--attempt", "x"], ["--attempt", "1000"], ["-o", "table"]):
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args(["cluster-token", RUNNING_JOB, *argv])
        assert done.value.code == exits.USAGE
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cluster-token", "Not_A_Job"])
    assert build_parser().parse_args(["cluster-token", RUNNING_JOB, "--attempt", "999"]).attempt == 999
    # A target asked for but not there: 2, never a fall back to the environment's credentials
    on(monkeypatch, None)
    ssm = FakeSsm({})
    code, _, err = cli(capsys, "cluster-token", RUNNING_JOB, "--stack", "Gone", ssm_client=ssm)
    assert code == exits.USAGE and ssm.calls == []
    # No target and no region anywhere: 2, saying how to give one
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, _, err = cli(capsys, "cluster-token", RUNNING_JOB)
    assert code == exits.USAGE and "no AWS region" in err


def test_cluster_token_runs_without_the_terminal_ui() -> None:
    # Given the bastion, which has no rich: the command's module and its run load none
    code = ("import sys; import raylauncher.cli.tokens; from raylauncher.cli import build_parser; "
            "build_parser().parse_args(['cluster-token', 'abc-def']);"
            "assert not [m for m in sys.modules if m == 'rich' or m.startswith('rich.')], 'rich imported'")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_jobs_show_names_the_release_the_job_was_created_under() -> None:
    out = io.StringIO()
    Console(file=out, width=120).print(render.job_detail({**JOB, "release": "4ac4bba9c38a"}))
    assert any(line.split()[:2] == ["release", "4ac4bba9c38a"] for line in out.getvalue().splitlines())
    out = io.StringIO()
    Console(file=out, width=120).print(render.job_detail(JOB))  # a job from before releases: no line
    assert not any(line.startswith("release") for line in out.getvalue().splitlines())
