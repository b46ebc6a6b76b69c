"""The sales-summary job against a hand-written single-process pyarrow pass, on moto S3.

    .venv/bin/python bench/sales_job.py [--sizes-mb 100,300,1000] [--file-mb 16] [--cpus 2,1]
                                        [--repeats 3] [--out sales_job]

Generates sales CSVs at run time (``generate_sales_csv``, about 2% bad rows) into a versioned
moto S3 bucket (moto in a process of its own, on 127.0.0.1), files of about --file-mb each,
enough for the largest size; each size is a manifest over the first files (with their version
ids, as the intake writes them, so the job reads through ``exact_versions`` as it does in
production). For each size:

* baseline: one Python process, no Ray involved: per object a boto3 ``GetObject`` of that
  version, ``pyarrow.csv.read_csv`` (pyarrow's own threads), the job's rules written out again
  with ``pyarrow.compute`` (trim, regex, casts, revenue), a group-by per file, one final one;
* job: ``jobs/sales_summary/main.py``'s ``main`` on an in-process local Ray with each of
  --cpus CPUs (RAY_AUTH_MODE=disabled, 127.0.0.1 only); its own ``seconds`` (read to Parquet
  written) are the figure.

Baseline and job runs alternate (the job's Ray idles during a baseline run), so both see the
same machine; each figure is the median of its runs (--repeats per Ray, so the baseline has
--repeats times the number of --cpus). On each Ray, a first unrecorded run of the smallest
size starts the workers (process start and imports: a second or two). The job's aggregates
and counts must equal the baseline's (else the bench stops: a fast wrong job is no figure).
Printed: seconds, MB/s, the job/baseline throughput ratio, the 2-CPU/1-CPU speed-up, and the
profile of the largest size on the most CPUs from Ray Data's stats (per fused stage, task wall
vs CPU time, driver-side time). Written to bench/results/<out>.json. Nothing is asserted on
time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB_DIR = REPO_ROOT / "jobs" / "sales_summary"
sys.path[:0] = [str(REPO_ROOT), str(JOB_DIR), str(REPO_ROOT / "bench")]
# Read by Ray at import: keep this in-process Ray on 127.0.0.1 (see raylauncher.clusters.local).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import boto3  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import ray  # noqa: E402
import ray.data  # noqa: E402

from raylauncher.local.sample_data import generate_sales_csv  # noqa: E402
from record import write_result  # noqa: E402

BUCKET = "sales-bench"
MB = 1_000_000
MOTO_PROCESS = f"""
import sys
sys.path.insert(0, {str(REPO_ROOT)!r})
from raylauncher.local.stack import MotoServer
with MotoServer() as server:
    print(server.endpoint_url, flush=True)
    sys.stdin.read()  # until the bench closes our stdin
