"""The commands that run the system: the driver on the bastion, the local demo and API, config
export, a watchdog sweep, and `cancel` straight on the job table (no API).

These are entry points: they read the environment once and hand Settings to the domain.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from raylauncher.config import BASTION_ENV_FILE, Settings, load_pipelines, pipelines_json
from raylauncher.errors import ConfigError, InvalidJobId, RayLauncherError, UnknownPipeline
from raylauncher.model import require_job_id

#: The demo's region per backend: the EC2 path runs in the walkthrough's region (not us-east-1,
#: where S3 and EC2 forgive a missing region).
DEMO_REGIONS: dict[str, str] = {"local": "us-east-1", "ec2": "ap-northeast-2"}


def _settings() -> Settings:
    return Settings.from_env(os.environ)


def _job_id(value: str) -> str:
    try:
        return require_job_id(value)
    except InvalidJobId as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def cmd_driver_start(args: argparse.Namespace) -> int:
    """Start `driver run JOB` detached and return at once (what the SSM command calls)."""
    settings = _settings()
    run = [sys.executable, "-m", "raylauncher", "driver", "run", args.job_id]
    # One unit per attempt: a retry is launched while the previous attempt's driver may still be
    # in its unit (it launches what is queued once it is done).
    unit = _run_id(settings, args.job_id)
    if settings.detach == "systemd":
        # A transient unit: survives the SSM command, logs to the journal; SIGTERM reaches the
        # driver first (KillMode=mixed) so it can tear the cluster down before it is killed.
        cmd = [
            "systemd-run", f"--unit=raylauncher-driver-{unit}", "--collect",
            # Longer than every teardown deadline together: systemd must never kill `ray down`.
            "--property=KillMode=mixed", f"--property=TimeoutStopSec={settings.teardown_timeout_s + 600}",
            f"--property=EnvironmentFile={BASTION_ENV_FILE}", *run,
        ]  # fmt: skip
        return subprocess.run(cmd, check=False).returncode
    log_dir = Path(settings.state_dir) / "drivers"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{unit}.log", "ab") as out:
        proc = subprocess.Popen(
            run, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True
        )
    print(f"driver for {args.job_id} started (pid {proc.pid}, log {log_dir / (unit + '.log')})")
    return 0


def _run_id(settings: Settings, job_id: str) -> str:
    """The job's current run id (`<job>-a<n>`), or the job id if the store cannot say."""
    from raylauncher.wiring import build_store

    try:
        return build_store(settings).get(job_id).run_id
    except RayLauncherError:
        return job_id


def cmd_driver_run(args: argparse.Namespace) -> int:
    """Run the driver in the foreground until the job is terminal."""
    # The driver's Ray clients send each cluster's own token as a header; the process's own auth
    # mode is set explicitly so that no token file in a home directory decides (see shared NOTES).
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from raylauncher.wiring import build_driver

    job = build_driver(_settings()).run(args.job_id)
    print(json.dumps({"job_id": job.job_id, "status": job.status, "reason_code": job.reason_code,
                      "reason_message": job.reason_message}))
    return 0 if job.is_terminal else 1


def cancel_direct(job_id: str) -> int:
    """Cancel a job on the job table named by the environment (no API): at once if nothing was
    launched yet, else through its driver. What `raylauncher cancel` does without a target."""
    from raylauncher.control import request_cancel
    from raylauncher.wiring import build_launcher, build_store

    settings = _settings()
    store = build_store(settings)
    job = request_cancel(store, job_id, on_finished=build_launcher(settings, store).finished)
    print(json.dumps({"job_id": job.job_id, "status": job.status, "cancel_requested": job.cancel_requested}))
    return 0


def cmd_export_pipelines(args: argparse.Namespace) -> int:
    """Validate pipelines.yaml and write it as JSON (what the Lambdas read: no PyYAML there)."""
    config = load_pipelines(args.source)
    Path(args.out).write_text(pipelines_json(config), encoding="utf-8")
    print(f"{len(config.pipelines)} pipeline(s) written to {args.out}")
    return 0


