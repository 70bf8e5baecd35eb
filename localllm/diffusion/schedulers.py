"""Samplers, as diffusers implements them (same timesteps, sigmas and update rules), in numpy.

``make_scheduler(config, name, steps)`` reads a ``scheduler_config.json`` (betas, spacing,
prediction type) and returns a scheduler with ``timesteps``, ``init_noise_sigma``,
``scale_model_input`` and ``step``. Randomness (Euler Ancestral's noise) comes from the
``numpy.random.Generator`` passed to ``step``, so a seed fixes the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

NAMES = ("euler_a", "euler", "ddim", "dpmpp_2m")


def alphas_cumprod(config: Mapping[str, Any]) -> np.ndarray:
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    schedule = config.get("beta_schedule", "scaled_linear")
    if schedule == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float32) ** 2
    elif schedule == "linear":
        betas = np.linspace(start, end, n, dtype=np.float32)
    else:
        raise ValueError(f"beta_schedule {schedule!r} is not supported (scaled_linear, linear)")
    return np.cumprod(1.0 - betas, axis=0)


class Scheduler:
    timesteps: np.ndarray
    init_noise_sigma: float = 1.0

    def __init__(self, config: Mapping[str, Any], steps: int) -> None:
        if steps < 1:
            raise ValueError("steps must be at least 1")
        self.config = dict(config)
        self.steps = steps
        self.train_steps = int(config.get("num_train_timesteps", 1000))
        self.alphas_cumprod = alphas_cumprod(config)
        self.prediction = config.get("prediction_type", "epsilon")
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction!r} is not supported")

    def scale_model_input(self, x: np.ndarray, i: int) -> np.ndarray:
        return x

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class _Sigmas(Scheduler):
    """Euler-family timesteps: k-diffusion sigmas interpolated at diffusers' spaced timesteps, then 0."""

    def __init__(self, config: Mapping[str, Any], steps: int) -> None:
        super().__init__(config, steps)
        spacing = config.get("timestep_spacing", "linspace")
        t = self.train_steps
        if spacing == "linspace":
            ts = np.linspace(0, t - 1, steps, dtype=np.float32)[::-1].copy()
        elif spacing == "leading":
            ratio = t // steps
            ts = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.float32) + config.get("steps_offset", 0)
        elif spacing == "trailing":
            ts = (np.arange(t, 0, -t / steps)).round().copy().astype(np.float32) - 1
        else:
            raise ValueError(f"timestep_spacing {spacing!r} is not supported")
        base = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        sigmas = np.interp(ts, np.arange(0, len(base)), base)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = ts.astype(np.float32)
        top = float(self.sigmas.max())
        self.init_noise_sigma = top if spacing in ("linspace", "trailing") else (top**2 + 1) ** 0.5

    def scale_model_input(self, x: np.ndarray, i: int) -> np.ndarray:
        return x / np.float32((float(self.sigmas[i]) ** 2 + 1) ** 0.5)

    def denoised(self, model_output: np.ndarray, i: int, x: np.ndarray) -> np.ndarray:
        sigma = np.float32(self.sigmas[i])
        if self.prediction == "epsilon":
            return x - sigma * model_output
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)


