"""The part of Ray's Jobs API the driver uses, with a deadline on every call."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from raylauncher.driver.outcome import RAY_TERMINAL

log = logging.getLogger(__name__)

STOP_WAIT_S = 30.0  # how long a stopped Ray job gets to wind down before teardown


class JobsClient(Protocol):
    """The part of Ray's JobSubmissionClient the driver uses."""

    def list_jobs(self) -> list[Any]: ...
    def submit_job(self, **kwargs: Any) -> str: ...
    def get_job_info(self, job_id: str) -> Any: ...
    def get_job_logs(self, job_id: str) -> str: ...
    def stop_job(self, job_id: str) -> bool: ...


def ray_status(info: Any) -> str:
    status = getattr(info, "status", info)
    return str(getattr(status, "value", status))


class TimedJobsClient:
    """Ray's JobSubmissionClient sets no HTTP timeout: a head that accepts connections but never
    answers would hold the driver (and the cluster) forever. Every call here has a deadline."""

    def __init__(self, inner: JobsClient, timeout_s: float) -> None:
        self._inner = inner
        self._timeout_s = timeout_s

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result: dict[str, Any] = {}

        def target() -> None:
            try:
                result["value"] = getattr(self._inner, name)(*args, **kwargs)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                result["error"] = err

        worker = threading.Thread(target=target, name=f"ray-jobs-{name}", daemon=True)
        worker.start()
        worker.join(self._timeout_s)
        if worker.is_alive():
            raise TimeoutError(f"Ray Jobs API call {name} did not answer within {self._timeout_s:.0f}s")
        if "error" in result:
            raise result["error"]
        return result["value"]

    def list_jobs(self) -> list[Any]:
        return list(self._call("list_jobs"))

    def submit_job(self, **kwargs: Any) -> str:
        return str(self._call("submit_job", **kwargs))

    def get_job_info(self, job_id: str) -> Any:
        return self._call("get_job_info", job_id)

    def get_job_logs(self, job_id: str) -> str:
        return str(self._call("get_job_logs", job_id))

    def stop_job(self, job_id: str) -> bool:
        return bool(self._call("stop_job", job_id))


def stop_quietly(client: JobsClient, submission_id: str) -> str | None:
    """Ask Ray to stop the job and give it a moment; teardown follows whatever happens.
    Returns Ray's last word on the job's status (None if Ray could not be asked)."""
    status: str | None = None
    try:
        status = ray_status(client.get_job_info(submission_id))
        if status in RAY_TERMINAL:
            return status
        client.stop_job(submission_id)
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            status = ray_status(client.get_job_info(submission_id))
            if status in RAY_TERMINAL:
                break
            time.sleep(0.5)
    except Exception:  # noqa: BLE001
        log.warning("job %s: could not stop the Ray job cleanly", submission_id, exc_info=True)
    return status
