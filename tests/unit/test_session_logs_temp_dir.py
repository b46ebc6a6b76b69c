"""The driver's session-log fetch leaves no temp dir behind, also when its collector outlives
its deadline and then the process ends (the collector, a daemon thread, dies with it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import time
from raylauncher.driver.logs import keep_session_logs
from raylauncher.model import Job

def hang(dest):
    dest.mkdir(parents=True)
    (dest / "raylet.out").write_text("still fetching")
    time.sleep(600)

print(keep_session_logs(object(), Job.new("probe", "s3"), hang, timeout_s=0.5))
"""


def test_a_collector_past_its_deadline_leaves_no_temp_dir_when_the_process_ends(tmp_path: Path) -> None:
    # Given a driver process whose session-log collector hangs past its deadline
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # When the fetch gives up and the process then exits, the collector still running
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    # Then nothing was kept, and the fetch's temp dir is gone with the process
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
    assert list(tmp_path.glob("rl-session-logs-*")) == []
