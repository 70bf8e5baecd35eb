"""A conversion in a child process: ``onnx`` and a whole fp32 UNet never enter the daemon's memory.

``convert_in_child`` runs ``python -m localllm.images.convert_process SRC DST PRECISION W H`` and
relays its progress (JSON lines on stdout). The child converts into ``DST`` only; the caller owns
what happens to it. A child whose parent died (a killed daemon) stops at its next progress step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .. import errors

UNET_BATCH = 1  # guidance's halves one after the other: half the UNet's activations
VAE_TILE = 24  # latents; 4 x 4 blended tiles at 512 x 512 keep the decoder under 100 MB
Progress = Callable[[str, int, int], None]


def convert_in_child(src: Path, dst: Path, precision: str, width: int, height: int,
                     progress: Progress | None = None) -> None:
    """Convert the diffusers ONNX folder ``src`` into ``dst``; raises the child's error as ours.
    ``width``/``height`` 0: the size the UNet was trained for (:func:`trained_size`)."""
    cmd = [sys.executable, "-m", "localllm.images.convert_process", str(src), str(dst), precision,
           str(width), str(height)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(),
                                                                      os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    result: dict = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if "component" in event and progress:
                progress(event["component"], event["done"], event["total"])
            else:
                result = event
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.wait()
    finally:
        if proc.poll() is None:  # our caller was interrupted: the child goes too
            proc.kill()
            proc.wait()
    if result.get("ok"):
        return
    if "error" in result:
        kind = getattr(errors, result["error"], None)
        if isinstance(kind, type) and issubclass(kind, errors.LocalLLMError):
            raise kind(result["message"])
        raise errors.InvalidModelFile(f"converting {src.name} failed: {result['message']}")
    tail = stderr.strip().splitlines()[-1:] if stderr else []
    raise errors.LocalLLMError(f"the conversion process ended with status {proc.returncode}"
                               + (f": {tail[0]}" if tail else ""))


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent.parent)


def trained_size(src: Path, fallback: int = 512) -> tuple[int, int]:
    """(width, height) the UNet was made for: fixed in its ONNX input, else diffusers' ``sample_size``."""
    import onnx

    model = onnx.load(str(src / "unet" / "model.onnx"), load_external_data=False)
    sample = next((i for i in model.graph.input if i.name == "sample"), None)
    if sample is not None:
        dims = [d.dim_value for d in sample.type.tensor_type.shape.dim]
        if len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
            return dims[3] * 8, dims[2] * 8
    config = src / "unet" / "config.json"
    if config.exists():
        try:
            size = json.loads(config.read_text()).get("sample_size")
        except ValueError:
            size = None
        if isinstance(size, int) and 0 < size <= 256:
            return size * 8, size * 8
        if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and 0 < v <= 256 for v in size):
            return size[1] * 8, size[0] * 8
    return fallback, fallback


def main(argv: list[str]) -> None:
    src, dst, precision, width, height = argv
    parent = os.getppid()
    out = sys.stdout

    totals: dict[str, int] = {}

    def step(component: str, done: int, total: int) -> None:
        if os.getppid() != parent:
            os._exit(3)  # the daemon is gone: nobody will commit this
        if done == total == 1 and totals.get(component, 1) > 1:
            done = total = totals[component]  # the converter's "finished" call: the op count, all done
        totals[component] = total
        if done == total or done % 25 == 0:
            out.write(json.dumps({"component": component, "done": done, "total": total}) + "\n")
            out.flush()

    try:
        from ..diffusion.convert import convert_pipeline

        w, h = int(width), int(height)
        if not w or not h:
            w, h = trained_size(Path(src))
        convert_pipeline(Path(src), Path(dst), precision, h, w, unet_batch=UNET_BATCH,
                         vae_tile=VAE_TILE, progress=step)
    except errors.LocalLLMError as exc:
        out.write(json.dumps({"error": type(exc).__name__, "message": exc.message}) + "\n")
        return
    except (ValueError, KeyError, OSError) as exc:
        out.write(json.dumps({"error": "InvalidModelFile", "message": f"{type(exc).__name__}: {exc}"}) + "\n")
        return
    out.write(json.dumps({"ok": True}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
