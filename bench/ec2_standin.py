"""Figures of the EC2 path on the stand-in: Ray's real `ray up` / `ray down` against moto's EC2,
network namespaces as instances, driven by the product's intake and driver (`make demo-ec2`'s
system). Per run and as min/median/max over the runs; printed and written to
bench/results/ec2_standin.json. Nothing here is asserted.

Usage: python bench/ec2_standin.py [--runs 3] [--rows 20000] [--files 3]

Figures, per run:
- ray_up_head_s: `ray up` of the head (RunInstances, SSH, setup, `ray start --head`)
- workers_joined_s: from the start of `ray up` until head + min_workers (2) were ALIVE in Ray
- provisioning_s: PROVISIONING -> SUBMITTED (ray up, head IP, Jobs API, workers joined)
- job_run_s: SUBMITTED -> TEARING_DOWN (the Ray job, as the driver saw it; polls every 0.5 s)
- end_to_terminated_s: the driver seeing the Ray job end (TEARING_DOWN) -> the last instance of
  the cluster reported shutting-down/terminated by EC2 (moto), logs kept first
- ray_down_total_s: TEARING_DOWN -> the final state (terminate by tag, `ray down`, tag check)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "bench")]

from raylauncher.local.sample_data import generate_sales_csv  # noqa: E402
from raylauncher.local.ec2_standin import unavailable  # noqa: E402
from raylauncher.local.runtime import local_system, wait_for_jobs  # noqa: E402
from raylauncher.model import Job, parse_iso  # noqa: E402
from record import write_result  # noqa: E402

FIGURES = ("ray_up_head_s", "workers_joined_s", "provisioning_s", "job_run_s", "end_to_terminated_s",
           "ray_down_total_s")  # fmt: skip


def _t(job: Job, phase: str) -> float:
    return parse_iso(job.phase_times[phase]).timestamp()


def one_run(system, run: int, rows: int, files: int) -> dict[str, float | str]:  # noqa: ANN001
    before = {j.job_id for j in system.store.list_jobs()}
    prefix = system.pipelines.pipelines[0].trigger.prefix
    for i in range(files):  # new keys each run: a re-upload of the same content is the same input
        body = generate_sales_csv(rows, seed=run * 100 + i)
        system.s3.put_object(Bucket=system.settings.bucket, Key=f"{prefix}run-{run}/part-{i}.csv", Body=body)
    jobs = wait_for_jobs(system.store, lambda js: any(j.job_id not in before and j.is_terminal for j in js), 900)
    job = next(j for j in jobs if j.job_id not in before)
    if job.status != "SUCCEEDED":
        raise SystemExit(f"job {job.job_id} ended {job.status}: {job.reason_code}: {job.reason_message}")
    name = job.cluster["cluster_name"]  # type: ignore[index]
    ended = [e.at for e in system.standin.materializer.events
             if e.tags.get("ray-cluster-name") == name and e.state in ("shutting-down", "terminated")]  # fmt: skip
    ids = {e.instance_id for e in system.standin.materializer.events if e.tags.get("ray-cluster-name") == name}
    return {
        "job_id": job.job_id,
        "instances": len(ids),
        "ray_up_head_s": job.cluster["ray_up_s"],  # type: ignore[index]
        "workers_joined_s": job.cluster["nodes_joined_s"],  # type: ignore[index]
        "provisioning_s": round(_t(job, "SUBMITTED") - _t(job, "PROVISIONING"), 2),
        "job_run_s": round(_t(job, "TEARING_DOWN") - _t(job, "SUBMITTED"), 2),
        "end_to_terminated_s": round(max(ended) - _t(job, "TEARING_DOWN"), 2) if ended else float("nan"),
        "ray_down_total_s": round(_t(job, job.status) - _t(job, "TEARING_DOWN"), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20_000, help="rows per CSV file")
    parser.add_argument("--files", type=int, default=3)
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        print(f"skipped: {reason}", file=sys.stderr)
        return 2
    runs = []
    with local_system(REPO_ROOT / ".local" / "bench-ec2", start_poller=True, backend="ec2") as system:
        for i in range(args.runs):
            run = one_run(system, i, args.rows, args.files)
            runs.append(run)
            print(f"run {i + 1}: " + "  ".join(f"{k}={run[k]}" for k in ("instances", *FIGURES)), flush=True)
    summary = {f: {"min": min(r[f] for r in runs), "median": statistics.median(r[f] for r in runs),  # type: ignore[type-var]
                   "max": max(r[f] for r in runs)} for f in FIGURES}  # fmt: skip
    print(f"\n{'figure':<22}{'min':>8}{'median':>8}{'max':>8}   (seconds, {len(runs)} runs)")
    for f, v in summary.items():
        print(f"{f:<22}{v['min']:>8.1f}{v['median']:>8.1f}{v['max']:>8.1f}")
    write_result("ec2_standin", {
        "runs": runs, "summary": summary,
        "params": {"runs": args.runs, "rows_per_file": args.rows, "files": args.files},
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
