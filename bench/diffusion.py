"""The streaming image engine against onnxruntime on full-size SD 1.5 graphs (random weights).

    .venv/bin/python bench/diffusion.py [--cache ~/.cache/localllm-bench] [--steps 4]
        [--precisions fp32,fp16,uint8] [--providers disk,prefetch,ram] [--only text,unet,vae,vaetiled,image]
        [--vae-providers prefetch] [--image-runs fp16:prefetch,uint8:prefetch,fp16:disk]

Once, into the cache (outside the repo): SD 1.5's text encoder (123M), UNet (860M) and VAE decoder
built with random weights and exported in diffusers' ONNX layout (localllm.diffusion.export), then
converted to the streaming layout per precision (for the image: UNet at batch 1, run twice per step
for guidance, and the VAE decoder in 24×24-latent tiles; for the component figures: the UNet at
batch 2 and the VAE decoder whole, as onnxruntime runs them). Then every measurement runs in a
fresh process, onnxruntime's (default CPU session) side by side with ours in the same run: peak
RSS (ru_maxrss) and wall time of the text encoder, one UNet step at 512×512 with batch 2
(guidance), the VAE decode (whole, and in the image's blended tiles), and a whole 512×512 image.
A component's first run and a second, warm one are both timed. Prints a table and the ratios.
Goals: the whole image in <= 300 MB peak RSS (fp16 or uint8), a UNet step <= 2.0x onnxruntime.

The daemon's share: ``daemon-worker [PRECISION]`` runs the image as a daemon job in the worker process
the daemon starts (``localllm.images.worker``) and reports its peak RSS (its own ru_maxrss, and sampled
from outside); ``through-daemon`` does it end to end: the ONNX folder served by the Hub stand-in, pulled
and converted by a real daemon, one 512x512 image by /api/generate, every process's RSS sampled.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LATENT = 64  # 512 × 512 images
PROMPT = "a photo of an astronaut riding a horse on the moon"


# ---------------------------------------------------------------- preparing the cache

def clip_byte_vocab() -> dict[str, bytes]:
    """A CLIP-shaped vocabulary without merges (one token per byte): the real one is not on this machine,
    and for time and memory only the ids' range matters. BOS/EOS keep SD's ids 49406/49407."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": 256 + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": 49406, "<|endoftext|>": 49407}
    return {"vocab.json": json.dumps(vocab).encode(), "merges.txt": b"#version: 0.2\n"}


def prepare(cache: Path, precisions: list[str]) -> None:
    from localllm.diffusion import export

    onnx_dir = cache / "sd15-onnx"
    if not (onnx_dir / "done").exists():
        print("exporting SD 1.5 components with random weights (once) ...", flush=True)
        export.write_layout(onnx_dir, {**export.SD15_SCHEDULER, "clip_sample": False}, clip_byte_vocab())
        for name in ("text_encoder", "vae_decoder", "unet"):
            if not (onnx_dir / name / "model.onnx").exists():  # a process each: torch's memory goes with it
                subprocess.run([sys.executable, __file__, "--cache", str(cache), "export", name], check=True, cwd=ROOT)
        (onnx_dir / "done").touch()
    for precision in precisions:
        out = cache / f"sd15-{precision}"
        if (out / "vae_decoder_whole" / "graph.json").exists() and (out / "unet_batch2" / "graph.json").exists():
            continue
        print(f"converting to the streaming layout, {precision} ...", flush=True)
        subprocess.run([sys.executable, __file__, "--cache", str(cache), "convert", precision], check=True, cwd=ROOT)


def export_component(cache: Path, name: str) -> None:
    from localllm.diffusion import export

    out = cache / "sd15-onnx" / name
    if name == "text_encoder":
        export.export_text_encoder(export.SD15_TEXT, out)
    elif name == "vae_decoder":
        export.export_vae_decoder(export.SD15_VAE, out, latent=LATENT)
    else:
        export.export_unet(export.SD15_UNET, out, latent=LATENT)


def convert(cache: Path, precision: str) -> None:
    from localllm.diffusion.convert import convert_model, convert_pipeline

    src, out = cache / "sd15-onnx", cache / f"sd15-{precision}"
    # the image: UNet at batch 1 (guidance's two halves one after the other: half the activations),
    # VAE in 24x24-latent tiles (4 x 4 of them: the same decoder work as 3 x 3 tiles of 32)
    convert_pipeline(src, out, precision, 512, 512, unet_batch=1, vae_tile=24)
    # the components, as onnxruntime runs them: the UNet step at batch 2, the VAE decoder whole
    convert_model(src / "unet" / "model.onnx", out / "unet_batch2",
                  {"sample": (2, 4, LATENT, LATENT), "timestep": (2,), "encoder_hidden_states": (2, 77, 768)},
                  precision)
    convert_model(src / "vae_decoder" / "model.onnx", out / "vae_decoder_whole",
                  {"latent_sample": (1, 4, LATENT, LATENT)}, precision)


