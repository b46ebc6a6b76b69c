"""The bastion command: the validated job id is its only argument, quoted, never interpolated raw."""

import os
import shlex
from pathlib import Path

import pytest

from raylauncher.bastion import LocalBastion, driver_command
from raylauncher.driver import clip
from raylauncher.errors import BastionUnavailable, InvalidJobId

JOB = "sales-summary-20261125-083000-0a1b2c3d"


def test_command_starts_the_driver_with_only_the_job_id() -> None:
    lines = driver_command("/opt/raylauncher/venv/bin/raylauncher", JOB)
    assert lines == ["set -eu", f"exec /opt/raylauncher/venv/bin/raylauncher driver start {JOB}"]


def test_launcher_path_is_quoted() -> None:
    (_, line) = driver_command("/opt/my dir/raylauncher", JOB)
    assert shlex.split(line) == ["exec", "/opt/my dir/raylauncher", "driver", "start", JOB]


@pytest.mark.parametrize("bad", ["x; reboot", "$(curl evil)", "a b", ""])
def test_a_bad_job_id_never_becomes_a_command(bad: str) -> None:
    with pytest.raises(InvalidJobId):
        driver_command("/bin/raylauncher", bad)


def test_local_bastion_runs_the_same_script(tmp_path: Path) -> None:
    # Given a launcher that records its argv (a real process boundary)
    calls = tmp_path / "calls"
    launcher = tmp_path / "raylauncher"
    launcher.write_text(f'#!/usr/bin/env bash\nprintf "%s|" "$@" > {calls}\n')
    launcher.chmod(0o755)
    # When the local bastion is asked to run the driver
    handle = LocalBastion(str(launcher), os.environ).run_driver(JOB)
    # Then the launcher got exactly: driver start <job id>
    assert calls.read_text() == f"driver|start|{JOB}|"
    assert handle == f"local:{JOB}"


def test_local_bastion_failure_is_bastion_unavailable(tmp_path: Path) -> None:
    launcher = tmp_path / "raylauncher"
    launcher.write_text("#!/usr/bin/env bash\necho 'no such job' >&2\nexit 3\n")
    launcher.chmod(0o755)
    with pytest.raises(BastionUnavailable, match="exited 3: no such job"):
        LocalBastion(str(launcher), os.environ).run_driver(JOB)


def test_clip_keeps_head_and_tail() -> None:
    text = "Job entrypoint command failed with exit code 1" + "x" * 10_000 + "LAST LINE"
    clipped = clip(text, 400)
    assert len(clipped) <= 400
    assert clipped.startswith("Job entrypoint command failed") and clipped.endswith("LAST LINE")
    assert clip("short", 400) == "short"
