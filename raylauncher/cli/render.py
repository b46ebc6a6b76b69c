"""How the operator commands show things: rich tables and timelines on a terminal, plain lines
elsewhere, JSON with `-o json`. Data goes to stdout, diagnostics to stderr; rich honours
NO_COLOR and drops colour and animation when stdout is not a terminal."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

TERMINAL_STATUSES = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT", "TEARDOWN_FAILED"}
STATUS_STYLE = {
    "SUCCEEDED": "green", "FAILED": "red", "TIMED_OUT": "red", "TEARDOWN_FAILED": "bold red",
    "CANCELLED": "yellow", "RUNNING": "cyan", "SUBMITTED": "cyan", "PROVISIONING": "blue",
    "LAUNCHING": "blue", "QUEUED": "dim", "TEARING_DOWN": "magenta",
}  # fmt: skip
BAR_WIDTH = 30


#: Into a pipe or a file, lines are not wrapped at 80 columns: a script reads whole rows.
UNWRAPPED_WIDTH = 1000


def _console(file: object) -> Console:
    console = Console(file=file, highlight=False)  # type: ignore[arg-type]
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = UNWRAPPED_WIDTH
    return console


def stdout() -> Console:
    return _console(sys.stdout)


def stderr() -> Console:
    return _console(sys.stderr)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def phases(job: dict[str, Any], now: datetime | None = None) -> list[tuple[str, datetime, float | None]]:
    """(status, entered at, seconds spent in it): the last phase of a running job counts to now;
    a terminal status has no duration (None)."""
    now = now or datetime.now(UTC)
    times = [(p["status"], parse_time(p["at"])) for p in job.get("phase_times") or []]
    out: list[tuple[str, datetime, float | None]] = []
    for i, (status, at) in enumerate(times):
        assert at is not None
        if i + 1 < len(times):
            out.append((status, at, (times[i + 1][1] - at).total_seconds()))  # type: ignore[operator]
        else:
            out.append((status, at, None if status in TERMINAL_STATUSES else (now - at).total_seconds()))
    return out


def elapsed(job: dict[str, Any], now: datetime | None = None) -> float | None:
    """From creation to the terminal status (or to now)."""
    spans = phases(job, now)
    if not spans:
        return None
    end = spans[-1][1] if spans[-1][2] is None else (now or datetime.now(UTC))
    return (end - spans[0][1]).total_seconds()


def timeline(job: dict[str, Any], now: datetime | None = None) -> Table:
    """The phase timeline: each phase with when it began, how long it took and a bar to scale."""
    spans = phases(job, now)
    longest = max((s for _, _, s in spans if s), default=0) or 1
    table = Table(box=None, show_header=True, pad_edge=False)
    for column in ("PHASE", "ENTERED (UTC)", "TOOK", ""):
        table.add_column(column)
    for status, at, seconds in spans:
        bar = "█" * max(1, round(BAR_WIDTH * seconds / longest)) if seconds else ""
        table.add_row(status_text(status), at.strftime("%Y-%m-%d %H:%M:%S"), duration(seconds),
                      Text(bar, style=STATUS_STYLE.get(status, "")))  # fmt: skip
    return table


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("JOB", no_wrap=True)
    for column in ("PIPELINE", "TRIGGER", "STATUS", "CREATED (UTC)", "ELAPSED", "REASON"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        created = parse_time(job.get("created_at"))
        table.add_row(
            job["job_id"], job["pipeline"], job.get("trigger", ""), status_text(job["status"]),
            created.strftime("%Y-%m-%d %H:%M:%S") if created else "-", duration(elapsed(job)),
            job.get("reason_code") or "",
        )  # fmt: skip
    return table


def _kv(rows: list[tuple[str, Any]]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        if value not in (None, "", [], {}):
            table.add_row(key, value if isinstance(value, Text) else str(value))
    return table


def cost_line(job: dict[str, Any]) -> str:
    cost = job.get("cost") or {}
    seconds = cost.get("cluster_seconds", job.get("cluster_seconds"))
    estimate = cost.get("estimate_usd")
    text = f"{duration(seconds)} of cluster time" if seconds is not None else "-"
    return text + (f", about ${estimate:.2f}" if isinstance(estimate, int | float) else "")


def kept_line(job: dict[str, Any]) -> str | None:
    """What happened to the cluster after the job: kept warm or held, for how long (idle cost)."""
    if not job.get("kept"):
        return None
    kept = job.get("kept_cluster") or {}
    text = f"cluster kept {job['kept']}"
    if job.get("kept_seconds") is not None:
        text += f" {duration(job['kept_seconds'])} after the job"
    if kept:
        text += f"; cluster {kept.get('status')}, served {len(kept.get('jobs_served') or [])} job(s)"
        if kept.get("status") == "HELD" and kept.get("held_until"):
            text += f", held until {kept['held_until']} (raylauncher jobs release {job['job_id']})"
        elif kept.get("status") in ("WARM", "ASSIGNED") and kept.get("idle_until"):
            text += f", warm until {kept['idle_until']}"
        text += f"; idle {duration(kept.get('warm_seconds'))}, held {duration(kept.get('held_seconds'))}"
    return text


def job_detail(job: dict[str, Any]) -> Group:
    """`jobs show`: the record, the timeline, attempts, inputs, outputs, logs, cluster and cost."""
    inputs = job.get("inputs") or {}
    cluster = job.get("cluster") or {}
    first = inputs.get("first") or []
    header = _kv([
        ("job", job["job_id"]), ("pipeline", job["pipeline"]), ("trigger", job.get("trigger")),
        ("release", job.get("release")),
        ("status", status_text(job["status"]) if not job.get("cancel_requested") or job["status"] in TERMINAL_STATUSES
         else Text(f"{job['status']} (cancel requested)", style="yellow")),
        ("reason", f"{job['reason_code']}: {job.get('reason_message') or ''}" if job.get("reason_code") else None),
        ("ray status", job.get("ray_status")), ("queue position", job.get("queue_position")),
        ("retry at", job.get("retry_at")), ("attempt", job.get("attempt") if (job.get("attempt") or 1) > 1 else None),
        ("params", json.dumps(job.get("params")) if job.get("params") else None),
        ("inputs", f"{inputs.get('count', job.get('object_count'))} object(s)"
                   + (": " + ", ".join(first) + (" …" if inputs.get("count", 0) > len(first) else "") if first else "")),
        ("manifest", job.get("manifest_location")), ("output", job.get("output_location")),
        ("log", job.get("log_location")), ("session logs", job.get("session_logs_location")),
        ("cluster", ", ".join(f"{k} {v}" for k, v in cluster.items() if v not in (None, "")) or None),
        ("cost", cost_line(job)),
        ("warm cluster", f"ran on {job.get('cluster_key')} (no `ray up`)" if job.get("warm") else None),
        ("kept", kept_line(job)),
        ("summary", json.dumps(job["summary"]) if job.get("summary") else None),
    ])  # fmt: skip
    parts: list[Any] = [header, Text(""), Text("Timeline", style="bold"), timeline(job)]
    attempts = job.get("attempts") or []
    if attempts:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("ATTEMPT", "RUN", "ENDED", "REASON", "CLUSTER TIME", "LOG"):
            table.add_column(column, overflow="fold")
        for a in attempts:
            table.add_row(str(a["attempt"]), a["run_id"], status_text(a["status"]),
                          f"{a.get('reason_code') or ''} {a.get('reason_message') or ''}".strip(),
                          duration(a.get("cluster_seconds")), a.get("log_location") or "")  # fmt: skip
        parts += [Text(""), Text("Earlier attempts", style="bold"), table]
    return Group(*parts)


def progress(job: dict[str, Any], now: datetime | None = None) -> Group:
    """`submit --wait` on a terminal: the phase, time per phase, Ray's status, nodes."""
    cluster = job.get("cluster") or {}
    head = Text.assemble(
        (job["job_id"], "bold"), "  ", status_text(job["status"]), f"  elapsed {duration(elapsed(job, now))}",
        f"  ray {job.get('ray_status') or '-'}", f"  nodes {cluster.get('nodes', '-')}",
    )  # fmt: skip
    return Group(head, timeline(job, now))


def state_line(job: dict[str, Any]) -> str:
    """One line per state change when stdout is not a terminal."""
    cluster = job.get("cluster") or {}
    spans = phases(job)
    since = spans[-1][1].strftime("%H:%M:%S") if spans else "-"
    extra = [f"ray={job['ray_status']}" if job.get("ray_status") else "",
             f"nodes={cluster['nodes']}" if cluster.get("nodes") is not None else "",
             f"reason={job['reason_code']}" if job.get("reason_code") else ""]  # fmt: skip
    return " ".join([since, job["job_id"], job["status"], *[e for e in extra if e]])


def pipelines_table(pipelines: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("PIPELINE", "TRIGGER PREFIX", "SCHEDULES", "OUTPUT"):
        table.add_column(column, overflow="fold")
    for p in pipelines:
        trigger = p.get("trigger") or {}
        schedules = ", ".join(s.get("name", "") if isinstance(s, dict) else str(s) for s in p.get("schedules") or [])
        table.add_row(p["name"], trigger.get("prefix", "") if isinstance(trigger, dict) else str(trigger),
                      schedules, p.get("output_prefix", ""))  # fmt: skip
    return table
