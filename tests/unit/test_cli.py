"""The command line's pure parts: arguments, rendering, the Ray pin check, and that the bastion's
`raylauncher driver …` never needs the terminal UI."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from rich.console import Console

from raylauncher.cli import build_parser, exits, render
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
            ("pipelines", "list"), ("pipelines", "show"), ("dashboard",), ("doctor",), ("driver", "start"),
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
