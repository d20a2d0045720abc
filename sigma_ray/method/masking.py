"""Token masks for masked video modeling, in numpy so data workers can make them next to the clip.

Tokens are laid out time-major: index = t * (h * w) + y * w + x over a grid of (t, h, w) tubelets.
A mask is a bool vector of length t*h*w with True = masked. Every mask of a given grid and ratio masks
exactly the same number of tokens, so masks (and the visible-token sequences they select) stack into batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from sigma_ray.infra.checks import ConfigError, check_choice, check_range

MaskKind = Literal["tube", "random"]


@dataclass(frozen=True)
class MaskConfig:
    """``tube``: one spatial mask repeated over all time slices (the paper's); ``random``: any tokens."""

    kind: MaskKind = "tube"
    ratio: float = 0.9

    def validate(self) -> None:
        check_choice("kind", self.kind, ("tube", "random"))
        check_range("ratio", self.ratio, 0.0, 1.0, lo_open=True, hi_open=True)


def num_masked(grid: tuple[int, int, int], ratio: float, kind: MaskKind = "tube") -> int:
    """Masked tokens per clip: ``t * int(ratio * h * w)`` for tube masks, ``int(ratio * t*h*w)`` for random."""
    t, h, w = grid
    n = t * int(ratio * h * w) if kind == "tube" else int(ratio * t * h * w)
    if n == 0 or n == t * h * w:
        raise ConfigError(f"ratio = {ratio} masks {n} of {t * h * w} tokens on grid {grid}: "
                          "at least one token must be masked and one visible")
    return n


def tube_mask(grid: tuple[int, int, int], ratio: float, rng: np.random.Generator) -> np.ndarray:
    """(t*h*w,) bool: the same ``int(ratio*h*w)`` spatial positions masked in each of the t time slices."""
    t, h, w = grid
    num_masked(grid, ratio, "tube")
    spatial = np.zeros(h * w, dtype=bool)
    spatial[rng.permutation(h * w)[: int(ratio * h * w)]] = True
    return np.tile(spatial, t)


def random_mask(grid: tuple[int, int, int], ratio: float, rng: np.random.Generator) -> np.ndarray:
    """(t*h*w,) bool with exactly ``int(ratio*t*h*w)`` tokens masked anywhere in space-time."""
    n = int(np.prod(grid))
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: num_masked(grid, ratio, "random")]] = True
    return mask


class MaskGenerator:
    """Makes masks of one kind, grid and ratio. ``gen(rng)`` -> (N,) bool; ``gen.batch(b, rng)`` -> (b, N)."""

    def __init__(self, grid: tuple[int, int, int], config: MaskConfig = MaskConfig()):
        self.grid = tuple(int(g) for g in grid)
        self.config = config
        self.num_masked = num_masked(self.grid, config.ratio, config.kind)
        self._fn = tube_mask if config.kind == "tube" else random_mask

    @property
    def num_tokens(self) -> int:
        return int(np.prod(self.grid))

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        return self._fn(self.grid, self.config.ratio, rng)

    def batch(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([self(rng) for _ in range(batch_size)])


def token_grid(frames: int, height: int, width: int, tubelet: int = 2, patch: int = 16) -> tuple[int, int, int]:
    """The (t, h, w) tubelet grid of a clip; raises ConfigError naming the size that does not divide."""
    for name, size, div in (("frames", frames, tubelet), ("height", height, patch), ("width", width, patch)):
        if size <= 0 or size % div:
            raise ConfigError(f"{name} = {size} must be a positive multiple of {div}")
    return frames // tubelet, height // patch, width // patch