def cmd_watchdog(args: argparse.Namespace) -> int:
    """One watchdog sweep (on AWS a schedule runs it every few minutes)."""
    from raylauncher.wiring import build_watchdog

    print(json.dumps(build_watchdog(_settings()).sweep().as_dict()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from raylauncher.local.demo import run_demo

    return run_demo(rows_per_file=args.rows, files=args.files, backend=args.backend,
                    region=args.region or DEMO_REGIONS[args.backend])


def cmd_serve(args: argparse.Namespace) -> int:
    """The local system plus the HTTP API on 127.0.0.1 until Ctrl-C (jobs really run)."""
    from raylauncher.local.serve import run_serve

    return run_serve(port=args.port)


def cmd_fire_schedule(args: argparse.Namespace) -> int:
    """Fire a pipeline's schedule now, through the schedule Lambda handler: locally, what
    EventBridge Scheduler does at the scheduled time. Settings come from the environment
    (`source .local/state/serve.env` while `raylauncher serve` runs)."""
    from datetime import UTC, datetime

    from raylauncher.local.poller import LocalLambdaContext
    from raylauncher.schedules import InvalidScheduleEvent, UnknownSchedule, schedule_input

    from raylauncher import PROJECT_DIR

    project_dir = str(PROJECT_DIR)
    if project_dir not in sys.path:  # lambdas/ is deployed as code, not installed as a package
        sys.path.insert(0, project_dir)
    from lambdas.schedule import handler as schedule_handler

    scheduled = datetime.now(UTC).replace(second=0, microsecond=0)
    event = schedule_input(args.pipeline, args.schedule) | {"scheduled_time": scheduled.isoformat()}
    context = LocalLambdaContext(function_name="raylauncher-schedule-local", aws_request_id=str(uuid.uuid4()))
    try:
        result = schedule_handler.handler(event, context)
    except (UnknownPipeline, UnknownSchedule, InvalidScheduleEvent) as err:
        print(str(err), file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"configuration error: {err}\n(local mode: run `raylauncher serve`, then "
              "`source .local/state/serve.env` in this shell)", file=sys.stderr)  # fmt: skip
        return 2
    print(json.dumps({**result, "scheduled_time": event["scheduled_time"]}))
    return 0


def add_system_commands(sub: argparse._SubParsersAction) -> None:
    """The commands that run the system itself: the bastion's driver, local mode, config export."""
    driver = sub.add_parser("driver", help="the job driver (runs on the bastion)",
                            description="The job driver. The SSM command on the bastion runs `driver start`.")  # fmt: skip
    actions = driver.add_subparsers(dest="action", required=True, metavar="{start,run}")
    start = actions.add_parser("start", help="start the driver for a job, detached",
                               description=cmd_driver_start.__doc__)  # fmt: skip
    start.add_argument("job_id", type=_job_id, metavar="JOB")
    start.set_defaults(func=cmd_driver_start)
    run = actions.add_parser("run", help="run the driver for a job in the foreground", description=cmd_driver_run.__doc__)
    run.add_argument("job_id", type=_job_id, metavar="JOB")
    run.set_defaults(func=cmd_driver_run)

    export = sub.add_parser("export-pipelines", help="validate pipelines.yaml and write it as JSON",
                            description=cmd_export_pipelines.__doc__)  # fmt: skip
    export.add_argument("--source", default="pipelines.yaml", help="the pipelines file (default: %(default)s)")
    export.add_argument("--out", required=True, help="where to write the JSON")
    export.set_defaults(func=cmd_export_pipelines)

    serve = sub.add_parser("serve", help="local system + HTTP API on 127.0.0.1 until Ctrl-C (jobs really run)",
                           description=cmd_serve.__doc__)  # fmt: skip
    serve.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any free port; default %(default)s)")
    serve.set_defaults(func=cmd_serve)

    sweep = sub.add_parser("watchdog", help="one watchdog sweep: fail unclaimed launches, launch queued jobs",
                           description=cmd_watchdog.__doc__)  # fmt: skip
    sweep.set_defaults(func=cmd_watchdog)

    fire = sub.add_parser("fire-schedule", help="fire a pipeline's schedule now (local mode)",
                          description=cmd_fire_schedule.__doc__)  # fmt: skip
    fire.add_argument("pipeline")
    fire.add_argument("schedule")
    fire.set_defaults(func=cmd_fire_schedule)

    demo = sub.add_parser("demo", help="local end-to-end demo on moto server and a local Ray",
                          description="Generate CSV files, drop them on a local system and follow the job to the end.")  # fmt: skip
    demo.add_argument("--rows", type=int, default=40_000, help="rows per generated CSV file (default %(default)s)")
    demo.add_argument("--files", type=int, default=3, help="number of CSV files (default %(default)s)")
    demo.add_argument("--backend", choices=["local", "ec2"], default="local",
                      help="local: a local Ray cluster per job; ec2: real `ray up`/`ray down` on the EC2 "
                           "stand-in (moto EC2, network namespaces as instances; Linux and root)")  # fmt: skip
    demo.add_argument("--region", default=None,
                      help=f"the local system's AWS region (default: {DEMO_REGIONS['local']} for local, "
                           f"{DEMO_REGIONS['ec2']} — the walkthrough's — for ec2)")  # fmt: skip
    demo.set_defaults(func=cmd_demo)
