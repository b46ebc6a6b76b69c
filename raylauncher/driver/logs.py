"""Keeping Ray's logs in S3: the Ray job's log while it runs, the head's session logs at the end.

The Ray job's log (`logs_key_of(job)`) is PUT whole every `flush_interval_s` while the job is
followed and once more at the end, so `raylauncher jobs logs --follow` reads S3 only: it works
after the cluster is gone and needs no route to the head. The object only ever grows and every
version is a prefix of the next (a reader range-GETs from the byte offset it has read up to):

- while the job runs, only whole lines are uploaded (up to the last newline);
- the log is kept up to `head_bytes` (cut at a line end); beyond that nothing more is fetched
  while the job runs, and at the end the last `tail_bytes` are appended after a one-line notice
  saying how much was left out (the notice sits where the gap is, not at the top: a notice at
  the top would move every offset a follower has read);
- an upload is skipped when nothing was added; a failed fetch or upload is logged and skipped
  (the job and its teardown never wait on it).

The head's session logs (`/tmp/ray/session_latest/logs`: raylet, GCS, dashboard, autoscaler
monitor, worker stdout/stderr) are fetched by the cluster backend before teardown and kept as
`jobs/<job>/logs/ray-session.tar.gz` (attempt n: `ray-session-a<n>.tar.gz`), each file cut to
its last `SESSION_FILE_TAIL_BYTES` and the archive to `SESSION_TOTAL_BYTES` (what was cut or
left out is listed in RAYLAUNCHER-NOTICE.txt inside the archive).
"""

from __future__ import annotations

import atexit
import io
import logging
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from raylauncher.model import Job, job_prefix, logs_key_of
from raylauncher.objects import ObjectStore

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
#: The Ray job's log kept in S3: its first JOB_LOG_HEAD_BYTES and, when it is longer, its last
#: JOB_LOG_TAIL_BYTES.
JOB_LOG_HEAD_BYTES = 48 * 2**20
JOB_LOG_TAIL_BYTES = 16 * 2**20
#: Session logs: each file's last SESSION_FILE_TAIL_BYTES, at most SESSION_TOTAL_BYTES in all
#: (before compression).
SESSION_FILE_TAIL_BYTES = 16 * 2**20
SESSION_TOTAL_BYTES = 128 * 2**20
NOTICE_NAME = "RAYLAUNCHER-NOTICE.txt"


def session_logs_key_of(job: Job) -> str:
    """Where an attempt's Ray session logs are kept: logs/ray-session.tar.gz, then -a2, …"""
    suffix = "" if job.attempt <= 1 else f"-a{job.attempt}"
    return job_prefix(job.job_id) + f"logs/ray-session{suffix}.tar.gz"


class JobLogShipper:
    """Copies one attempt's Ray job log to S3, growing, while it runs and at its end."""

    def __init__(
        self,
        objects: ObjectStore,
        job: Job,
        fetch: Callable[[], str],
        flush_interval_s: float,
        head_bytes: int = JOB_LOG_HEAD_BYTES,
        tail_bytes: int = JOB_LOG_TAIL_BYTES,
    ) -> None:
        self.key = logs_key_of(job)
        self._objects = objects
        self._job_id = job.job_id
        self._fetch = fetch
        self._interval_s = flush_interval_s
        self._head_bytes = head_bytes
        self._tail_bytes = tail_bytes
        self._kept = b""  # what the object holds now
        self._uploaded = False
        self._full = False  # the head is kept whole: nothing more to do until the end
        self._last_try = time.monotonic()

    @property
    def uploaded(self) -> bool:
        """True once the object exists (the record may point at it)."""
        return self._uploaded

    def due(self) -> bool:
        return not self._full and time.monotonic() - self._last_try >= self._interval_s

    def flush(self) -> bool:
        """While the job runs: upload the whole lines logged so far if there are new ones.
        Never raises; returns True if the object grew."""
        self._last_try = time.monotonic()
        try:
            data = self._fetch().encode()
        except Exception as err:  # noqa: BLE001 - the log is best-effort; the job goes on
            log.warning("job %s: could not fetch the Ray job log (%s: %s); next try in %.0fs",
                        self._job_id, type(err).__name__, err, self._interval_s)  # fmt: skip
            return False
        if len(data) > self._head_bytes:
            self._full = True
            body = _cut_at_line_end(data, self._head_bytes)
        else:
            body = _cut_at_line_end(data, len(data))
        if not body:
            return False  # no whole line yet: nothing to show (an empty object would say "no log")
        return self._put(body)

    def finish(self) -> str | None:
        """At the end: upload the whole log (head, and the tail when it is longer than the cap).
        Never raises; returns the key if the object exists."""
        try:
            data = self._fetch().encode()
        except Exception as err:  # noqa: BLE001
            log.warning("job %s: could not fetch the Ray job log at the end (%s: %s)",
                        self._job_id, type(err).__name__, err)  # fmt: skip
            if self._uploaded:  # what was kept so far stays, and says it is not the whole log
                self._put(self._kept + b"\n[raylauncher: the rest of the Ray job log could not be fetched]\n")
            return self.key if self._uploaded else None
        if len(data) <= self._head_bytes:
            body = data
        else:
            head = _cut_at_line_end(data, self._head_bytes)
            tail = data[-self._tail_bytes :]
            if data[-len(tail) - 1 : -len(tail)] != b"\n" and b"\n" in tail[:-1]:
                tail = tail[tail.index(b"\n") + 1 :]  # from the first whole line on
            if len(head) + len(tail) >= len(data):
                body = data
            else:
                left_out = len(data) - len(head) - len(tail)
                notice = (f"\n[raylauncher: the Ray job log has {len(data)} bytes; {left_out} bytes left out here; "
                          f"its last {len(tail)} bytes follow]\n").encode()  # fmt: skip
                body = head + notice + tail
        self._put(body)
        return self.key if self._uploaded else None

    def _put(self, body: bytes) -> bool:
        if self._uploaded and (len(body) <= len(self._kept) or not body.startswith(self._kept)):
            return False  # nothing new (or not a continuation: an object never shrinks or changes)
        try:
            self._objects.put_bytes(self.key, body, TEXT)
        except Exception as err:  # noqa: BLE001
            log.warning("job %s: could not upload the Ray job log (%s: %s)", self._job_id, type(err).__name__, err)
            return False
        self._kept, self._uploaded = body, True
        return True