# ---------------------------------------------------------------- one measurement per process

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inputs_for(task: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if task == "text":
        ids = np.full((1, 77), 49407, dtype=np.int32)
        ids[0, :12] = rng.integers(0, 512, 12)
        ids[0, 0] = 49406
        return {"input_ids": ids}
    if task == "unet":
        return {"sample": rng.standard_normal((2, 4, LATENT, LATENT), dtype=np.float32),
                "timestep": np.array([500.0, 500.0], dtype=np.float32),
                "encoder_hidden_states": rng.standard_normal((2, 77, 768), dtype=np.float32)}
    return {"latent_sample": rng.standard_normal((1, 4, LATENT, LATENT), dtype=np.float32)}


COMPONENT = {"text": "text_encoder", "unet": "unet", "vae": "vae_decoder"}


def worker(cache: Path, engine: str, task: str, precision: str, provider: str, steps: int, runs: int) -> dict:
    """Runs in its own process; returns times (s) of each run and the process's peak RSS (MB)."""
    times: list[float] = []
    if engine == "ort":
        import onnxruntime as ort

        task = "vae" if task == "vaetiled" else task  # onnxruntime decodes whole
        if task == "image":
            return ort_image(cache / "sd15-onnx", steps)
        session = ort.InferenceSession(str(cache / "sd15-onnx" / COMPONENT[task] / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        feeds = inputs_for(task)
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
        return {"times": times, "peak_rss_mb": peak_rss_mb()}
    from localllm.diffusion.engine import Engine
    from localllm.diffusion.layout import StreamGraph

    folder = cache / f"sd15-{precision}"
    if task == "vaetiled":  # the image's decoder: 4 x 4 blended tiles of 24 x 24 latents
        from localllm.diffusion.pipeline import StableDiffusion

        sd = StableDiffusion(folder, provider)
        latents = inputs_for("vae")["latent_sample"] * np.float32(0.18215)
        for _ in range(runs):
            start = time.perf_counter()
            sd.decode(latents)
            times.append(time.perf_counter() - start)
        return {"times": times, "peak_rss_mb": peak_rss_mb(),
                "engine_peak_mb": sd.peak_bytes["vae_decoder"] / 1e6}
    if task == "image":
        from localllm.diffusion.pipeline import StableDiffusion

        sd = StableDiffusion(folder, provider)
        start = time.perf_counter()
        sd.generate(PROMPT, "blurry", steps=steps, guidance_scale=7.5, seed=1)
        return {"times": [time.perf_counter() - start], "peak_rss_mb": peak_rss_mb(),
                "engine_peak_mb": {k: v / 1e6 for k, v in sd.peak_bytes.items()}}
    name = {"vae": "vae_decoder_whole", "unet": "unet_batch2"}.get(task, COMPONENT[task])
    with Engine(StreamGraph.load(folder / name), provider) as eng:
        feeds = inputs_for(task)
        for _ in range(runs):
            start = time.perf_counter()
            eng.run(feeds)
            times.append(time.perf_counter() - start)
        return {"times": times, "peak_rss_mb": peak_rss_mb(), "engine_peak_mb": eng.stats.peak_bytes / 1e6}


def ort_image(src: Path, steps: int) -> dict:
    """The same image driven through onnxruntime: our tokenizer and scheduler, ORT sessions for the models."""
    import onnxruntime as ort

    from localllm.diffusion.schedulers import make_scheduler
    from localllm.diffusion.tokenizer import ClipTokenizer

    start = time.perf_counter()
    tok = ClipTokenizer(src / "tokenizer")
    opts = ["CPUExecutionProvider"]
    text = ort.InferenceSession(str(src / "text_encoder" / "model.onnx"), providers=opts)
    cond = text.run(None, {"input_ids": tok(PROMPT).astype(np.int32)})[0]
    uncond = text.run(None, {"input_ids": tok("blurry").astype(np.int32)})[0]
    del text
    unet = ort.InferenceSession(str(src / "unet" / "model.onnx"), providers=opts)
    config = json.loads((src / "scheduler" / "scheduler_config.json").read_text())
    sched = make_scheduler(config, "euler_a", steps)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, LATENT, LATENT), dtype=np.float32) * np.float32(sched.init_noise_sigma)
    for i, t in enumerate(sched.timesteps):
        xin = sched.scale_model_input(x, i)
        eps = unet.run(None, {"sample": np.concatenate([xin, xin]), "timestep": np.array([t, t], np.float32),
                              "encoder_hidden_states": np.concatenate([uncond, cond])})[0]
        x = sched.step(eps[:1] + np.float32(7.5) * (eps[1:] - eps[:1]), i, x, rng)
    del unet
    vae = ort.InferenceSession(str(src / "vae_decoder" / "model.onnx"), providers=opts)
    vae.run(None, {"latent_sample": x / np.float32(0.18215)})
    return {"times": [time.perf_counter() - start], "peak_rss_mb": peak_rss_mb()}


def daemon_worker(cache: Path, precision: str, steps: int) -> dict:
    """The daemon's image worker process (``localllm.images.worker``, as the daemon starts it) on a 512x512
    job over the image's conversion: its peak RSS as it reports it (ru_maxrss) and as sampled from outside."""
    import psutil

    folder = cache / f"sd15-{precision}"
    proc = subprocess.Popen([sys.executable, "-m", "localllm.images.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdin and proc.stdout
    watched, sampled, stop = psutil.Process(proc.pid), [0], False

    def sample() -> None:
        while not stop:
            try:
                sampled[0] = max(sampled[0], watched.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    import threading

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    ready = json.loads(proc.stdout.readline())
    idle_rss = watched.memory_info().rss
    job = {"folder": str(folder), "prompt": PROMPT, "negative_prompt": "blurry", "steps": steps,
           "guidance": 7.5, "seed": 1, "scheduler": "euler_a"}
    start = time.perf_counter()
    proc.stdin.write(json.dumps({"id": 1, "job": job}) + "\n")
    proc.stdin.flush()
    while True:
        event = json.loads(proc.stdout.readline())
        if event["event"] in ("done", "error", "cancelled"):
            break
    elapsed = time.perf_counter() - start
    stop = True
    thread.join()
    proc.stdin.close()
    proc.wait(30)
    if event["event"] != "done":
        return {"error": event.get("message", event["event"])}
    return {"times": [elapsed], "peak_rss_mb": event["peak_rss"] / 2**20,
            "sampled_peak_rss_mb": sampled[0] / 2**20, "idle_rss_mb": idle_rss / 2**20, "pid": ready["pid"],
            "engine_peak_mb": {k: v / 1e6 for k, v in event["engine_peak"].items()}}


def through_daemon(cache: Path, steps: int) -> dict:
    """End to end: the diffusers ONNX folder served by the Hub stand-in, pulled (and converted) by a real
    daemon, then one 512x512 image by /api/generate; every process's RSS sampled from outside."""
    import shutil
    import tempfile
    import threading

    import httpx
    import psutil

    sys.path.insert(0, str(ROOT / "bench"))
    from daemon import start_daemon, stop

    src = cache / "sd15-onnx"
    files = [p for p in sorted(src.rglob("*")) if p.is_file() and p.name != "done"]
    work = Path(tempfile.mkdtemp(prefix="localllm-bench-images-"))
    hub = daemon = None
    peaks: dict[str, int] = {}
    stop_sampling = False

    def sample(root: psutil.Process) -> None:
        while not stop_sampling:
            try:
                for proc in [root, *root.children(recursive=True)]:
                    cmd = " ".join(proc.cmdline())
                    kind = ("worker" if "images.worker" in cmd else "converter" if "convert_process" in cmd
                            else "daemon" if proc.pid == root.pid else "other")
                    peaks[kind] = max(peaks.get(kind, 0), proc.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.05)

    try:
        hub = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fakehub.py"),
                                *[f"--file=bench/sd15-onnx:{p.relative_to(src).as_posix()}={p}" for p in files]],
                               stdout=subprocess.PIPE, text=True)
        endpoint = ""
        while not endpoint:
            line = hub.stdout.readline() if hub.stdout else ""
            if not line:
                raise SystemExit("the Hub stand-in did not start")
            endpoint = line.strip().partition("HF_ENDPOINT=")[2]
        daemon, base_url = start_daemon(work / "home", HF_ENDPOINT=endpoint, HF_HOME=str(work / "hf"))
        sampler = threading.Thread(target=sample, args=(psutil.Process(daemon.pid),), daemon=True)
        sampler.start()
        with httpx.Client(base_url=base_url, timeout=None) as client:
            start = time.perf_counter()
            last = {}
            with client.stream("POST", "/api/pull", json={"model": "hf.co/bench/sd15-onnx"}) as r:
                for line in r.iter_lines():
                    last = json.loads(line)
            pull_seconds = time.perf_counter() - start
            if last != {"status": "success"}:
                return {"error": f"pull: {last}"}
            pull_peaks, peaks = dict(peaks), {}
            body = {"model": "hf.co/bench/sd15-onnx", "prompt": PROMPT, "width": 512, "height": 512, "steps": steps,
                    "options": {"seed": 1, "guidance": 7.5, "negative_prompt": "blurry", "scheduler": "euler_a"},
                    "stream": False}
            start = time.perf_counter()
            reply = client.post("/api/generate", json=body).json()
            seconds = time.perf_counter() - start
            ps = client.get("/api/ps").json()["models"]
        stop_sampling = True
        sampler.join()
        if "image" not in reply:
            return {"error": f"generate: {reply}"}
        mb = 2**20
        return {"times": [seconds], "peak_rss_mb": peaks.get("worker", 0) / mb,
                "daemon_peak_rss_mb": peaks.get("daemon", 0) / mb, "pull_and_convert_s": pull_seconds,
                "pull_peaks_mb": {k: v / mb for k, v in pull_peaks.items()},
                "budgeted_mb": ps[0]["size"] / mb if ps else None}
    finally:
        stop_sampling = True
        stop(daemon, hub)
        shutil.rmtree(work, ignore_errors=True)


def measure(cache: Path, engine: str, task: str, precision: str = "-", provider: str = "-", steps: int = 4,
            runs: int = 2) -> dict:
    cmd = [sys.executable, __file__, "--cache", str(cache), "worker", engine, task, precision, provider,
           str(steps), str(runs)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "localllm-bench")
    parser.add_argument("--steps", type=int, default=4, help="UNet steps of the whole image (both engines)")
    parser.add_argument("--precisions", default="fp32,fp16,uint8")
    parser.add_argument("--providers", default="disk,prefetch,ram")
    parser.add_argument("--only", default="text,unet,vae,vaetiled,image")
    parser.add_argument("--vae-providers", default="prefetch", help="providers for the (slow) whole VAE decode")
    parser.add_argument("--image-runs", default="fp16:prefetch,uint8:prefetch,fp16:disk",
                        help="precision:provider pairs for the whole image")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()
    if args.rest and args.rest[0] == "worker":
        engine, task, precision, provider, steps, runs = args.rest[1:]
        print(json.dumps(worker(args.cache, engine, task, precision, provider, int(steps), int(runs))))
        return
    if args.rest and args.rest[0] == "daemon-worker":  # daemon-worker [PRECISION]: only the worker's figure
        result = daemon_worker(args.cache, args.rest[1] if len(args.rest) > 1 else "fp16", args.steps)
        print(json.dumps(result, indent=2))
        return
    if args.rest and args.rest[0] == "through-daemon":  # pull + convert + one image through a real daemon
        print(json.dumps(through_daemon(args.cache, args.steps), indent=2))
        return
    if args.rest and args.rest[0] == "convert":
        convert(args.cache, args.rest[1])
        return
    if args.rest and args.rest[0] == "export":
        export_component(args.cache, args.rest[1])
        return
    precisions, providers = args.precisions.split(","), args.providers.split(",")
    prepare(args.cache, precisions)
    rows = []

    def show(label: str, result: dict, ref: dict | None) -> None:
        if "error" in result:
            line = f"{label:38s} error: {result['error']}"
        else:
            t = result["times"]
            warm = t[-1]
            line = f"{label:38s} first {t[0]:7.2f}s  warm {warm:7.2f}s  peak RSS {result['peak_rss_mb']:7.0f} MB"
            if ref and "error" not in ref:
                line += (f"  | x{warm / ref['times'][-1]:.2f} time (warm), x{t[0] / ref['times'][0]:.2f} (first),"
                         f" x{result['peak_rss_mb'] / ref['peak_rss_mb']:.3f} RSS")
        print(line, flush=True)
        rows.append({"label": label, **result})

    for task in args.only.split(","):
        ref = measure(args.cache, "ort", task, steps=args.steps, runs=1 if task == "image" else 2)
        show(f"{task:5s} onnxruntime", ref, None)
        if task == "image":
            combos = [tuple(pair.split(":")) for pair in args.image_runs.split(",")]
        else:
            chosen = args.vae_providers.split(",") if task.startswith("vae") else providers
            combos = [(precision, provider) for precision in precisions for provider in chosen]
        for precision, provider in combos:
            result = measure(args.cache, "ours", task, precision, provider, args.steps,
                             runs=1 if task == "image" else 2)
            show(f"{task:5s} localllm {precision:5s} {provider:8s}", result, ref)
        if task == "image":  # the same image as a daemon job: the worker process the daemon starts
            for precision in dict.fromkeys(p for p, _ in combos):
                show(f"image daemon worker {precision:5s}", daemon_worker(args.cache, precision, args.steps), ref)
    (args.cache / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