"""


@contextlib.contextmanager
def moto_process() -> Iterator[str]:
    """moto's S3 on 127.0.0.1 in a process of its own, as S3 is apart from its clients: serving
    a GET never takes the GIL from the process being timed (the baseline, or the job's driver).
    Yields its endpoint URL."""
    proc = subprocess.Popen([sys.executable, "-c", MOTO_PROCESS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = proc.stdout.readline().strip() if proc.stdout else ""
        if not endpoint.startswith("http://127.0.0.1:"):
            raise SystemExit(f"moto did not start (got {endpoint!r})")
        yield endpoint
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="100,300,1000", help="input sizes in MB (10**6 bytes), comma-separated")
    parser.add_argument("--file-mb", type=float, default=16, help="size of each CSV object in MB")
    parser.add_argument("--cpus", default="2,1", help="CPU counts of the local Ray the job runs on")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is reported)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first file")
    parser.add_argument("--out", default="sales_job", help="results file name under bench/results/")
    args = parser.parse_args()
    args.sizes_mb = sorted(float(s) for s in args.sizes_mb.split(","))
    args.cpus = [int(c) for c in args.cpus.split(",")]
    return args


# -- data ------------------------------------------------------------------------------------
def upload_inputs(s3: Any, total_mb: float, file_mb: float, seed: int) -> list[dict[str, Any]]:
    """Generate CSVs of about ``file_mb`` until ``total_mb`` (in parallel processes), upload
    them to the versioned bucket; return their manifest entries (with version ids)."""
    sample = generate_sales_csv(20_000, seed)
    rows_per_file = max(1, round(file_mb * MB * 20_000 / len(sample)))
    files = max(1, math.ceil(total_mb / file_mb))
    objects = []
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        blobs = pool.map(generate_sales_csv, [rows_per_file] * files, [seed + i for i in range(files)])
        for index, blob in enumerate(blobs):
            key = f"incoming/sales/bench/part-{index:05d}.csv"
            put = s3.put_object(Bucket=BUCKET, Key=key, Body=blob)
            objects.append({"key": key, "size": len(blob), "etag": put["ETag"].strip('"'),
                            "version_id": put["VersionId"], "sequencer": None})  # fmt: skip
    return objects


def first_objects(objects: list[dict[str, Any]], size_mb: float) -> list[dict[str, Any]]:
    """The first objects whose sizes add up to at least ``size_mb``."""
    chosen, total = [], 0
    for obj in objects:
        if total >= size_mb * MB:
            break
        chosen.append(obj)
        total += obj["size"]
    return chosen


def put_manifest(s3: Any, job_id: str, objects: list[dict[str, Any]]) -> str:
    manifest = {"job_id": job_id, "pipeline": "sales-summary", "bucket": BUCKET, "objects": objects}
    s3.put_object(Bucket=BUCKET, Key=f"jobs/{job_id}/manifest.json", Body=json.dumps(manifest))
    return f"s3://{BUCKET}/jobs/{job_id}/manifest.json"


# -- the baseline: one process, pyarrow only ---------------------------------------------------
QUANTITY_RE = r"\A\+?0*[1-9][0-9]{0,17}\z"
PRICE_RE = r"\A[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\z"
COLUMNS = ["region", "quantity", "unit_price"]


def baseline(s3: Any, objects: list[dict[str, Any]]) -> tuple[pa.Table, int, int]:
    """The job's result computed by hand: ``(aggregates, rows_in, rows_rejected)``."""
    convert = pacsv.ConvertOptions(include_columns=COLUMNS, column_types=dict.fromkeys(COLUMNS, pa.string()))
    per_file, rows_in = [], 0
    for obj in objects:
        body = s3.get_object(Bucket=BUCKET, Key=obj["key"], VersionId=obj["version_id"])["Body"].read()
        table = pacsv.read_csv(pa.BufferReader(body), convert_options=convert)
        rows_in += table.num_rows
        region = pc.utf8_trim_whitespace(table["region"])
        quantity = pc.utf8_trim_whitespace(table["quantity"])
        price = pc.utf8_trim_whitespace(table["unit_price"])
        quantity_ok = pc.match_substring_regex(quantity, QUANTITY_RE)
        price_ok = pc.match_substring_regex(price, PRICE_RE)
        keep = pc.and_(pc.not_equal(region, ""), pc.and_(quantity_ok, price_ok))
        region, quantity, price = region.filter(keep), quantity.filter(keep), price.filter(keep)
        quantity = pc.cast(pc.utf8_ltrim(quantity, "+"), pa.int64())
        price = pc.cast(price, pa.float64())
        ok = pc.and_(pc.is_finite(price), pc.greater_equal(price, 0))
        valid = pa.table({"region": region, "quantity": quantity,
                          "revenue": pc.multiply(pc.cast(quantity, pa.float64(), safe=False), price)}).filter(ok)  # fmt: skip
        per_file.append(valid.group_by("region").aggregate([([], "count_all"), ("quantity", "sum"), ("revenue", "sum")]))
    totals = (
        pa.concat_tables(per_file)
        .group_by("region")
        .aggregate([("count_all", "sum"), ("quantity_sum", "sum"), ("revenue_sum", "sum")])
        .sort_by("region")
    )
    orders = totals["count_all_sum"]
    aggregates = pa.table({
        "region": totals["region"], "orders": orders, "quantity_total": totals["quantity_sum_sum"],
        "revenue_total": totals["revenue_sum_sum"],
        "revenue_mean": pc.divide(totals["revenue_sum_sum"], pc.cast(orders, pa.float64())),
    })  # fmt: skip
    return aggregates, rows_in, rows_in - pc.sum(orders).as_py()


# -- the job -----------------------------------------------------------------------------------
def load_job() -> ModuleType:
    """Import jobs/sales_summary/main.py under a unique module name."""
    spec = importlib.util.spec_from_file_location("sales_summary_main", JOB_DIR / "main.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Job:
    """The job's ``main`` as the Jobs API runs it, keeping the dataset ``pipeline`` built (for
    its stats) and the aggregates it wrote."""

    def __init__(self, s3: Any) -> None:
        self.module = load_job()
        self.s3 = s3
        self.partials: ray.data.Dataset | None = None
        build = self.module.pipeline

        def keep(ds: ray.data.Dataset) -> ray.data.Dataset:
            self.partials = build(ds)
            return self.partials

        self.module.pipeline = keep

    def run(self, manifest_uri: str, job_id: str) -> tuple[dict[str, Any], pa.Table]:
        output = f"s3://{BUCKET}/outputs/sales-summary/{job_id}/"
        summary = self.module.main(self.module.parse_args(["--manifest", manifest_uri, "--output", output]))
        prefix = f"outputs/sales-summary/{job_id}/aggregates/"
        listing = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        keys = [o["Key"] for o in listing if o["Key"].endswith(".parquet")]  # not the "directory" marker
        import pyarrow.parquet as pq

        tables = [pq.read_table(pa.BufferReader(self.s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())) for k in keys]
        return summary, pa.concat_tables(tables)


def same_result(job: tuple[pa.Table, int, int], reference: tuple[pa.Table, int, int]) -> list[str]:
    """Differences between the job's result and the baseline's (floats to 1e-9 relative)."""
    (got, got_in, got_rejected), (want, want_in, want_rejected) = job, reference
    problems = []
    if (got_in, got_rejected) != (want_in, want_rejected):
        problems.append(f"rows in/rejected {got_in}/{got_rejected}, baseline {want_in}/{want_rejected}")
    got_rows, want_rows = got.to_pylist(), want.to_pylist()
    if [r["region"] for r in got_rows] != [r["region"] for r in want_rows]:
        problems.append(f"regions {[r['region'] for r in got_rows]}, baseline {[r['region'] for r in want_rows]}")
    for g, w in zip(got_rows, want_rows):
        for name, value in w.items():
            equal = math.isclose(g[name], value, rel_tol=1e-9) if isinstance(value, float) else g[name] == value
            if not equal:
                problems.append(f"{g['region']} {name}: {g[name]}, baseline {value}")
    return problems


# -- the profile -------------------------------------------------------------------------------
def profile(partials: ray.data.Dataset, job_seconds: float) -> dict[str, Any]:
    """Where the job's time went, from Ray Data's stats of its one run: per fused stage (summed
    over tasks), the tasks' wall vs CPU time, and the job's time outside the tasks' span."""
    summary = partials.get_stats_summary()
    operators = [op for s in [summary, *summary.parents] for op in s.operators_stats]
    stages: list[dict[str, Any]] = []
    tasks: dict[str, float] = {}
    for op in operators:
        names = op.operator_name.split("->")
        if op.stage_time and len(op.stage_time) == len(names):
            stages += [{"stage": n, "task_s": round(t.sum, 3)} for n, t in zip(names, op.stage_time)]
        elif op.block_transform_time:
            stages.append({"stage": op.operator_name, "task_s": round(op.block_transform_time.sum, 3)})
        if op.wall_time:
            tasks["tasks"] = tasks.get("tasks", 0) + op.wall_time.count
            tasks["task_wall_s"] = round(tasks.get("task_wall_s", 0) + op.wall_time.sum, 3)
            tasks["task_cpu_s"] = round(tasks.get("task_cpu_s", 0) + op.cpu_time.sum, 3)
    if op.block_transform_time and op.function_body_time:
        tasks["input_prep_s"] = round(op.input_prep_time.sum, 3) if op.input_prep_time else None
        tasks["function_body_s"] = round(op.function_body_time.sum, 3)
        tasks["output_build_s"] = round(op.output_build_time.sum, 3) if op.output_build_time else None
    dataset_s = summary.get_total_wall_time()
    return {
        "stages": sorted(stages, key=lambda s: -s["task_s"]),
        **tasks,
        "dataset_wall_s": round(dataset_s, 3),
        "outside_tasks_s": round(job_seconds - dataset_s, 3),
        "stats": partials.stats(),
    }


def print_profile(prof: dict[str, Any], cpus: int, size_mb: float) -> None:
    total = sum(s["task_s"] for s in prof["stages"]) or 1
    print(f"\nprofile: {size_mb:g} MB on {cpus} CPU(s), from Ray Data's stats (task seconds summed over {prof.get('tasks')} tasks)")
    for s in prof["stages"]:
        print(f"  {s['stage']:<36}{s['task_s']:>8.2f}s  {100 * s['task_s'] / total:5.1f}%")
    print(f"  tasks: wall {prof.get('task_wall_s')}s, cpu {prof.get('task_cpu_s')}s (summed); from the first task's start to the "
          f"last one's end {prof['dataset_wall_s']}s; the job's other {prof['outside_tasks_s']}s: planning, the execution's "
          "start and end, combine, Parquet write")  # fmt: skip


# -- the bench ---------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main() -> None:
    args = parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                      RAY_AUTH_MODE="disabled")  # fmt: skip
    bench_started = time.monotonic()
    load_before = round(os.getloadavg()[0], 2)
    if load_before > 0.5:
        print(f"note: the machine's load average is {load_before} before the bench: other processes share the CPUs, "
              "figures will be noisy", flush=True)  # fmt: skip
    with moto_process() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        started = time.monotonic()
        objects = upload_inputs(s3, max(args.sizes_mb), args.file_mb, args.seed)
        print(f"generated and uploaded {len(objects)} objects, {sum(o['size'] for o in objects) / MB:.0f} MB, "
              f"in {time.monotonic() - started:.0f}s")  # fmt: skip

        sizes: list[dict[str, Any]] = []
        for size_mb in args.sizes_mb:
            chosen = first_objects(objects, size_mb)
            job_id = f"bench-{size_mb:g}mb"
            sizes.append({"size_mb": size_mb, "bytes": sum(o["size"] for o in chosen), "files": len(chosen),
                          "job_id": job_id, "manifest": put_manifest(s3, job_id, chosen), "objects": chosen})  # fmt: skip

        job = Job(s3)
        ray.data.DataContext.get_current().per_stage_map_timing = True  # for the profile: one number per stage and block
        profiled: dict[str, Any] = {}
        baseline_runs: dict[float, list[float]] = {size["size_mb"]: [] for size in sizes}
        for cpus in args.cpus:
            # address="local": a Ray of its own, even when other Rays run on this machine
            ray.init(address="local", num_cpus=cpus, include_dashboard=False)
            try:
                job.run(sizes[0]["manifest"], "warm-up")  # workers start and import once, unrecorded
                for size in sizes:
                    runs = []
                    for _ in range(args.repeats):
                        # baseline and job alternate, so both see the same machine (this Ray idles meanwhile)
                        started = time.perf_counter()
                        size["reference"] = baseline(s3, size["objects"])
                        baseline_runs[size["size_mb"]].append(round(time.perf_counter() - started, 3))
                        summary, aggregates = job.run(size["manifest"], size["job_id"])
                        problems = same_result((aggregates, summary["rows_in"], summary["rows_rejected"]), size["reference"])
                        if problems:
                            raise SystemExit(f"the job's result differs from the baseline's: {problems}")
                        runs.append(summary["seconds"])
                    size[f"job_{cpus}cpu_s"], size[f"job_{cpus}cpu_runs"] = median(runs), runs
                    print(f"{size['size_mb']:>6g} MB  job on {cpus} CPU(s) {size[f'job_{cpus}cpu_s']:6.2f}s  runs {runs}  "
                          f"baseline runs {baseline_runs[size['size_mb']][-args.repeats:]}", flush=True)  # fmt: skip
                    if size is sizes[-1] and cpus == max(args.cpus):
                        assert job.partials is not None
                        profiled = {"cpus": cpus, "size_mb": size["size_mb"], **profile(job.partials, runs[-1])}
            finally:
                ray.shutdown()
        for size in sizes:
            size["baseline_runs"] = baseline_runs[size["size_mb"]]
            size["baseline_s"], size["rows"] = median(size["baseline_runs"]), size["reference"][1]

    figures = []
    for size in sizes:
        row = {k: size[k] for k in ("size_mb", "bytes", "files", "rows")}
        row["rows_rejected"] = size["reference"][2]
        row["baseline_s"], row["baseline_runs"] = size["baseline_s"], size["baseline_runs"]
        row["baseline_mb_s"] = round(size["bytes"] / MB / size["baseline_s"], 1)
        for cpus in args.cpus:
            row[f"job_{cpus}cpu_s"], row[f"job_{cpus}cpu_runs"] = size[f"job_{cpus}cpu_s"], size[f"job_{cpus}cpu_runs"]
            row[f"job_{cpus}cpu_mb_s"] = round(size["bytes"] / MB / size[f"job_{cpus}cpu_s"], 1)
        most = max(args.cpus)
        row["job_vs_baseline"] = round(size["baseline_s"] / size[f"job_{most}cpu_s"], 2)
        if 1 in args.cpus and most > 1:
            row[f"speedup_{most}cpu_vs_1cpu"] = round(size["job_1cpu_s"] / size[f"job_{most}cpu_s"], 2)
        figures.append(row)

    print(f"\n{'MB':>7}{'files':>6}{'rows':>11}{'baseline s':>11}" + "".join(f"{f'job {c}CPU s':>11}" for c in args.cpus)
          + f"{'MB/s base':>10}{'MB/s job':>9}{'job/base':>9}{'speed-up':>9}")  # fmt: skip
    most = max(args.cpus)
    for row in figures:
        print(f"{row['bytes'] / MB:>7.0f}{row['files']:>6}{row['rows']:>11,}{row['baseline_s']:>11.2f}"
              + "".join(f"{row[f'job_{c}cpu_s']:>11.2f}" for c in args.cpus)
              + f"{row['baseline_mb_s']:>10.1f}{row[f'job_{most}cpu_mb_s']:>9.1f}{row['job_vs_baseline']:>9.2f}"
              + f"{row.get(f'speedup_{most}cpu_vs_1cpu', float('nan')):>9.2f}")  # fmt: skip
    if profiled:
        print_profile(profiled, profiled["cpus"], profiled["size_mb"])
    total_s = round(time.monotonic() - bench_started, 1)
    print(f"\nbench took {total_s}s")
    write_result(args.out, {
        "figures": figures,
        "profile": profiled,
        "params": {"sizes_mb": args.sizes_mb, "file_mb": args.file_mb, "cpus": args.cpus, "repeats": args.repeats,
                   "seed": args.seed},
        "bench_s": total_s,
        "load_average_before": load_before,
        "load_average_after": round(os.getloadavg()[0], 2),
    })  # fmt: skip


if __name__ == "__main__":
    main()