def _cut_at_line_end(data: bytes, limit: int) -> bytes:
    """The longest prefix of data[:limit] that ends with a newline (empty if there is none)."""
    end = data.rfind(b"\n", 0, limit)
    return data[: end + 1] if end >= 0 else b""


CollectLogs = Callable[[Path], "Path | None"]


def keep_session_logs(objects: ObjectStore, job: Job, collect: CollectLogs, timeout_s: float) -> str | None:
    """Fetch the head's session logs with `collect(dest)` (run in a thread: whatever it does,
    this returns within `timeout_s` plus the upload), pack them and upload the archive.
    Never raises; returns the key, or None when there was nothing to keep."""
    tmp = Path(tempfile.mkdtemp(prefix="rl-session-logs-"))
    result: dict[str, Path | None] = {}
    # Whoever ends last removes `tmp`: this call, or a collector that outlived its deadline
    # (it may still write there until it ends).
    ended = threading.Lock()
    others_done = [False]

    def last_one_out() -> None:
        with ended:
            if others_done[0]:
                shutil.rmtree(tmp, ignore_errors=True)
            others_done[0] = True

    def target() -> None:
        try:
            result["dir"] = collect(tmp / "logs")
        except Exception:  # noqa: BLE001
            log.warning("job %s: could not collect the Ray session logs", job.job_id, exc_info=True)
        finally:
            last_one_out()

    worker = threading.Thread(target=target, name=f"session-logs-{job.job_id}", daemon=True)
    try:
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            # A collector still running when this process exits is killed with it (a daemon
            # thread), and its `finally` never runs: the process removes `tmp` on its way out.
            atexit.register(shutil.rmtree, tmp, True)
            log.warning("job %s: collecting the Ray session logs took over %.0fs; going on without them",
                        job.job_id, timeout_s)  # fmt: skip
            return None
        found = result.get("dir")
        if found is None or not found.is_dir() or not any(p.is_file() for p in found.rglob("*")):
            log.info("job %s: no Ray session logs to keep", job.job_id)
            return None
        key = session_logs_key_of(job)
        objects.put_bytes(key, pack_logs(found, "ray-session-logs"), "application/gzip")
        log.info("job %s: Ray session logs kept at %s", job.job_id, key)
        return key
    except Exception:  # noqa: BLE001 - losing them must never keep the cluster up
        log.exception("job %s: could not keep the Ray session logs", job.job_id)
        return None
    finally:
        last_one_out()


def pack_logs(src: Path, arcname: str, file_tail_bytes: int = SESSION_FILE_TAIL_BYTES,
              total_bytes: int = SESSION_TOTAL_BYTES) -> bytes:  # fmt: skip
    """A tar.gz of the regular files under `src` (as `arcname/...`), each cut to its last
    `file_tail_bytes`, at most `total_bytes` in all (smallest files first: many small logs say
    more than one huge one); what was cut or left out is listed in NOTICE_NAME."""
    files = sorted((p for p in src.rglob("*") if p.is_file() and not p.is_symlink()), key=lambda p: p.stat().st_size)
    notes: list[str] = []
    budget = total_bytes
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in files:
            name = path.relative_to(src).as_posix()
            try:
                size = path.stat().st_size
                with path.open("rb") as f:
                    if size > file_tail_bytes:
                        f.seek(size - file_tail_bytes)
                    data = f.read(file_tail_bytes)
            except OSError as err:
                notes.append(f"{name}: not readable ({err})")
                continue
            if len(data) > budget:
                notes.append(f"{name}: left out ({size} bytes; the archive's {total_bytes} bytes were used up)")
                continue
            if len(data) < size:
                notes.append(f"{name}: only its last {len(data)} of {size} bytes")
            _add(tar, f"{arcname}/{name}", data)
            budget -= len(data)
        if notes:
            _add(tar, f"{arcname}/{NOTICE_NAME}", ("\n".join(notes) + "\n").encode())
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))
