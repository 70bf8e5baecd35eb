"""The image worker: a process that runs one image job at a time (``python -m localllm.images.worker``).

It talks JSON lines: jobs and cancels come on stdin, events go out on stdout (a private copy of
the file descriptor; anything else printed goes to stderr). A job is cancelled between steps.
Out of the daemon's process, its memory is its own, measured (``peak_rss``) and returned to the
system when it exits. It imports numpy and the engine only, never onnx or torch.

    in:  {"id": 1, "job": {"folder", "prompt", "negative_prompt", "steps", "guidance", "seed", "scheduler"}}
         {"cancel": 1}
    out: {"event": "ready", "pid"}
         {"id": 1, "event": "progress", "completed", "total"}
         {"id": 1, "event": "done", "png": <base64>, "seconds", "peak_rss", "engine_peak"}
         {"id": 1, "event": "cancelled"} | {"id": 1, "event": "error", "kind", "message"}
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import resource
import sys
import threading
import time
from typing import IO, Any

# weights read from the page cache just in time: the lowest peak (bench/diffusion-results.md); a read-ahead
# thread ("prefetch") pays off only on slow disks, and "ram" holds the whole model
PROVIDER = "disk"


class Cancelled(Exception):
    pass


def peak_rss() -> int:
    """This process's peak resident set so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Worker:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.cancelled: set[int] = set()
        self.pipelines: dict[str, Any] = {}

    def send(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.out.write(json.dumps(event) + "\n")
            self.out.flush()

    def read(self, source: IO[str]) -> None:
        """Reader thread: jobs into the queue, cancels into the set; EOF (the daemon is gone) ends the worker."""
        for line in source:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "cancel" in message:
                self.cancelled.add(int(message["cancel"]))
            elif "job" in message:
                self.jobs.put(message)
        self.jobs.put(None)
        self.cancelled.add(-1)  # any running job: nobody is listening any more

    def pipeline(self, folder: str) -> Any:
        from localllm.diffusion.pipeline import StableDiffusion

        if folder not in self.pipelines:
            self.pipelines = {folder: StableDiffusion(folder, PROVIDER)}  # one model per worker
        return self.pipelines[folder]

    def run(self, job_id: int, job: dict[str, Any]) -> None:
        from localllm.diffusion.pipeline import to_uint8

        start = time.perf_counter()
        sd = self.pipeline(job["folder"])

        def progress(done: int, total: int) -> None:
            if job_id in self.cancelled or -1 in self.cancelled:
                raise Cancelled()
            self.send({"id": job_id, "event": "progress", "completed": done, "total": total})

        latents = sd.latents(job["prompt"], job.get("negative_prompt") or "", int(job["steps"]),
                             float(job["guidance"]), job.get("seed"), job.get("scheduler") or "euler_a", progress)
        if job_id in self.cancelled:
            raise Cancelled()
        pixels = to_uint8(sd.decode(latents))
        del latents
        png = encode_png(pixels)
        self.send({"id": job_id, "event": "done", "png": base64.b64encode(png).decode(),
                   "width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
                   "seconds": time.perf_counter() - start, "peak_rss": peak_rss(),
                   "engine_peak": dict(sd.peak_bytes)})

    def serve(self) -> None:
        self.send({"event": "ready", "pid": os.getpid()})
        while True:
            message = self.jobs.get()
            if message is None:
                return
            job_id = int(message["id"])
            try:
                self.run(job_id, message["job"])
            except Cancelled:
                print(f"image worker {os.getpid()}: cancelled job {job_id} between steps", file=sys.stderr, flush=True)
                self.send({"id": job_id, "event": "cancelled"})
            except Exception as exc:  # one bad job does not end the worker
                from localllm.errors import LocalLLMError

                kind = type(exc).__name__ if isinstance(exc, LocalLLMError) else "InternalError"
                self.send({"id": job_id, "event": "error", "kind": kind, "message": f"{type(exc).__name__}: {exc}"
                           if kind == "InternalError" else str(exc)})
            finally:
                self.cancelled.discard(job_id)


def encode_png(pixels: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not break the protocol
    worker = Worker(out)
    threading.Thread(target=worker.read, args=(sys.stdin,), name="worker-stdin", daemon=True).start()
    worker.serve()


if __name__ == "__main__":
    main()
