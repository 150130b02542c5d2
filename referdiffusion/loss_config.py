"""The loss weights and options: one dataclass for `losses.compute_losses` and the trainer's config.

Kept apart from `losses.py` (which imports torch) so that reading a training config stays light.
"""

from __future__ import annotations

from dataclasses import dataclass

from refcoco_edit.errors import InputError

TERMS = ("noise", "mask", "edit", "rcl")
RCL_WEIGHTINGS = ("none", "sqrt_alpha")
MASK_RESOLUTIONS = ("latent", "image")


@dataclass
class LossConfig:
    """Weights of the four terms (0 switches a term off) and their options."""

    noise_weight: float = 1.0
    mask_weight: float = 1.0
    edit_weight: float = 1.0
    rcl_weight: float = 1.0
    dice_smooth: float = 1.0
    rcl_weighting: str = "none"  # none | sqrt_alpha
    mask_resolution: str = "latent"  # latent | image: where L_mask compares M^ with M (see losses.py)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise InputError("loss config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Everything wrong with the settings (empty when they are sound)."""
        out = [f"{t}_weight must be >= 0, got {self.weight(t)}" for t in TERMS
               if not 0 <= self.weight(t) < float("inf")]  # also refuses NaN
        if self.rcl_weighting not in RCL_WEIGHTINGS:
            out.append(f"rcl_weighting must be 'none' or 'sqrt_alpha', got {self.rcl_weighting!r}")
        if self.mask_resolution not in MASK_RESOLUTIONS:
            out.append(f"mask_resolution must be 'latent' or 'image', got {self.mask_resolution!r}")
        if not self.dice_smooth >= 0:
            out.append(f"dice_smooth must be >= 0, got {self.dice_smooth}")
        return out

    def weight(self, term: str) -> float:
        return float(getattr(self, f"{term}_weight"))

    def enabled(self, term: str) -> bool:
        return self.weight(term) > 0
