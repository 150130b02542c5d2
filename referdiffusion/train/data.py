"""RefCOCO-Edit rows -> training tensors, the step-based sampler that makes resuming exact, and a
stage's data loader built from the two (`stage_loader`).

Stage 1 (`refcoco-edit synth`) and stage 2 (`refcoco-edit export`) write the same format, so one
dataset class serves both. Per sample it gives:

- `source_pixel_values`, `edited_pixel_values`: 3 x R x R in [-1, 1] (R = `resolution`);
- `pixel_mask`: 1 x R x R, 1 on the picture and 0 on the padding (`aspect` mode), all 1 otherwise;
- `source_mask` (M) and `edit_mask` (M_e): 1 x R x R at image resolution. Resizing a 0/1 mask needs
  a rule: M is area-averaged (each pixel gets the share of the object under it, a soft target, the same
  rule `losses.soft_downsample` applies at latent resolution, so a thin object is not lost); M_e is
  "any": a pixel is edited when any source pixel under it is, so L_rcl never pulls an edited pixel
  back towards the source;
- `input_ids`, `attention_mask` (L), the tokenized prompt, and `edit_token_mask` (L): 1 at the tokens
  of the edit text P_e, found from the prompt's `edit_spans` through the tokenizer's offsets. With a
  stage's `prompt_style`, prompt and spans come from the row's `generation["prompts"][style]` (what
  `refcoco-edit synth` records for both stage-1 recipes) instead of its `prompt` column;
- `sample_id` (a string; the collate function keeps a list), to name the samples of a bad batch.

The image protocol (`resize`), one for training and evaluation by default:

- `"aspect"` (default): exactly what `rie-bench run` gives a model, `benchmark.methods._common.working_image`:
  the longer side scaled to R, the aspect kept, each side rounded to the nearest multiple of 8
  (`refcoco_edit.pipelines.base.working_size`), Lanczos resampling. For batching, the result is put at the
  top left of an R x R canvas padded with 0 (mid grey); the padding is the same in source and target and
  outside every mask, so to the losses it is unchanged background. `pixel_mask` marks the picture.
- `"stretch"` maps the whole picture to R x R (the paper's recipe at 480; aspect ratios change).
- `"crop"` scales the shorter side to R and keeps the centre (aspect kept; an object near the border
  may be cut).

Every sample is checked as it is read: source and edited image of the same size, masks of that size,
spans inside the prompt; a bad row raises `DataError` naming its `sample_id`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from refcoco_edit.errors import DataError, InputError

if TYPE_CHECKING:
    import datasets
    import torch
    from accelerate import Accelerator
    from PIL import Image
    from transformers import PreTrainedTokenizerBase

    from referdiffusion.train.config import StageConfig, TrainConfig

log = logging.getLogger(__name__)

# Columns the trainer reads; a RefCOCO-Edit export and `refcoco-edit synth` output have them all.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "sample_id", "source_image", "edited_image", "source_mask", "edit_mask", "prompt", "edit_spans",
)
# Kept when present: the picture's id and the generation record (stage-1 prompts, picture hash), read by
# `prompt_style` and by the training manifest.
OPTIONAL_COLUMNS: tuple[str, ...] = ("image_id", "generation")
SAMPLE_PREFIX = "sample:"
TRAIN_SPLIT = "train"


def open_dataset(spec: str, split: str | None = "train", max_samples: int | None = None, *,
                 allow_eval_splits: bool = False) -> datasets.Dataset:
    """A `datasets.Dataset` with the trainer's columns from a dataset folder, Hub id or `sample:*` name.

    `split=None` joins every split of the dataset (in the export's split order). Splits other than
    `train` are RefCOCO-Edit's evaluation splits: refused unless `allow_eval_splits` (then a warning).
    """
    from refcoco_edit.dataset.io import load_refcoco_edit

    if split not in (None, TRAIN_SPLIT):
        _check_eval_splits(spec, [split], allow_eval_splits)
    path: str | Path = spec
    if spec.startswith(SAMPLE_PREFIX):
        from referdiffusion.train.sample_data import materialize_sample_dataset

        path = materialize_sample_dataset(spec)
    try:
        ds = load_refcoco_edit(path, split=split)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"cannot load dataset {spec!r}" + (f" split {split!r}" if split else "")
                        + f": {type(exc).__name__}: {exc}") from None
    if hasattr(ds, "keys"):  # a DatasetDict: split None, or a folder without split selection
        if split is not None:
            if split not in ds:
                raise InputError(f"dataset {spec!r} has no split {split!r}; it has: {', '.join(ds.keys())}")
            ds = ds[split]
        else:
            import datasets

            from refcoco_edit.dataset.export import split_sort_key

            _check_eval_splits(spec, [k for k in ds.keys() if k != TRAIN_SPLIT], allow_eval_splits)
            parts = [ds[k] for k in sorted(ds.keys(), key=split_sort_key)]
            ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(f"dataset {spec!r}" + (f" split {split!r}" if split else "") + f" lacks column(s) "
                        f"{', '.join(missing)}; the trainer needs {', '.join(REQUIRED_COLUMNS)} (as written by "
                        "`refcoco-edit export` or `refcoco-edit synth`)")
    ds = ds.select_columns(list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in ds.column_names])
    if len(ds) == 0:
        raise DataError(f"dataset {spec!r}" + (f" split {split!r}" if split else "") + " has no rows")
    if max_samples is not None and max_samples < len(ds):
        ds = ds.select(range(max_samples))
    return ds


def _check_eval_splits(spec: str, splits: list[str], allow: bool) -> None:
    if not splits:
        return
    names = ", ".join(sorted(splits))
    if not allow:
        raise InputError(f"dataset {spec!r}: split(s) {names} are evaluation splits of RefCOCO-Edit; train on "
                         f"{TRAIN_SPLIT!r} (stages.<name>.split=train), or set stages.<name>.allow_eval_splits=true "
                         "to use them anyway")
    log.warning("dataset %r: training on evaluation split(s) %s; the model will have seen pictures RefCOCO-Edit "
                "evaluates on (the training manifest records them, and `rie-bench run` reports the overlap)",
                spec, names)


# ---------------------------------------------------------------------------------------------
# one sample


Box = tuple[int, int, int, int]


def _resize_box(size: tuple[int, int], resolution: int, mode: str) -> tuple[tuple[int, int], Box | None]:
    """(size to resize to, crop box after resizing or None) for an image of `size` (w, h). In `aspect`
    mode the box is the R x R canvas around the resized picture at the top left (PIL pads while cropping)."""
    if mode == "stretch":
        return (resolution, resolution), None
    if mode == "aspect":
        from refcoco_edit.pipelines.base import working_size

        return working_size(size, resolution), (0, 0, resolution, resolution)
    if mode != "crop":
        raise ValueError(f"unknown resize mode {mode!r}")
    w, h = size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return (nw, nh), (left, top, left + resolution, top + resolution)


def protocol_image(image: Image.Image, size: int) -> Image.Image:
    """The picture as the model sees it in training and in `rie-bench run` (the `aspect` protocol): longer
    side `size`, aspect kept, sides rounded to multiples of 8, Lanczos; no padding."""
    from PIL import Image

    from refcoco_edit.pipelines.base import working_size

    image = image if image.mode == "RGB" else image.convert("RGB")
    work = working_size(image.size, size)
    return image if work == image.size else image.resize(work, Image.Resampling.LANCZOS)


def image_to_tensor(image: Image.Image, resolution: int, mode: str = "aspect") -> torch.Tensor:
    """A PIL image as a 3 x R x R float tensor in [-1, 1]: `aspect` (the evaluation's protocol, padded
    with 0), `stretch` or `crop` (bicubic)."""
    import torch
    from PIL import Image

    if mode == "aspect":
        pic = np.asarray(protocol_image(image, resolution), dtype=np.float32) / 127.5 - 1.0
        arr = np.zeros((resolution, resolution, 3), np.float32)
        h, w = min(resolution, pic.shape[0]), min(resolution, pic.shape[1])
        arr[:h, :w] = pic[:h, :w]
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    size, box = _resize_box(image.size, resolution, mode)
    im = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    if box is not None:
        im = im.crop(box)
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def mask_to_tensor(mask: np.ndarray, resolution: int, mode: str = "aspect", rule: str = "area") -> torch.Tensor:
    """A 0/1 (H, W) mask as a 1 x R x R float tensor: `area` (soft share of object) or `any` (0/1); the same
    geometry as `image_to_tensor` (0 on the padding)."""
    import torch
    from PIL import Image

    m = np.asarray(mask, dtype=np.float32)
    size, box = _resize_box((m.shape[1], m.shape[0]), resolution, mode)
    im = Image.fromarray(m, mode="F").resize(size, Image.Resampling.BOX)
    if box is not None:
        im = im.crop(box)  # outside the picture (aspect mode's padding) PIL fills 0
    out = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    if rule == "any":
        out = (out > 1e-6).astype(np.float32)
    elif rule != "area":
        raise ValueError(f"unknown mask rule {rule!r}")
    return torch.from_numpy(np.ascontiguousarray(out))[None]


def pixel_mask(size: tuple[int, int], resolution: int, mode: str = "aspect") -> torch.Tensor:
    """1 x R x R: 1 where the picture is, 0 on `aspect` mode's padding (all 1 in the other modes)."""
    import torch

    out = torch.zeros(1, resolution, resolution) if mode == "aspect" else torch.ones(1, resolution, resolution)
    if mode == "aspect":
        from refcoco_edit.pipelines.base import working_size

        w, h = working_size(size, resolution)
        out[:, :min(h, resolution), :min(w, resolution)] = 1
    return out


@dataclass(frozen=True)
class DataOptions:
    resolution: int = 512
    resize: str = "aspect"
    max_token_length: int | None = None
    prompt_style: str | None = None  # mask | expression: the stage-1 prompt from generation["prompts"]


class EditingDataset:
    """A torch map-style dataset over an opened RefCOCO-Edit `datasets.Dataset` (see the module docstring)."""

    def __init__(self, dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase,
                 options: DataOptions = DataOptions()) -> None:
        from referdiffusion.text import fast_tokenizer

        missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
        if options.prompt_style is not None and "generation" not in dataset.column_names:
            missing.append(f"generation (prompt_style={options.prompt_style} reads the prompts `refcoco-edit synth` "
                           "records there)")
        if missing:
            raise DataError(f"dataset lacks column(s) {', '.join(missing)}")
        if options.resize not in ("aspect", "stretch", "crop"):
            raise InputError(f"unknown resize mode {options.resize!r}; use aspect, stretch or crop")
        from refcoco_edit.dataset.io import undecoded

        # rows decoded here, within the pixel limit, not by `datasets` (no limit; follows path cells)
        self.dataset = undecoded(dataset)
        self.options = options
        # One fast tokenizer for ids and offsets (the slow CLIP tokenizer has no offsets); same ids.
        self.tokenizer = fast_tokenizer(tokenizer)
        self.max_length = options.max_token_length or tokenizer.model_max_length

    def __len__(self) -> int:
        return len(self.dataset)

    def _prompt(self, row: dict[str, Any], sid: str) -> tuple[str, Any]:
        return stage_prompt(row, self.options.prompt_style, sid)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from refcoco_edit.dataset.io import decode_image, decode_mask
        from referdiffusion.text import spans_to_token_mask, tokenize

        row = self.dataset[int(index)]
        sid = str(row["sample_id"])
        res, mode = self.options.resolution, self.options.resize
        try:
            source = decode_image(row["source_image"])
            edited = decode_image(row["edited_image"])
            masks = {name: decode_mask(row[name]) for name in ("source_mask", "edit_mask")}
        except DataError as exc:
            raise DataError(f"sample {sid}: {exc}") from None
        if edited.size != source.size:
            raise DataError(f"sample {sid}: edited_image is {edited.size[0]}x{edited.size[1]} but source_image is "
                            f"{source.size[0]}x{source.size[1]}")
        for name, m in masks.items():
            if m.shape != (source.size[1], source.size[0]):
                raise DataError(f"sample {sid}: {name} is {m.shape[1]}x{m.shape[0]} but source_image is "
                                f"{source.size[0]}x{source.size[1]}")
        prompt, raw_spans = self._prompt(row, sid)
        try:
            spans = [(int(s), int(e)) for s, e in raw_spans]
        except (TypeError, ValueError):
            raise DataError(f"sample {sid}: edit_spans {raw_spans!r} are not [start, end) pairs") from None
        try:
            tokens = tokenize(self.tokenizer, [prompt], self.max_length)
            edit_tokens = spans_to_token_mask(self.tokenizer, [prompt], [spans], self.max_length)
        except ValueError as exc:
            raise DataError(f"sample {sid}: {exc}") from None
        return {
            "sample_id": sid,
            "source_pixel_values": image_to_tensor(source, res, mode),
            "edited_pixel_values": image_to_tensor(edited, res, mode),
            "source_mask": mask_to_tensor(masks["source_mask"], res, mode, "area"),
            "edit_mask": mask_to_tensor(masks["edit_mask"], res, mode, "any"),
            "pixel_mask": pixel_mask(source.size, res, mode),
            "input_ids": tokens["input_ids"][0],
            "attention_mask": tokens["attention_mask"][0],
            "edit_token_mask": edit_tokens[0],
        }


def stage_prompt(row: dict[str, Any], style: str | None, sid: str = "?") -> tuple[str, Any]:
    """(prompt, edit spans) of a row: its own, or with `style` the one `generation["prompts"][style]` holds."""
    if style is None:
        return str(row["prompt"]), row["edit_spans"]
    import json

    raw = row.get("generation")
    try:
        generation = json.loads(raw) if isinstance(raw, str) else (raw or {})
    except ValueError:
        raise DataError(f"sample {sid}: generation is not JSON") from None
    record = (generation.get("prompts") or {}).get(style) if isinstance(generation, dict) else None
    if record is None:
        if isinstance(generation, dict) and generation.get("prompt_style") == style:
            return str(row["prompt"]), row["edit_spans"]
        raise DataError(f"sample {sid}: no {style!r} prompt recorded (prompt_style={style} needs stage-1 data "
                        "written by `refcoco-edit synth`; set the stage's prompt_style to null for other data)")
    return str(record["prompt"]), record["edit_spans"]


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of a list of samples; `sample_id` stays a list of strings."""
    import torch

    out: dict[str, Any] = {"sample_id": [it["sample_id"] for it in items]}
    for key in items[0]:
        if key != "sample_id":
            out[key] = torch.stack([it[key] for it in items])
    return out


# ---------------------------------------------------------------------------------------------
# order


class StepSampler:
    """An endless, seeded stream of dataset indices whose position is a function of the step alone.

    The global stream is the concatenation of permutations of range(n), one per epoch, permutation e
    drawn from `np.random.default_rng((seed, e))`. Micro-batch m of process r (of `world`) takes the
    global positions (m * world + r) * B ... + B - 1, so processes never share a sample within a step
    and a run resumed at micro-batch m (`start_batch`) reads exactly what an uninterrupted run would.
    Use it with `DataLoader(batch_size=B, sampler=...)`.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, rank: int = 0, world: int = 1,
                 start_batch: int = 0) -> None:
        if n < 1:
            raise ValueError("the dataset is empty")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.start_batch = rank, world, start_batch
        self._epoch = -1
        self._perm: np.ndarray | None = None

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._epoch:
            self._perm = np.random.default_rng((self.seed, epoch)).permutation(self.n)
            self._epoch = epoch
        return int(self._perm[offset])

    def batch_indices(self, micro_batch: int) -> list[int]:
        first = (micro_batch * self.world + self.rank) * self.batch_size
        return [self._at(first + j) for j in range(self.batch_size)]

    def __iter__(self) -> Iterator[int]:
        m = self.start_batch
        while True:
            yield from self.batch_indices(m)
            m += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return 2**62


def stage_loader(config: TrainConfig, stage: StageConfig, stage_index: int, tokenizer: PreTrainedTokenizerBase,
                 accelerator: Accelerator, start_batch: int) -> torch.utils.data.DataLoader:
    """This process's batches of one stage, from micro-batch `start_batch` on (where a resumed run is)."""
    import torch

    ds = open_dataset(stage.dataset, stage.split, stage.max_samples, allow_eval_splits=stage.allow_eval_splits)
    dataset = EditingDataset(ds, tokenizer, DataOptions(config.data.resolution, config.data.resize,
                                                        config.data.max_token_length, stage.prompt_style))
    sampler = StepSampler(len(dataset), config.batch_size, seed=config.seed * 1000 + stage_index,
                          rank=accelerator.process_index, world=accelerator.num_processes, start_batch=start_batch)
    return torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collate,
        num_workers=config.data.num_workers, pin_memory=accelerator.device.type == "cuda",
    )