class EulerAncestral(_Sigmas):
    def step(self, model_output: np.ndarray, i: int, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sigma, sigma_to = float(self.sigmas[i]), float(self.sigmas[i + 1])
        x0 = self.denoised(model_output, i, x)
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        out = x + (x - x0) / np.float32(sigma) * np.float32(sigma_down - sigma)
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        return (out + noise * np.float32(sigma_up)).astype(np.float32)


class Euler(_Sigmas):
    def step(self, model_output: np.ndarray, i: int, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sigma = float(self.sigmas[i])
        x0 = self.denoised(model_output, i, x)
        return (x + (x - x0) / np.float32(sigma) * np.float32(float(self.sigmas[i + 1]) - sigma)).astype(np.float32)


class DDIM(Scheduler):
    """DDIM with eta = 0 (deterministic)."""

    def __init__(self, config: Mapping[str, Any], steps: int) -> None:
        super().__init__(config, steps)
        t = self.train_steps
        spacing = config.get("timestep_spacing", "leading")
        if spacing == "leading":
            ts = (np.arange(0, steps) * (t // steps)).round()[::-1].copy().astype(np.int64)
            ts += config.get("steps_offset", 0)
        elif spacing == "trailing":
            ts = np.round(np.arange(t, 0, -t / steps)).astype(np.int64) - 1
        elif spacing == "linspace":
            ts = np.linspace(0, t - 1, steps).round()[::-1].copy().astype(np.int64)
        else:
            raise ValueError(f"timestep_spacing {spacing!r} is not supported")
        self.timesteps = ts
        self.final_alpha = 1.0 if config.get("set_alpha_to_one", True) else float(self.alphas_cumprod[0])

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        t = int(self.timesteps[i])
        prev = t - self.train_steps // self.steps
        a_t = float(self.alphas_cumprod[t])
        a_prev = float(self.alphas_cumprod[prev]) if prev >= 0 else self.final_alpha
        if self.prediction == "epsilon":
            x0 = (x - (1 - a_t) ** 0.5 * model_output) / a_t**0.5
            eps = model_output
        else:
            x0 = a_t**0.5 * x - (1 - a_t) ** 0.5 * model_output
            eps = a_t**0.5 * model_output + (1 - a_t) ** 0.5 * x
        if self.config.get("clip_sample", False):
            limit = float(self.config.get("clip_sample_range", 1.0))
            x0 = np.clip(x0, -limit, limit)
        return (a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps).astype(np.float32)


class DPMSolverPP2M(Scheduler):
    """DPM-Solver++(2M), diffusers' defaults: midpoint second order, first order at the first and last step."""

    def __init__(self, config: Mapping[str, Any], steps: int) -> None:
        super().__init__(config, steps)
        t = self.train_steps
        spacing = config.get("timestep_spacing", "linspace")
        if spacing == "linspace":
            ts = np.linspace(0, t - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif spacing == "leading":
            ratio = t // (steps + 1)
            ts = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
            ts += config.get("steps_offset", 0)
        elif spacing == "trailing":
            ts = np.arange(t, 0, -t / steps).round().copy().astype(np.int64) - 1
        else:
            raise ValueError(f"timestep_spacing {spacing!r} is not supported")
        base = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.sigmas = np.concatenate([np.interp(ts, np.arange(0, len(base)), base), [0.0]]).astype(np.float32)
        self.timesteps = ts
        self._x0: list[np.ndarray] = []

    @staticmethod
    def _alpha_sigma(sigma: float) -> tuple[float, float]:
        alpha = 1.0 / (sigma**2 + 1) ** 0.5
        return alpha, sigma * alpha

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if i == 0:
            self._x0 = []
        alpha_s, sigma_s = self._alpha_sigma(float(self.sigmas[i]))
        if self.prediction == "epsilon":
            x0 = (x - np.float32(sigma_s) * model_output) / np.float32(alpha_s)
        else:
            x0 = np.float32(alpha_s) * x - np.float32(sigma_s) * model_output
        self._x0 = [*self._x0[-1:], x0]
        sigma_next = float(self.sigmas[i + 1])
        if sigma_next == 0.0:  # last step: lambda = inf, the update is x0 itself
            return x0.astype(np.float32)
        alpha_t, sigma_t = self._alpha_sigma(sigma_next)
        lam_t, lam_s = np.log(alpha_t) - np.log(sigma_t), np.log(alpha_s) - np.log(sigma_s)
        h = lam_t - lam_s
        coef = alpha_t * (np.exp(-h) - 1.0)
        out = np.float32(sigma_t / sigma_s) * x - np.float32(coef) * x0
        if i > 0 and len(self._x0) == 2:
            alpha_p, sigma_p = self._alpha_sigma(float(self.sigmas[i - 1]))
            r0 = (lam_s - (np.log(alpha_p) - np.log(sigma_p))) / h
            d1 = (1.0 / r0) * (x0 - self._x0[0])
            out = out - np.float32(0.5 * coef) * d1.astype(np.float32)
        return out.astype(np.float32)


SCHEDULERS: dict[str, type[Scheduler]] = {
    "euler_a": EulerAncestral, "euler": Euler, "ddim": DDIM, "dpmpp_2m": DPMSolverPP2M,
}


def make_scheduler(config: Mapping[str, Any], name: str = "euler_a", steps: int = 20) -> Scheduler:
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}: use one of {', '.join(NAMES)}") from None
    return cls(config, steps)
