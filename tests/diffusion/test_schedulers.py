"""Each scheduler against diffusers' own implementation, on a made-up denoiser and the same noise."""

from __future__ import annotations

import numpy as np
import pytest

from localllm.diffusion.export import SD15_SCHEDULER
from localllm.diffusion.schedulers import make_scheduler

# diffusers builds its sigmas from torch tensors with np.array(...): numpy 2 warns about it
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def fake_eps(x: np.ndarray, t: float) -> np.ndarray:
    """A smooth stand-in for a UNet: depends on the sample and the timestep."""
    return (0.3 * x + 0.1 * np.sin(x * 3 + t / 100)).astype(np.float32)


DIFFUSERS = {
    "euler_a": "EulerAncestralDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
}


def diffusers_loop(name: str, config: dict, steps: int, seed: int, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    import diffusers
    import torch

    cls = getattr(diffusers, DIFFUSERS[name])
    sched = cls.from_config(config)
    sched.set_timesteps(steps)
    rng = np.random.default_rng(seed)
    if name == "euler_a":
        from diffusers.schedulers import scheduling_euler_ancestral_discrete as module

        monkeypatch.setattr(module, "randn_tensor",
                            lambda shape, **kw: torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)))
    x = torch.from_numpy(rng.standard_normal((1, 4, 8, 8), dtype=np.float32) * np.float32(sched.init_noise_sigma))
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t).numpy()
        eps = torch.from_numpy(fake_eps(xin, float(t)))
        x = sched.step(eps, t, x).prev_sample
    return x.numpy()


def our_loop(name: str, config: dict, steps: int, seed: int) -> np.ndarray:
    sched = make_scheduler(config, name, steps)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 4, 8, 8), dtype=np.float32) * np.float32(sched.init_noise_sigma)
    for i, t in enumerate(sched.timesteps):
        x = sched.step(fake_eps(sched.scale_model_input(x, i), float(t)), i, x, rng)
    return x


@pytest.mark.parametrize("name", list(DIFFUSERS))
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 4, 20])
def test_matches_diffusers(name: str, spacing: str, steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {**SD15_SCHEDULER, "clip_sample": False, "timestep_spacing": spacing}
    want = diffusers_loop(name, config, steps, seed=11, monkeypatch=monkeypatch)
    got = our_loop(name, config, steps, seed=11)
    assert np.abs(got - want).max() <= 2e-4 * max(1.0, float(np.abs(want).max())), (name, spacing, steps)


def test_unknown_scheduler_names_the_choices() -> None:
    with pytest.raises(ValueError, match="euler_a"):
        make_scheduler(SD15_SCHEDULER, "heun", 10)


@pytest.mark.parametrize("name", list(DIFFUSERS))
def test_v_prediction_matches_diffusers(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SD 2.x's 768 models predict v, not the noise."""
    config = {**SD15_SCHEDULER, "clip_sample": False, "prediction_type": "v_prediction", "timestep_spacing": "leading"}
    want = diffusers_loop(name, config, 6, seed=3, monkeypatch=monkeypatch)
    got = our_loop(name, config, 6, seed=3)
    assert np.abs(got - want).max() <= 2e-4 * max(1.0, float(np.abs(want).max())), name
