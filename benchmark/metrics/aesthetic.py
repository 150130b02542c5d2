"""AP: the LAION improved aesthetic predictor, a linear-stack MLP head over CLIP ViT-L/14 embeddings.

The predictor maps the L2-normalised CLIP image embedding (768-d for ViT-L/14) through
Linear(768, 1024) - Dropout(0.2) - Linear(1024, 128) - Dropout(0.2) - Linear(128, 64) - Dropout(0.1)
- Linear(64, 16) - Linear(16, 1): no activation functions, as LAION trained and released it; the
parameter names are those of LAION's `nn.Sequential` (`layers.0/2/4/6/7.weight|bias`), so its released
state dict (e.g. `sac+logos+ava1-l14-linearMSE.pth`) loads as is. Dropout is inactive (eval mode).

Weights come from the resolver name `aesthetic` (no default: the user points it at the `.pth` /
`.safetensors` file or a folder holding one, optionally with a config.json). The CLIP model is
`clip-vit-l14` unless the head's config.json names another (`"clip_model"`, as the `tiny-aesthetic`
test head does with `tiny-clip`) or the caller passes `clip_model=`. Without configured weights the
metric is reported unavailable with the resolver's message; it never runs a randomly initialised
head. A `.pth` is read with `torch.load(weights_only=True)`, which refuses pickled code.

Scored on the whole output image (at the source's size). Higher is better (LAION's scale is about
1-10 with real weights).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmark.metrics.base import Metric, MetricInput, as_rgb_image
from benchmark.metrics.clip_metrics import DEFAULT_CLIP, ClipBackbone, get_clip
from refcoco_edit.errors import ModelNotAvailableError

logger = logging.getLogger(__name__)

DEFAULT_HEAD = "aesthetic"
HIDDEN_SIZES = (1024, 128, 64, 16)
DROPOUTS = (0.2, 0.2, 0.1)  # after the first three Linear layers
LINEAR_INDICES = (0, 2, 4, 6, 7)  # positions of the Linear layers in LAION's nn.Sequential
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def build_head(input_size: int, hidden_sizes: Sequence[int] = HIDDEN_SIZES) -> Any:
    """LAION's head as an `nn.Module` whose `layers` Sequential has their layout and names."""
    import torch
    from torch import nn

    widths = [input_size, *hidden_sizes, 1]
    modules: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        modules.append(nn.Linear(n_in, n_out))
        if i < len(DROPOUTS):
            modules.append(nn.Dropout(DROPOUTS[i]))

    class AestheticHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_size = input_size
            self.layers = nn.Sequential(*modules)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    return AestheticHead()


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in ("model.safetensors", "aesthetic.safetensors"):
            if (path / name).is_file():
                return path / name
        found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
        if len(found) == 1:
            return found[0]
        if found:
            raise ValueError(f"{path} holds several weight files ({', '.join(p.name for p in found)}); point at one")
    raise ValueError(f"no aesthetic head weights (.safetensors/.pth) at {path}")


def read_state_dict(path: Path) -> dict[str, Any]:
    """The head's state dict from a .safetensors or a torch-saved .pth (weights only)."""
    import pickle

    import torch

    file = _weights_file(path)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{file} is not a readable state dict: {exc}") from exc
    except Exception as exc:  # safetensors raises its own SafetensorError
        if type(exc).__name__ == "SafetensorError":
            raise ValueError(f"{file} is not a readable safetensors file: {exc}") from exc
        raise
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{file} holds a {type(state).__name__}, not a state dict")
    # Accept keys with or without the Sequential's "layers." prefix, and DataParallel's "module.".
    fixed = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        fixed[key if key.startswith("layers.") else f"layers.{key}"] = value
    return fixed


