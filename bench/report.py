"""Write bench/README.md from bench/results/*.json: the latest figures, one line per figure
saying what it measures. `make bench` runs it last; run it alone after any single bench.

Usage: python bench/report.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
README = REPO_ROOT / "bench" / "README.md"
MB = 1_000_000

# The targets issue #13 set for the job, on 2 cores and >= 1 GB of input.
JOB_VS_BASELINE_TARGET = 0.7
SPEEDUP_TARGET = 1.6

SALES_COLUMNS = {
    "MB": "input size in MB (10**6 bytes) of generated sales CSV, as stored in moto S3",
    "files": "CSV objects of that input (about `--file-mb` each), read by exact version",
    "rows": "CSV rows read (about 2% of them invalid, counted as rejected)",
    "baseline s": "one Python process, no Ray involved: boto3 GetObject per object version, "
    "`pyarrow.csv.read_csv` (pyarrow's threads), the job's rules in `pyarrow.compute`, group-by; from the "
    "first GET to the aggregates; median (min–max) of its runs",
    "job N CPU s": "`jobs/sales_summary/main.py`'s `main` on a local Ray with N CPUs: the summary's `seconds`, "
    "from `read_csv` to the Parquet aggregates written (Ray started and its workers warm); median (min–max)",
    "baseline MB/s, job MB/s": "input MB divided by those seconds (the job on the most CPUs)",
    "job/baseline": "the job's throughput on the most CPUs over the baseline's (baseline s / job s)",
    "speed-up": "the job's 1-CPU seconds over its seconds on the most CPUs (scaling)",
}
STAGES = {
    "ReadCSV": "GetObject of the exact version (boto3, the whole object), then pyarrow parses its CSV (3 of 6 columns)",
    "MapBatches(clean)": "`transforms.clean`: trim, regex validation, casts, invalid rows blanked",
    "MapBatches(add_revenue)": "`transforms.add_revenue`: quantity × unit_price",
    "MapBatches(partial_aggregate)": "`transforms.partial_aggregate`: group-by (is_valid, region), the block's dozen rows",
}
INTAKE_FIGURES = {
    "notifications": "S3 notifications handed to the intake handler (a share of them twice)",
    "redeliveries": "of those, notifications delivered a second time (at-least-once delivery)",
    "intake_s": "seconds for the handler to take all of them, in Lambda SQS batches",
    "events_per_s": "notifications per second through the handler (moto DynamoDB server)",
    "dynamodb_requests": "DynamoDB requests the intake made",
    "dynamodb_requests_per_event": "DynamoDB requests per notification",
    "jobs_created": "jobs recorded (one per batch of at most max_objects_per_job objects)",
    "max_concurrent_clusters": "jobs LAUNCHING at the end (each holds a cluster slot)",
    "jobs_queued": "jobs QUEUED for a slot",
    "objects_missing": "uploaded objects in no manifest (must be 0)",
    "objects_doubled": "objects in more than one manifest (must be 0)",
}
EC2_FIGURES = {
    "ray_up_head_s": "`ray up` of the head: RunInstances, SSH, setup, `ray start --head`",
    "workers_joined_s": "from the start of `ray up` until the head and 2 workers are ALIVE in Ray",
    "provisioning_s": "PROVISIONING -> SUBMITTED: ray up, head IP, Jobs API, workers joined",
    "job_run_s": "SUBMITTED -> TEARING_DOWN: the Ray job as the driver saw it (0.5 s polls)",
    "end_to_terminated_s": "the Ray job's end seen -> the cluster's last instance shutting-down (logs kept first)",
    "ray_down_total_s": "TEARING_DOWN -> final state: terminate by tag, `ray down`, tag check",
}

WARM_FIGURES = {
    "cold s": "job created (the job record's `created_at`: written by the intake from the object's S3 notification "
    "in the bench, by an API-style create in the stand-in test) -> RUNNING (the driver saw the Ray job RUNNING) for "
    "the first job of a pair: a new cluster (`ray start --head` locally, a real `ray up` on the stand-in), then the "
    "Ray job submitted; median (min–max) over the pairs",
    "warm s": "the same for the pair's second job, arriving while the first job's cluster is kept WARM "
    "(`keep_warm_seconds`): admission hands it that cluster, no new cluster, only a new Ray submission; "
    "median (min–max) over the pairs",
    "warm/cold": "warm s over cold s (medians): the share of the start-up a warm cluster leaves",
}
WARM_SOURCES = {  # result file -> (where, how)
    "warm_clusters": ("local Ray (bench)", "`python bench/warm_clusters.py --pairs {pairs}`"),
    "warm_clusters_ec2": ("EC2 stand-in (bench)", "`python bench/warm_clusters.py --backend ec2 --pairs {pairs}`"),
    "warm_clusters_standin_test": ("EC2 stand-in (e2e test)", "one pair measured by `{test}`"),
}


def _spread(median: float, runs: list[float]) -> str:
    return f"{median:.2f} ({min(runs):.2f}–{max(runs):.2f})"


def _machine(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    dirty = " (uncommitted changes)" if m.get("dirty") else ""
    return (f"Measured at commit `{m.get('commit')}`{dirty} on {m.get('cores')} cores, {m.get('memory_gib')} GiB, "
            f"Python {m.get('python')}, Ray {m.get('ray')}, pyarrow {m.get('pyarrow')}.")  # fmt: skip


def sales_section(doc: dict[str, Any]) -> list[str]:
    params, figures = doc["params"], doc["figures"]
    cpus, most = params["cpus"], max(params["cpus"])
    lines = [
        f"## {TITLES['sales_job']}",
        "",
        f"`python bench/sales_job.py --sizes-mb {','.join(f'{s:g}' for s in params['sizes_mb'])} "
        f"--file-mb {params['file_mb']:g} --cpus {','.join(map(str, cpus))} --repeats {params['repeats']}` "
        f"(each time the median of {params['repeats']} runs; the whole bench took {doc.get('bench_s')} s). "
        + _machine(doc)
        + f" Load average (1 min) {doc.get('load_average_before')} before, {doc.get('load_average_after')} after: "
        "above 0 means other processes shared the 2 cores.",
        "",
        "| MB | files | rows | baseline s | " + " | ".join(f"job {c} CPU s" for c in cpus)
        + " | baseline MB/s | job MB/s | job/baseline | speed-up |",
        "|---:|---:|---:|---:|" + "---:|" * len(cpus) + "---:|---:|---:|---:|",
    ]
    for row in figures:
        lines.append(
            f"| {row['bytes'] / MB:,.0f} | {row['files']} | {row['rows']:,} | {_spread(row['baseline_s'], row['baseline_runs'])} | "
            + " | ".join(_spread(row[f"job_{c}cpu_s"], row[f"job_{c}cpu_runs"]) for c in cpus)
            + f" | {row['baseline_mb_s']:.1f} | {row[f'job_{most}cpu_mb_s']:.1f} | {row['job_vs_baseline']:.2f} | "
            + (f"{row[f'speedup_{most}cpu_vs_1cpu']:.2f} |" if f"speedup_{most}cpu_vs_1cpu" in row else "– |")
        )
    lines += ["", "What each figure measures:", ""]
    lines += [f"- **{name}**: {what}" for name, what in SALES_COLUMNS.items()]
    big = [row for row in figures if row["bytes"] >= 1000 * MB]
    if big and most >= 2:
        row = big[-1]
        ratio, speedup = row["job_vs_baseline"], row.get(f"speedup_{most}cpu_vs_1cpu")
        lines += [
            "",
            f"Targets (issue #13, {row['bytes'] / MB:,.0f} MB): job/baseline {ratio:.2f} "
            f"(≥ {JOB_VS_BASELINE_TARGET}: {'met' if ratio >= JOB_VS_BASELINE_TARGET else 'not met'}); "
            + (f"speed-up {speedup:.2f} (≥ {SPEEDUP_TARGET}: {'met' if speedup >= SPEEDUP_TARGET else 'not met'})."
               if speedup is not None else "no 1-CPU run."),
        ]  # fmt: skip
    prof = doc.get("profile")
    if prof:
        total = sum(s["task_s"] for s in prof["stages"]) or 1
        lines += [
            "",
            (
                f"Where the job's time goes ({prof['size_mb']:g} MB, {prof['cpus']} CPUs, one run; Ray Data's "
                "`ds.stats()` with `DataContext.per_stage_map_timing`): the read and the three batch functions run "
                f"fused, one task per file ({prof.get('tasks')} tasks)."
            ),
            "",
            "| stage | task seconds (summed) | share | what it does |",
            "|---|---:|---:|---|",
        ]
        lines += [
            f"| {s['stage']} | {s['task_s']:.2f} | {100 * s['task_s'] / total:.0f}% | {STAGES.get(s['stage'], '')} |"
            for s in prof["stages"]
        ]
        lines += [
            "",
            (
                f"- tasks' wall time {prof.get('task_wall_s')} s, CPU time {prof.get('task_cpu_s')} s (summed): the tasks "
                f"were on a CPU {100 * prof.get('task_cpu_s', 0) / (prof.get('task_wall_s') or 1):.0f}% of their time; the "
                "rest is waiting for moto's GetObject (moto has a process of its own on the same cores) and for a core"
            ),
            (
                f"- from the first task's start to the last one's end: {prof['dataset_wall_s']} s; the job's other "
                f"{prof['outside_tasks_s']} s: planning (file sizes), the execution's start and end, combine, Parquet write"
            ),
        ]  # fmt: skip
    return lines


def intake_section(doc: dict[str, Any]) -> list[str]:
    p = doc["params"]
    lines = [
        f"## {TITLES['intake']}",
        "",
        f"`python bench/intake.py --objects {p['objects']} --duplicates {p['duplicates']} --batch-size {p['batch_size']}` "
        f"(max_objects_per_job {p['max_objects_per_job']}). " + _machine(doc),
        "",
        "| figure | value | what it measures |",
        "|---|---:|---|",
    ]
    lines += [f"| {name} | {doc['figures'][name]:,} | {what} |" for name, what in INTAKE_FIGURES.items() if name in doc["figures"]]
    return lines


def ec2_section(doc: dict[str, Any]) -> list[str]:
    p = doc["params"]
    lines = [
        f"## {TITLES['ec2_standin']}",
        "",
        f"`python bench/ec2_standin.py --runs {p['runs']} --rows {p['rows_per_file']} --files {p['files']}` "
        "(needs Linux and root; `make bench` skips it otherwise). " + _machine(doc),
        "",
        "| figure | min s | median s | max s | what it measures |",
        "|---|---:|---:|---:|---|",
    ]
    for name, what in EC2_FIGURES.items():
        v = doc["summary"][name]
        lines.append(f"| {name} | {v['min']:.1f} | {v['median']:.1f} | {v['max']:.1f} | {what} |")
    return lines


def warm_section(doc: dict[str, Any]) -> list[str]:
    docs = {"warm_clusters": doc}
    for name in ("warm_clusters_ec2", "warm_clusters_standin_test"):
        path = RESULTS_DIR / f"{name}.json"
        if path.exists():
            docs[name] = json.loads(path.read_text())
    keep = {d["params"].get("keep_warm_seconds") for d in docs.values()}
    lines = [
        f"## {TITLES['warm_clusters']}",
        "",
        "Pairs of jobs of a pipeline with `keep_warm_seconds` "
        f"({', '.join(str(k) for k in sorted(keep, key=str))} s), through the product's admission and drivers: "
        "a job (cold), then another one within the window (warm), each a script that sleeps 3 s; the bench drops "
        "one object per job (the intake creates it), the stand-in test creates its jobs as the API does. Between "
        "pairs the cluster's idle time runs out and it is torn down.",
        "",
        "| where | measured by | pairs | cold s | warm s | warm/cold |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, d in docs.items():
        runs, f = d["pairs"], d["figures"]
        cold, warm = f["cold_created_to_running_s"], f["warm_created_to_running_s"]
        where, how = WARM_SOURCES[name]
        how = how.format(pairs=d["params"].get("pairs", len(runs)), test=d["params"].get("test"))
        lines.append(
            f"| {where} | {how} | {len(runs)} | {_spread(cold, [r['cold_created_to_running_s'] for r in runs])} | "
            f"{_spread(warm, [r['warm_created_to_running_s'] for r in runs])} | {warm / cold:.2f} |"
        )
    lines += ["", *(f"- {WARM_SOURCES[n][0]}: " + _machine(d) for n, d in docs.items())]
    lines += ["", "What each figure measures:", ""]
    lines += [f"- **{name}**: {what}" for name, what in WARM_FIGURES.items()]
    return lines


def startup_section(doc: dict[str, Any]) -> list[str]:
    p, modes = doc["params"], ("with bytecode", "without bytecode")
    load = doc["load_average"]
    lines = [
        f"## {TITLES['python_startup']}",
        "",
        f"`python bench/python_startup.py --runs {p['runs']} --clusters {p['clusters']}`. " + _machine(doc)
        + f" Load average (1 min) {load['before']:.2f} before, {load['after']:.2f} after.",
        "",
        "Without bytecode is what an install that compiles none leaves where PYTHONDONTWRITEBYTECODE is set "
        "(this machine's image sets it; uv compiles only when asked): the installed packages compile from source "
        "in every process, every time. `make install` compiles them.",
        "",
        "| what | with bytecode | without bytecode | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, v in doc["imports"].items():
        lines.append(f"| `python -c` {label}: CPU s | {v[modes[0]]:.2f} | {v[modes[1]]:.2f} | {v[modes[1]] / v[modes[0]]:.1f} |")
    for key, what in (("cpu_s", "machine CPU s"), ("jobs_api_s", "s until the Jobs API answers"), ("job_done_s", "s until the job ended"),
                      ("stop_s", "s its teardown took (SIGTERM, up to 5 s, SIGKILL)")):
        if key not in doc["clusters"][modes[0]][0]:
            continue
        w, wo = (statistics.median(r[key] for r in doc["clusters"][m]) for m in modes)
        lines.append(f"| a local cluster's life (3 s job): {what} | {w:.1f} | {wo:.1f} | {wo / w:.1f} |")
    lines += ["", f"A local cluster's life: `ray start --head --block` in its own session, temp dir and ports, the Jobs "
              f"API answering, `ray job submit -- {p['job']}`, the session stopped; medians of {p['clusters']}."]  # fmt: skip
    return lines


def bootstrap_section(doc: dict[str, Any]) -> list[str]:
    p = doc["params"]
    lines = [
        f"## {TITLES['node_bootstrap']}",
        "",
        f"`make check-bootstrap` (`python bench/node_bootstrap.py --suite {p['suite']}`): Debian {p['suite']} "
        f"({p['variant']}, debootstrap {doc['debootstrap_s']:.0f} s), the stock-image setup commands the EC2 backend "
        f"renders, run as Ray runs them, as a sudo user. Ray {p['ray']}, boto3 {p['boto3']}. " + _machine(doc),
        "",
        "| command | exit | s |",
        "|---|---:|---:|",
    ]
    for step in doc["steps"]:
        shown = step["command"][:90] + ("…" if len(step["command"]) > 90 else "")
        lines.append(f"| `{shown.replace('|', chr(92) + '|')}` | {step['exit']} | {step['seconds']:.1f} |")
    if "rerun_s" in doc:
        lines += ["", f"Every command run a second time on the same root: all exit 0, {doc['rerun_s']:.0f} s."]
    lines += ["", f"**A node's bootstrap on a stock image: {doc['bootstrap_s']:.0f} s** "
              f"({'Ray and boto3 at the pins, first on PATH' if doc['ok'] else 'FAILED'}): what an image with the "
              "pinned Ray baked in (`node_ami_has_ray`) saves on every node's first boot (docs/deploy.md, \"Bake a node image\")."]
    return lines


SECTIONS = {
    "sales_job": sales_section, "intake": intake_section, "ec2_standin": ec2_section, "warm_clusters": warm_section,
    "python_startup": startup_section, "node_bootstrap": bootstrap_section,
}  # fmt: skip
TITLES = {
    "sales_job": "The sales-summary job vs a single-process pyarrow pass (`bench/sales_job.py`)",
    "intake": "The intake burst (`bench/intake.py`)",
    "ec2_standin": "The EC2 path on the stand-in (`bench/ec2_standin.py`)",
    "warm_clusters": "Warm vs cold clusters: job created -> RUNNING (`bench/warm_clusters.py`)",
    "python_startup": "Python start-up with and without compiled bytecode (`bench/python_startup.py`)",
    "node_bootstrap": "A node's bootstrap on a stock image (`bench/node_bootstrap.py`, `make check-bootstrap`)",
}


def main() -> int:
    lines = [
        "# Benchmarks",
        "",
        "`make bench` runs every bench below and this report; each bench writes `bench/results/<name>.json`",
        "(its figures, parameters and the machine: cores, memory, Python, Ray and pyarrow versions, git commit).",
        "This file is generated from those by `bench/report.py`: rerun it after running one bench alone.",
        "Everything runs on this machine against moto on 127.0.0.1. Figures only: no test asserts on time.",
    ]
    for name, section in SECTIONS.items():
        path = RESULTS_DIR / f"{name}.json"
        if path.exists():
            lines += ["", *section(json.loads(path.read_text()))]
        else:
            lines += ["", f"## {TITLES[name]}", "", f"No results yet (`bench/results/{name}.json`)."]
    README.write_text("\n".join(lines) + "\n")
    print(f"written to {README.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
