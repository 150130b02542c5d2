"""Training configs: shipped names, YAML files with `base`, overrides, and the errors bad ones get."""

from __future__ import annotations

import dataclasses

import pytest

from refcoco_edit.errors import InputError
from referdiffusion.train.config import (
    SHIPPED,
    ConfigError,
    TrainConfig,
    apply_override,
    config_from_dict,
    config_to_dict,
    find_config,
    load_config,
    load_raw,
)

DATA = ["stages.edit.dataset=/data/edit"]


def test_every_shipped_config_loads_and_matches_the_ablation():
    for name, file in SHIPPED.items():
        assert find_config(name).name == file and find_config(name).is_file()
    overrides = {"tiny": [], "full": [*DATA, "stages.synth.dataset=/data/synth"]}
    cfgs = {name: load_config(name, overrides.get(name, DATA)) for name in SHIPPED}
    weights = {n: (c.model.use_rem, [c.stage_loss_config(s).enabled(t) for s in c.stages[-1:]
                                     for t in ("noise", "mask", "edit", "rcl")])
               for n, c in cfgs.items()}
    assert weights["finetune"] == (False, [True, False, False, False])
    assert weights["+rem"] == (True, [True, True, True, False])
    assert weights["+rem+rcl"] == (True, [True, True, True, True])
    assert weights["full"] == (True, [True, True, True, True])
    assert [s.name for s in cfgs["full"].stages] == ["synth", "edit"]
    synth = cfgs["full"].stages[0]
    # stage 1: the paper's prompt recipe, never the evaluation splits' pictures
    assert (synth.dataset, synth.split, synth.prompt_style, synth.allow_eval_splits) == ("/data/synth", "train",
                                                                                       "mask", False)
    assert cfgs["full"].stages[1].prompt_style is None  # stage 2 reads RefCOCO-Edit's own prompts
    assert [(s.split, s.prompt_style) for s in cfgs["tiny"].stages] == [("train", "mask"), ("train", None)]
    # the real run's settings (the paper's) and the tiny ones; images at the evaluation's protocol
    for name in ("finetune", "+rem", "+rem+rcl", "full"):
        c = cfgs[name]
        assert (c.optim.learning_rate, c.data.conditioning_dropout) == (5e-5, 0.05)
        assert (c.data.resize, c.data.resolution) == ("aspect", 512)
        assert c.model.pretrained == "ip2p"
    tiny = cfgs["tiny"]
    assert (tiny.data.resolution, tiny.model.pretrained, tiny.mixed_precision) == (64, "tiny-ip2p", "no")
    assert tiny.total_steps <= 500
    assert [s.dataset for s in tiny.stages] == ["sample:synth", "sample:edits"]
    # file stems are names too
    assert load_config("rem_rcl", DATA) == cfgs["+rem+rcl"]


def test_dataclass_defaults_are_the_paper_settings():
    c = TrainConfig()
    assert (c.data.resolution, c.data.resize, c.optim.learning_rate, c.data.conditioning_dropout) == (
        512, "aspect", 5e-5, 0.05)
    assert (c.losses.noise_weight, c.losses.mask_weight, c.losses.edit_weight, c.losses.rcl_weight) == (1, 1, 1, 1)


