"""`raylauncher serve`: the local system (moto server, intake poller, local bastion) plus the
HTTP API on 127.0.0.1, until Ctrl-C.

Jobs started here really run: the local bastion starts drivers, which start local Ray clusters.
The watchdog sweeps every minute, as its schedule does on AWS.
On Ctrl-C every unfinished job is cancelled and awaited, so no cluster outlives the moto
server its driver reports to.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from raylauncher.control import request_cancel
from raylauncher.errors import RayLauncherError
from raylauncher.local.http_api import LocalApiServer
from raylauncher.local.runtime import PROJECT_DIR, LocalSystem, local_system, wait_for_jobs
from raylauncher.local.stack import FAKE_CREDENTIALS
from raylauncher.wiring import build_watchdog

SHUTDOWN_TIMEOUT_S = 180
WATCHDOG_EVERY_S = 60


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
        f"  # other commands against this system, from another shell: source {env_file}",
    ]
    if schedule:
        lines.append(f"  raylauncher fire-schedule {pipeline} {schedule}")
    lines.append("  raylauncher cancel <job-id>")
    return "\n".join(lines)


def stop_unfinished_jobs(system: LocalSystem) -> bool:
    """Cancel every job not yet terminal and wait for them to end; True if all ended."""
    unfinished = [j for j in system.store.list_jobs() if not j.is_terminal]
    if not unfinished:
        return True
    print(f"cancelling {len(unfinished)} unfinished job(s) and waiting for their clusters to go…")
    for job in unfinished:
        try:
            request_cancel(system.store, job.job_id)
        except RayLauncherError as err:
            print(f"  could not cancel {job.job_id}: {err}", file=sys.stderr)
    jobs = wait_for_jobs(system.store, lambda js: all(j.is_terminal for j in js), SHUTDOWN_TIMEOUT_S)
    left = [j.job_id for j in jobs if not j.is_terminal]
    if left:
        print(f"still not finished after {SHUTDOWN_TIMEOUT_S}s: {', '.join(left)}", file=sys.stderr)
    else:
        print("every job has ended")
    return not left


def run_serve(port: int) -> int:
    state_dir = PROJECT_DIR / ".local" / "state"
    env_file = state_dir / "serve.env"
    with local_system(state_dir) as system:
        from lambdas.api import handler as api_handler  # the deployed handler (on sys.path now)

        api_handler.services.cache_clear()  # settings changed: build the services anew
        try:
            try:
                server = LocalApiServer(api_handler.handler, port)
            except OSError as err:
                print(f"cannot listen on 127.0.0.1:{port}: {err.strerror}; try --port 0 (any free port)", file=sys.stderr)
                return 2
            with server:
                write_env_file(system, env_file)
                first = system.pipelines.pipelines[0]
                print(usage(server.base_url, env_file, first.name, first.schedules[0].name if first.schedules else None))
                sys.stdout.flush()
                # The watchdog's schedule, locally: a sweep every WATCHDOG_EVERY_S.
                watchdog, next_sweep = build_watchdog(system.settings), time.monotonic() + WATCHDOG_EVERY_S
                try:
                    while True:
                        time.sleep(1)
                        if time.monotonic() >= next_sweep:
                            next_sweep = time.monotonic() + WATCHDOG_EVERY_S
                            try:
                                watchdog.sweep()
                            except RayLauncherError as err:  # logged; the next sweep tries again
                                print(f"watchdog sweep failed: {err}", file=sys.stderr)
                except KeyboardInterrupt:
                    print("\nstopping the API…")
            try:
                ok = stop_unfinished_jobs(system)
            except KeyboardInterrupt:
                print("not waiting any longer: clusters of unfinished jobs may be left", file=sys.stderr)
                ok = False
        finally:
            api_handler.services.cache_clear()
            env_file.unlink(missing_ok=True)
    return 0 if ok else 1
