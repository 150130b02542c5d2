"""The dataset card (README.md) of an exported RefCOCO-Edit dataset.

The YAML header is what `datasets.load_dataset(DIR)` and the Hub read: `dataset_info` (features,
split sizes) and `configs` (which parquet files make each split), written through the `datasets`
and `huggingface_hub` classes that read them back, so the two cannot disagree. The prose says how
the data was made, what each field means, how big each part is, the licence and what to cite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from refcoco_edit.schema import EDIT_TYPES, PIPELINES

# What each exported field holds; a test checks that every field of `schema.features()` is here.
FIELD_DOCS: dict[str, str] = {
    "sample_id": "unique id of the sample",
    "image_id": "COCO (or RefShapes) image id of the source picture",
    "ref_id": "RefCOCO ref id of the referred object",
    "ann_id": "COCO annotation id of the referred object",
    "split": "RefCOCO split the ref belongs to (train, val, testA, testB, ...)",
    "source_image": "I_s, the source picture (PNG, RGB)",
    "edited_image": ("I_e, the reference edit: the picture after the edit (PNG, RGB, same size); equal to "
                     "source_image at every pixel outside edit_mask"),
    "source_mask": "M, the referred object: 8-bit L PNG, 0 outside and 255 inside (read as 0/1)",
    "edit_mask": ("M_e, the area the edit changed: 8-bit L PNG, 0/255, same size as the image; outside it "
                  "edited_image is source_image exactly"),
    "prompt": "P, the editing instruction",
    "referring_text": "P_r, the words of the prompt that pick out the object",
    "edit_text": "P_e, the words of the prompt that say what to do",
    "referring_spans": ("[start, end) character offsets of P_r in the prompt: the prompt[s:e] joined by one "
                        "space == referring_text"),
    "edit_spans": "[start, end) character offsets of P_e in the prompt, same rule",
    "edit_type": "class label: " + ", ".join(EDIT_TYPES),
    "target": "what the object becomes (new object, attribute, added object); empty for remove",
    "pipeline": "class label, how the edit was made: " + ", ".join(PIPELINES),
    "generation": "JSON string: model, seed, steps, guidance scales and the prompt actually sent",
    "annotator": "who made or checked the sample (a person, or a build/synthesis bot)",
    "reviewer": "who reviewed it (empty when accepted by a policy)",
    "status": "review status at export time (normally accepted)",
    "created_at": "when the sample was created (ISO 8601, UTC)",
    "updated_at": "when it was last changed (ISO 8601, UTC)",
}

CITATION = """\
@inproceedings{liu2024referring,
  title     = {Referring Image Editing: Object-level Image Editing via Referring Expressions},
  author    = {Liu, Chang and Li, Xiangtai and Ding, Henghui},
  booktitle = {CVPR},
  year      = {2024}
}
@inproceedings{kazemzadeh2014referitgame,
  title     = {ReferItGame: Referring to Objects in Photographs of Natural Scenes},
  author    = {Kazemzadeh, Sahar and Ordonez, Vicente and Matten, Mark and Berg, Tamara},
  booktitle = {EMNLP},
  year      = {2014}
}
@inproceedings{yu2016modeling,
  title     = {Modeling Context in Referring Expressions},
  author    = {Yu, Licheng and Poirson, Patrick and Yang, Shan and Berg, Alexander C. and Berg, Tamara L.},
  booktitle = {ECCV},
  year      = {2016}
}
@inproceedings{lin2014microsoft,
  title     = {Microsoft COCO: Common Objects in Context},
  author    = {Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and others},
  booktitle = {ECCV},
  year      = {2014}
}"""

DEFAULT_HOW_BUILT = """\
Each sample starts from a RefCOCO referring expression and the mask of the object it refers to. A
prompt is composed around the expression (the referring part keeps the annotators' words; the edit
part says what to do), with the character spans of both parts recorded. A reference edit is then made
by one of the pipelines below, and annotators accept, correct or reject it in the annotation app
(or a recorded policy accepts it, e.g. the exact edits of the synthetic RefShapes set). Only samples
with the exported status were kept, and every row was checked before writing: spans exact, masks
binary and of the image's size, a non-empty edit mask unless the edit changes nothing, and the
background invariant: the edited image equals the source at every pixel outside the edit mask M_e
(the source's pixels are copied there when a sample is made or its mask corrected), so a method that
reproduced the reference edit exactly would score a perfect background (`l2_bg` 0).

Pipelines: `composition` (Paint-by-Example with an example image of the new object),
`region_edit` (Blended Latent Diffusion inside a drawn region), `inpaint` (diffusion removal),
`classical_inpaint` (OpenCV removal), `manual` (drawn by a person), `synthetic` (rendered ground
truth, no model involved).

Scoring with `rie-bench`: the background metrics (`l2_bg`, `psnr_bg`, `ssim_bg`) read only the pixels
outside M_e, and CLIP-Sim_fg is reported in both readings of the paper, the crop around M_e (its
bounding box grown by 10%) against the edit part P_e (`clip_sim_fg`) and against the referring part
P_r (`clip_sim_fg_ref`). The self-supervised stage-1 data of ReferDiffusion is a separate dataset
(`refcoco-edit synth`: the referred object covered by a named colour, "paint a sandwich on the blue
mask", made from the train split only)."""

LICENCE_NOTE = """\
The annotations (prompts, spans, masks, edits) are released under {licence}. The source pictures
come from MS-COCO (train2014) and keep their own terms: the COCO images are Flickr photos under the
licences their owners chose, and the COCO annotations are CC BY 4.0. RefCOCO's referring expressions
are the work of its authors; please cite them. Synthetic pictures (RefShapes, stage-1 samples) carry
no third-party rights."""


@dataclass
class CardInfo:
    """What the card says besides the numbers the export counts."""

    pretty_name: str = "RefCOCO-Edit"
    summary: str = ("Referring image editing: each sample is a picture, an instruction that names one "
                    "object by a referring expression, the masks of that object and of the edited area, "
                    "and a reference edit.")
    how_built: str = DEFAULT_HOW_BUILT
    source: str = ""  # e.g. "refcoco (unc), store work/refcoco-edit.sqlite, status accepted"
    licence: str = "cc-by-4.0"
    extra_tags: list[str] = field(default_factory=list)


@dataclass
class Stats:
    """Counts gathered while rows stream past: rows per split, per edit type and per pipeline."""

    rows: int = 0
    by_split: dict[str, int] = field(default_factory=dict)
    by_edit_type: dict[str, dict[str, int]] = field(default_factory=dict)  # edit type -> split -> n
    by_pipeline: dict[str, dict[str, int]] = field(default_factory=dict)
    mask_area: dict[str, list[float]] = field(default_factory=dict)  # edit type -> [sum M, sum M_e, n]
    annotators: set[str] = field(default_factory=set)

    def add(self, split: str, edit_type: str, pipeline: str, source_area: float, edit_area: float,
            annotator: str) -> None:
        self.rows += 1
        self.by_split[split] = self.by_split.get(split, 0) + 1
        for table, key in ((self.by_edit_type, edit_type), (self.by_pipeline, pipeline)):
            per = table.setdefault(key, {})
            per[split] = per.get(split, 0) + 1
        acc = self.mask_area.setdefault(edit_type, [0.0, 0.0, 0])
        acc[0] += source_area
        acc[1] += edit_area
        acc[2] += 1
        if annotator:
            self.annotators.add(annotator)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def yaml_header(features: Any, splits: dict[str, dict[str, Any]], info: CardInfo, rows: int,
                download_size: int, dataset_size: int) -> str:
    """The card's YAML (without the `---` fences): dataset_info and configs as `datasets` reads them.

    `splits`: split name -> {"num_examples", "num_bytes", "files": [paths relative to the folder]}.
    """
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from huggingface_hub import DatasetCardData

    split_dict = SplitDict()
    for name, s in splits.items():
        split_dict.add(SplitInfo(name=name, num_bytes=int(s["num_bytes"]), num_examples=int(s["num_examples"])))
    ds_info = DatasetInfo(features=features, splits=split_dict, download_size=int(download_size),
                          dataset_size=int(dataset_size))
    yaml_info = ds_info._to_yaml_dict()
    configs = [{"config_name": "default",
                "data_files": [{"split": name, "path": f"data/{name}-*.parquet"} for name in splits]}]
    card = DatasetCardData(
        license=info.licence, pretty_name=info.pretty_name, task_categories=["image-to-image"],
        language=["en"], size_categories=[_size_category(rows)],
        tags=["referring-image-editing", "refcoco", "image-editing", *info.extra_tags],
        dataset_info=yaml_info, configs=configs,
    )
    return card.to_yaml()


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _breakdown(table: dict[str, dict[str, int]], order: tuple[str, ...], splits: list[str], what: str) -> str:
    keys = [k for k in order if k in table] + sorted(k for k in table if k not in order)
    rows = [[k, *[table[k].get(s, 0) for s in splits], sum(table[k].values())] for k in keys]
    rows.append(["**all**", *[sum(table[k].get(s, 0) for k in keys) for s in splits],
                 sum(sum(table[k].values()) for k in keys)])
    return _table([what, *splits, "total"], rows)


def render_card(features: Any, splits: dict[str, dict[str, Any]], stats: Stats, info: CardInfo,
                download_size: int, dataset_size: int) -> str:
    """The whole README.md: YAML header, then prose and tables."""
    header = yaml_header(features, splits, info, stats.rows, download_size, dataset_size)
    names = list(splits)
    area_rows = []
    for et in [e for e in EDIT_TYPES if e in stats.mask_area] + sorted(set(stats.mask_area) - set(EDIT_TYPES)):
        s_sum, e_sum, n = stats.mask_area[et]
        area_rows.append([et, n, f"{100 * s_sum / max(n, 1):.1f}%", f"{100 * e_sum / max(n, 1):.1f}%"])
    field_rows = [[f"`{name}`", _feature_kind(feat), FIELD_DOCS.get(name, "")] for name, feat in features.items()]
    first_split = names[0] if names else "train"
    parts = [
        f"---\n{header.rstrip()}\n---",
        f"# {info.pretty_name}",
        info.summary,
        (f"Source: {info.source}." if info.source else ""),
        "## Loading",
        "```python\nimport numpy as np\nfrom datasets import load_dataset\n\n"
        f"ds = load_dataset(\"path/or/hub-id\")          # DatasetDict: {', '.join(names)}\n"
        f"row = ds[\"{first_split}\"][0]\n"
        "mask = (np.array(row[\"edit_mask\"]) > 127)     # masks are 0/255 L images\n"
        "label = ds[\"" + first_split + "\"].features[\"edit_type\"].int2str(row[\"edit_type\"])\n```",
        "The folder also holds a `save_to_disk` copy under `hf/` (`datasets.load_from_disk(\"DIR/hf\")`). "
        "Inside this toolkit, `refcoco_edit.dataset.io.load_refcoco_edit` returns rows as `Sample`s.",
        "## How it was built",
        info.how_built,
        "## Fields",
        _table(["field", "type", "meaning"], field_rows),
        "Masks are stored as 8-bit grey-scale PNGs of 0 and 255 rather than 1-bit images, so that image "
        "viewers and the Hub's viewer show them; read them back as `array > 127`.",
        "## Statistics",
        f"{stats.rows} samples" + (f" by {len(stats.annotators)} annotator(s)" if stats.annotators else "") + ".",
        "### Rows per edit type and split",
        _breakdown(stats.by_edit_type, EDIT_TYPES, names, "edit type"),
        "### Rows per pipeline and split",
        _breakdown(stats.by_pipeline, PIPELINES, names, "pipeline"),
        "### Mean mask area (share of the picture)",
        _table(["edit type", "rows", "object M", "edit M_e"], area_rows),
        "## Licence",
        LICENCE_NOTE.format(licence=info.licence),
        "## Citation",
        f"```bibtex\n{CITATION}\n```",
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _feature_kind(feat: Any) -> str:
    kind = type(feat).__name__
    if kind == "Value":
        return feat.dtype
    if kind == "ClassLabel":
        return "ClassLabel"
    if kind == "Image":
        return "Image (PNG)"
    if kind == "List":
        inner = _feature_kind(feat.feature)
        return f"List[{inner}]"
    return kind