def test_overrides_are_typed_by_their_field():
    c = load_config("tiny", [
        "optim.learning_rate=1e-4",  # YAML 1.1 would read this as a string
        "batch_size=3",
        "model.ema=yes",
        "stages.edit.max_steps=7",
        "stages.0.split=null",
        "stages.synth.losses.rcl_weight=0",
        "model.rem_kwargs={image_conv_layers: 0}",
        "model.pretrained=123",  # a str field keeps the text
        "max_steps=none",
    ])
    assert c.optim.learning_rate == pytest.approx(1e-4) and isinstance(c.optim.learning_rate, float)
    assert c.batch_size == 3 and c.model.ema is True and c.model.pretrained == "123" and c.max_steps is None
    assert c.stages[1].max_steps == 7 and c.stages[0].split is None
    assert c.stage_loss_config(c.stages[0]).rcl_weight == 0 and c.stage_loss_config(c.stages[1]).rcl_weight == 1
    assert c.model.rem_kwargs == {"image_conv_layers": 0}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.learnin_rate=1", "unknown config key 'optim.learnin_rate' (did you mean 'learning_rate'?)"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("batch_size=two", "batch_size must be an integer, got 'two'"),
        ("model.ema=maybe", "model.ema must be true or false"),
        ("optim.learning_rate=fast", "optim.learning_rate must be a number"),
        ("stages.nope.max_steps=1", "no stage named 'nope'; stages: synth, edit"),
        ("stages.5.max_steps=1", "there are 2 stages"),
        ("stages.edit=1", "give a field of the stage"),
        ("batch_size", "is not of the form key=value"),
        ("batch_size.x=1", "batch_size is int, it has no fields"),
        ("mixed_precision=fp8", "mixed_precision must be one of no, fp16, bf16"),
        ("data.resolution=60", "data.resolution must be a multiple of 8"),
        ("optim.learning_rate=0", "optim.learning_rate must be > 0"),
        ("optim.lr_scheduler=step", "optim.lr_scheduler must be one of"),
        ("data.conditioning_dropout=0.5", "conditioning_dropout must be in [0, 1/3]"),
        ("stages.edit.losses.mask_wieght=1", "unknown config key 'stages.edit.losses.mask_wieght'"),
        ("stages.edit.losses.mask_weight=-1", "mask_weight must be >= 0"),
        ("model.use_rem=false", "L_mask and L_edit need the REM"),
        ("stages.edit.dataset=null", "stages.edit.dataset is not set"),
        ("stages.synth.prompt_style=paper", "stages.synth.prompt_style must be null or one of mask, expression"),
        ("stages.edit.split=testA", "stages.edit.split 'testA' is an evaluation split"),
        ("data.resize=squash", "data.resize must be one of aspect, stretch, crop"),
    ],
)
def test_bad_overrides_are_refused_clearly(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    assert message in str(info.value)
    assert isinstance(info.value, InputError)  # the CLI prints it on one line, exit code 2


def test_evaluation_split_and_prompt_style_keys():
    c = load_config("tiny", ["stages.edit.split=testA", "stages.edit.allow_eval_splits=true",
                             "stages.synth.prompt_style=expression"])
    assert (c.stages[1].split, c.stages[1].allow_eval_splits) == ("testA", True)
    assert c.stages[0].prompt_style == "expression"
    assert load_config("tiny", ["stages.synth.prompt_style=null"]).stages[0].prompt_style is None


def test_yaml_files_types_and_base(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("base: tiny\nname: mine\noptim:\n  learning_rate: 2e-4\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nbatch_size: 1\nstages:\n  - name: only\n    dataset: /d\n    max_steps: 3\n")
    c = load_config(child)
    assert c.name == "mine" and c.batch_size == 1 and c.optim.learning_rate == pytest.approx(2e-4)
    assert c.data.resolution == 64  # from tiny, through base.yaml
    assert [(s.name, s.dataset, s.max_steps, s.split) for s in c.stages] == [("only", "/d", 3, "train")]

    bad = tmp_path / "bad.yaml"
    for text, message in [
        ("base: tiny\nbatch_size: 2.5\n", "batch_size must be an integer, got 2.5"),
        ("base: tiny\nmodel:\n  ema: 1\n", "model.ema must be true or false, got 1"),
        ("base: tiny\nmodel: [1]\n", "model must be a mapping"),
        ("base: tiny\nstages:\n  - name: a\n    dataset: /d\n    colour: red\n",
         "unknown config key 'stages.0.colour'"),
        ("base: tiny\nstages: []\n", "at least one stage"),
        ("- 1\n", "must hold a mapping"),
        ("a: [\n", "is not valid YAML"),
        ("base: bad.yaml\n", "config base cycle"),
        ("base: tiny\nstages:\n  - {name: a, dataset: /d}\n  - {name: a, dataset: /e}\n", "stage names must differ"),
    ]:
        bad.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(bad)
        assert message in str(info.value), (text, str(info.value))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not a shipped config"):
        load_config("no-such-config")


def test_loading_a_config_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom referdiffusion.train import load_config\nload_config('tiny', ['batch_size=2'])\n"
            "print([m for m in ('torch', 'diffusers', 'accelerate') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_round_trip_through_a_dict():
    c = load_config("tiny", ["stages.edit.losses.rcl_weighting=sqrt_alpha"])
    again = config_from_dict(config_to_dict(c))
    assert again == c
    assert dataclasses.asdict(again)["stages"][1]["losses"] == {"rcl_weighting": "sqrt_alpha"}


def test_override_of_a_config_without_stages_creates_the_default_stage():
    data = load_raw("tiny")
    data.pop("stages")
    apply_override(data, "stages.main.dataset=/d")
    c = config_from_dict(data)
    assert [(s.name, s.dataset) for s in c.stages] == [("main", "/d")]