def load_head(source: str) -> tuple[Any, dict[str, Any]]:
    """(head in eval mode, config dict) from a resolved local file or folder."""
    path = Path(source)
    if not path.exists():
        raise ValueError(f"{source} is not a local file or folder (the aesthetic head is not on the Hub)")
    config: dict[str, Any] = {}
    config_file = path / "config.json" if path.is_dir() else None
    if config_file is not None and config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
    state = read_state_dict(path)
    expected = {f"layers.{i}.{p}" for i in LINEAR_INDICES for p in ("weight", "bias")}
    if set(state) != expected:
        raise ValueError(
            f"{source}: not a LAION aesthetic head: parameters {sorted(state)} (expected {sorted(expected)})"
        )
    widths = [int(state[f"layers.{i}.weight"].shape[1]) for i in LINEAR_INDICES]
    head = build_head(widths[0], widths[1:])
    head.load_state_dict(state, strict=True)
    return head.eval(), config


class AestheticScore(Metric):
    name = "aesthetic"
    higher_is_better = True
    description = "LAION aesthetic predictor (MLP head on normalised CLIP ViT-L/14 embeddings)"

    def __init__(
        self,
        *,
        aesthetic_model: str = DEFAULT_HEAD,
        clip_model: str | None = None,
        overrides: Mapping[str, str] | None = None,
        device: str | None = None,
        batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = aesthetic_model
        self.clip_model = clip_model
        self.overrides = dict(overrides or {})
        self.device = device
        self.batch_size = batch_size
        self.requires = (aesthetic_model, clip_model or DEFAULT_CLIP)
        self.head: Any = None
        self.backbone: ClipBackbone | None = None

    def availability(self) -> str | None:
        if self._unavailable is not None:
            return self._unavailable
        from refcoco_edit.models.resolver import resolve

        try:
            resolve(self.model_name, self.overrides, build=False)
            if self.clip_model is not None:
                resolve(self.clip_model, self.overrides, build=False)
        except ModelNotAvailableError as exc:
            return str(exc)
        return None

    def setup(self) -> None:
        from refcoco_edit.models.resolver import load_pretrained

        head, config = load_pretrained(self.model_name, load_head, self.overrides)
        clip_name = self.clip_model or config.get("clip_model") or DEFAULT_CLIP
        if clip_name.startswith("tiny-") and not self.model_name.startswith("tiny-") and self.clip_model is None:
            # Random stand-in weights only when the user names a tiny model explicitly.
            raise ModelNotAvailableError(
                f"aesthetic head {self.model_name!r} asks for the tiny test model {clip_name!r} in its "
                f"config.json; pass clip_model= to choose the CLIP model explicitly"
            )
        self.requires = (self.model_name, clip_name)
        backbone = get_clip(clip_name, self.overrides, self.device, self.batch_size)
        if backbone.projection_dim != head.input_size:
            raise ModelNotAvailableError(
                f"aesthetic head {self.model_name!r} takes {head.input_size}-d embeddings but CLIP "
                f"{clip_name!r} gives {backbone.projection_dim}-d ones; use the CLIP model the head was trained on"
            )
        self.head = head.to(backbone.device)
        self.backbone = backbone

    def score_images(self, images: Sequence[Any]) -> list[float]:
        import torch

        assert self.backbone is not None and self.head is not None
        emb = torch.from_numpy(self.backbone.embed_images([as_rgb_image(im) for im in images]))
        with torch.inference_mode():
            scores = self.head(emb.to(self.backbone.device)).squeeze(-1).double().cpu()
        return [float(s) for s in scores]

    def score_batch(self, batch: Sequence[MetricInput]) -> dict[str, list[float | None]]:
        return {self.name: list(self.score_images([s.output_image for s in batch]))}


def aesthetic_score(
    image: Any,
    *,
    aesthetic_model: str = DEFAULT_HEAD,
    clip_model: str | None = None,
    overrides: Mapping[str, str] | None = None,
    device: str | None = None,
) -> float:
    """The aesthetic score of one image; raises ModelNotAvailableError without configured weights."""
    metric = AestheticScore(aesthetic_model=aesthetic_model, clip_model=clip_model, overrides=overrides, device=device)
    metric.setup()
    return metric.score_images([image])[0]
