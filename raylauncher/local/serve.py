"""`raylauncher serve`: the local system (moto server, intake poller, local bastion) plus the
HTTP API on 127.0.0.1, until Ctrl-C.

Jobs started here really run: the local bastion starts drivers, which start local Ray clusters.
The watchdog sweeps every few seconds (on AWS its schedule: every minute), so a dead driver's
cluster is torn down within its lease plus one sweep.
On Ctrl-C or SIGTERM every unfinished job is cancelled and awaited while the watchdog keeps
sweeping (a job whose driver is gone is taken over and its cluster torn down); what is still not
finished after SHUTDOWN_TIMEOUT_S is taken over at once. No cluster outlives the moto server
its driver reports to.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from raylauncher.local.http_api import LocalApiServer
from raylauncher.local.identities import StsIdentities
from raylauncher.local.runtime import PROJECT_DIR, LocalSystem, local_system
from raylauncher.local.shutdown import WATCHDOG_EVERY_S, stop_unfinished_jobs, sweep
from raylauncher.local.serve_state import ServeState, state_file, write_state
from raylauncher.local.stack import FAKE_CREDENTIALS
from raylauncher.wiring import build_watchdog



def write_env_file(system: LocalSystem, path: Path) -> None:
    """`source` it in another shell to use `raylauncher cancel` / `fire-schedule` on this system."""
    env = {**FAKE_CREDENTIALS, **system.settings.to_env()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items())), encoding="utf-8")


def usage(base_url: str, env_file: Path, pipeline: str, schedule: str | None) -> str:
    body = f'{{"pipeline": "{pipeline}", "params": {{}}}}'
    lines = [
        f"raylauncher API on {base_url}  (OpenAPI: docs/openapi.json; Ctrl-C stops everything)",
        "",
        "  # start a job over what is under the input prefix (none there yet: 422, nothing starts;",
        "  # a second call with the same Idempotency-Key returns the same job)",
        f"  curl -s -X POST {base_url}/jobs -H 'Content-Type: application/json' "
        f"-H 'Idempotency-Key: my-run-1' -d '{body}'",
        "  # list jobs, then follow one",
        f"  curl -s '{base_url}/jobs?limit=5'",
        f"  curl -s {base_url}/jobs/<job-id>",
        "",
        "  # or with the CLI, from another shell (it finds this API by itself while serve runs)",
        f"  raylauncher submit {pipeline} --wait",
        "  raylauncher jobs list",
        "  raylauncher jobs logs <job-id> --follow",
        "",
        f"  # system commands against this system, from another shell: source {env_file}",
    ]
    if schedule:
        lines.append(f"  raylauncher fire-schedule {pipeline} {schedule}")
    return "\n".join(lines)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops serve the way Ctrl-C does


def run_serve(port: int) -> int:
    state_dir = PROJECT_DIR / ".local" / "state"
    env_file = state_dir / "serve.env"
    serve_state = state_file()  # the operator CLI's `--target local` (raylauncher/cli/targets.py)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with local_system(state_dir) as system:
        from lambdas.api import handler as api_handler  # the deployed handler (on sys.path now)

        api_handler.services.cache_clear()  # settings changed: build the services anew
        try:
            try:
                # Who signed a request, as IAM authorization says (allowed_principals): moto's STS.
                identities = StsIdentities(str(system.settings.endpoint_url), system.settings.region)
                server = LocalApiServer(api_handler.handler, port, identities)
            except OSError as err:
                print(f"cannot listen on 127.0.0.1:{port}: {err.strerror}; try --port 0 (any free port)", file=sys.stderr)
                return 2
            with server:
                write_env_file(system, env_file)
                write_state(serve_state, ServeState(
                    api_url=server.base_url, pid=os.getpid(), bucket=system.settings.bucket,
                    table=system.settings.table, region=system.settings.region,
                    endpoint_url=system.settings.endpoint_url,
                ))  # fmt: skip
                first = system.pipelines.pipelines[0]
                print(usage(server.base_url, env_file, first.name, first.schedules[0].name if first.schedules else None))
                sys.stdout.flush()
                # The watchdog's schedule, locally: a sweep every WATCHDOG_EVERY_S.
                watchdog, next_sweep = build_watchdog(system.settings), time.monotonic() + WATCHDOG_EVERY_S
                signal.signal(signal.SIGTERM, _interrupt)
                signal.signal(signal.SIGINT, _interrupt)  # also when started in the background (SIGINT ignored)
                try:
                    while True:
                        time.sleep(1)
                        if time.monotonic() >= next_sweep:
                            next_sweep = time.monotonic() + WATCHDOG_EVERY_S
                            sweep(watchdog)
                except KeyboardInterrupt:
                    print("\nstopping the API…")
            serve_state.unlink(missing_ok=True)  # the API is gone: the CLI must not find it
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the teardown short
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: tear down now
            ok = stop_unfinished_jobs(system, watchdog)
        finally:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
            api_handler.services.cache_clear()
            env_file.unlink(missing_ok=True)
            serve_state.unlink(missing_ok=True)
    return 0 if ok else 1
