"""Object created -> RUNNING, cold (a new cluster) vs warm (the pipeline's cluster kept up by
`keep_warm_seconds`), on the local backend or the EC2 stand-in, through the product's intake
and drivers. Per pair: one object, its job (cold), then another object within the window, its
job (warm). Printed and written through `record.write_result` (with the machine) to
bench/results/warm_clusters.json (local) or warm_clusters_ec2.json (`--backend ec2`); this bench is
their only writer. The EC2 stand-in's e2e test (tests/e2e/test_ec2_standin.py) records the pair it
measures in warm_clusters_standin_test.json the same way. `bench/report.py` renders all three.
Nothing here is asserted on time (only that the second job of a pair ran warm).

Usage: python bench/warm_clusters.py [--backend local|ec2] [--pairs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "bench")]

from raylauncher.local.runtime import local_system, wait_for_jobs  # noqa: E402
from raylauncher.model import Job, parse_iso  # noqa: E402
from raylauncher.warm import ClusterStatus  # noqa: E402
from record import write_result  # noqa: E402

SCRIPT = "import time\ntime.sleep(3)\nprint('bench: done', flush=True)\n"  # long enough to be seen RUNNING
KEEP_S = 20


def project(root: Path, backend: str) -> tuple[Path, Path]:
    proj = root / "project"
    (proj / "jobs" / "bench").mkdir(parents=True)
    (proj / "jobs" / "bench" / "main.py").write_text(SCRIPT)
    cluster = "{local_num_cpus: 1}" if backend == "local" else "{min_workers: 0, max_workers: 0}"
    pipelines = proj / "pipelines.yaml"
    pipelines.write_text(f"""pipelines:
  - name: bench
    trigger: {{prefix: incoming/bench/}}
    entrypoint: {{script: jobs/bench/main.py}}
    cluster: {cluster}
    batching_window_s: 1
    retry: {{max_attempts: 1}}
    keep_warm_seconds: {KEEP_S}
    output_prefix: outputs/bench/
""")
    return proj, pipelines


def to_running_s(job: Job) -> float:
    return (parse_iso(job.phase_times["RUNNING"]) - parse_iso(job.created_at)).total_seconds()


def next_job(system, name: str) -> Job:  # noqa: ANN001
    before = {j.job_id for j in system.store.list_jobs()}
    system.s3.put_object(Bucket=system.settings.bucket, Key=f"incoming/bench/{name}.csv", Body=b"a\n1\n")
    jobs = wait_for_jobs(system.store, lambda js: any(j.job_id not in before and j.is_terminal for j in js), 900)
    job = next(j for j in jobs if j.job_id not in before)
    if job.status != "SUCCEEDED":
        raise SystemExit(f"job {job.job_id} ended {job.status}: {job.reason_code}: {job.reason_message}")
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("local", "ec2"), default="local")
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        proj, pipelines = project(Path(tmp), args.backend)
        with local_system(Path(tmp) / "state", pipelines, proj, backend=args.backend) as system:
            for pair in range(args.pairs):
                cold = next_job(system, f"pair-{pair}-cold")
                warm = next_job(system, f"pair-{pair}-warm")
                assert not cold.warm and warm.warm, "the second job did not run warm"
                runs.append({"cold_created_to_running_s": round(to_running_s(cold), 2),
                             "warm_created_to_running_s": round(to_running_s(warm), 2)})  # fmt: skip
                print(f"pair {pair + 1}: created -> RUNNING cold {runs[-1]['cold_created_to_running_s']} s, "
                      f"warm {runs[-1]['warm_created_to_running_s']} s", flush=True)
                deadline = time.monotonic() + KEEP_S + 180  # the idle teardown, before the next cold job
                while system.store.clusters.live() and time.monotonic() < deadline:
                    time.sleep(1)
                if system.store.clusters.live(status=ClusterStatus.TEARDOWN_FAILED):
                    raise SystemExit("a warm cluster failed to tear down")
    medians = {f: round(statistics.median(r[f] for r in runs), 2) for f in runs[0]}
    print(json.dumps(medians, indent=1))
    write_result("warm_clusters" if args.backend == "local" else "warm_clusters_ec2", {
        "figures": medians, "pairs": runs, "bench_s": round(time.monotonic() - started, 1),
        "params": {"backend": args.backend, "pairs": args.pairs, "keep_warm_seconds": KEEP_S},
    })  # fmt: skip


if __name__ == "__main__":
    main()
