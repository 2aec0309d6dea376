"""The job queue: one worker thread per device runs jobs in order for the UI and the API alike.
Jobs report progress as plain data (numbers, text, a preview image) that any face can poll."""
from __future__ import annotations

import itertools
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from webui.core.errors import OutOfMemory, StudioError

_OOM_ADVICE = ("try a smaller width/height or batch size, fewer ControlNet units, or start with --medvram / "
               "--lowvram")


def _out_of_memory(e: BaseException) -> OutOfMemory | None:
    """The studio's error for an out-of-memory failure (CUDA's OutOfMemoryError, the CPU allocator's "can't
    allocate memory", Python's MemoryError), else None."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
            isinstance(e, RuntimeError) and any(s in str(e) for s in ("can't allocate memory", "out of memory"))):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return OutOfMemory(f"out of memory: {first[:300]}; {_OOM_ADVICE}")
    return None


@dataclass
class Progress:
    job: str = ""
    job_no: int = 0           # batch (iteration) index within the job
    job_count: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    textinfo: str = ""
    preview: Any = None       # PIL image of the current latents, when live previews are on
    preview_id: int = 0
    started: float = 0.0
    stage: str = ""           # prefix of textinfo for jobs of many runs (scripts): "Cell 3 of 6: "
    run_no: int = 0           # which run of a many-run job (X/Y/Z cell, loopback pass ...)
    run_count: int = 0        # 0: a job of one run

    @property
    def fraction(self) -> float:
        if not self.job_count or not self.sampling_steps:
            inner = 0.0
        else:
            done = self.job_no * self.sampling_steps + self.sampling_step
            inner = min(1.0, done / (self.job_count * self.sampling_steps))
        if self.run_count > 1:
            return min(1.0, (self.run_no + inner) / self.run_count)
        return inner


@dataclass
class Job:
    id: str
    fn: Callable[[Job], Any]
    description: str = ""
    progress: Progress = field(default_factory=Progress)
    state: str = "queued"     # queued, running, done, failed
    result: Any = None
    error: BaseException | None = None
    interrupted: bool = False
    skipped: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        self.skipped = True

    def wait(self, timeout: float | None = None) -> Any:
        """The job's result; re-raises the job's error."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"job {self.id} still running")
        if self.error is not None:
            raise self.error
        return self.result


class JobQueue:
    def __init__(self, name: str = "worker"):
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.current: Job | None = None
        self.last: Job | None = None
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    def submit(self, fn: Callable[[Job], Any], description: str = "") -> Job:
        job = Job(id=f"job-{next(self._ids)}", fn=fn, description=description)
        self._queue.put(job)
        return job

    def run(self, fn: Callable[[Job], Any], description: str = "") -> Any:
        """Submit and wait for the result."""
        return self.submit(fn, description).wait()

    def pending(self) -> int:
        return self._queue.qsize()

    def interrupt(self) -> None:
        job = self.current
        if job is not None:
            job.interrupt()

    def skip(self) -> None:
        job = self.current
        if job is not None:
            job.skip()

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self.current = job
            job.state = "running"
            job.progress.started = time.time()
            try:
                job.result = job.fn(job)
                job.state = "done"
            except StudioError as e:
                job.error, job.state = e, "failed"
            except Exception as e:  # noqa: BLE001 - a crash loses that job only; the worker keeps serving
                oom = _out_of_memory(e)
                if oom is None:
                    traceback.print_exc()
                elif torch.cuda.is_available():
                    torch.cuda.empty_cache()   # what the failed job held goes back before the next one
                job.error, job.state = oom or e, "failed"
            finally:
                with self._lock:
                    self.current = None
                    self.last = job
                job.done.set()
