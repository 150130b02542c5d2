"""The `referdiffusion` command line: light --help, `init` and `edit` end to end on the tiny model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from referdiffusion.cli import main
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "import referdiffusion\n"
        "from referdiffusion.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "for sub in ('init', 'edit'):\n"
        "    try:\n"
        "        main([sub, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "init" in out.stdout and "edit" in out.stdout and "--mask-out" in out.stdout
    assert "HEAVY []" in out.stdout


def test_init_then_edit(tiny_cache, tmp_path, capsys):
    pytest.importorskip("diffusers")
    from PIL import Image

    ckpt = tmp_path / "ckpt"
    assert main(["init", "--from", "tiny-ip2p", "--out", str(ckpt)]) == 0
    assert (ckpt / "rem" / "config.json").is_file()
    src = tmp_path / "src.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(src)
    out, mask = tmp_path / "out" / "edited.png", tmp_path / "mask.png"
    argv = ["edit", "--model", str(ckpt), "--image", str(src), "--prompt", "make the cow red", "--out", str(out),
            "--mask-out", str(mask), "--steps", "2", "--seed", "3", "--guidance-scale", "5",
            "--image-guidance-scale", "1.2", "--device", "cpu", "--size", "64"]
    assert main(argv) == 0
    edited = Image.open(out)
    assert edited.size == (64, 48) and edited.mode == "RGB"
    m = Image.open(mask)
    assert m.size == (64, 48) and m.mode == "L" and set(np.unique(np.asarray(m))) <= {0, 255}
    first = np.asarray(edited).copy()
    assert main(argv) == 0  # same seed: same image
    np.testing.assert_array_equal(np.asarray(Image.open(out)), first)
    assert "wrote" in capsys.readouterr().out

    # without --size: the size the checkpoint was trained at, from its training manifest
    from referdiffusion.train.manifest import MANIFEST_SCHEMA, write_manifest

    write_manifest(ckpt / "training_manifest.json", {"schema": MANIFEST_SCHEMA, "preprocess": {"size": 32}})
    assert main(argv[:-2]) == 0
    assert Image.open(out).size == (32, 24)


def test_init_writes_the_dtype_asked_for(tiny_cache, tmp_path):
    from safetensors import safe_open

    ckpt = tmp_path / "half"
    assert main(["init", "--from", "tiny-ip2p", "--out", str(ckpt), "--dtype", "float16"]) == 0
    dtypes = set()
    for f in ckpt.rglob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            dtypes |= {st.get_slice(k).get_dtype() for k in st.keys()}
    assert dtypes == {"F16"}


def test_cli_errors_are_one_line(tiny_cache, tmp_path, capsys):
    assert main(["edit", "--model", str(tmp_path), "--image", "x.png", "--prompt", "p", "--out",
                 str(tmp_path / "o.png")]) == 2
    assert "not a ReferDiffusion checkpoint" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    assert main(["init", "--from", "tiny-ip2p", "--out", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_package_exports_are_lazy_and_complete():
    import referdiffusion

    assert {"ReferDiffusionPipeline", "RegionEmbedder", "compute_losses", "LossConfig"} <= set(dir(referdiffusion))
    with pytest.raises(AttributeError):
        referdiffusion.NoSuchThing  # noqa: B018
    pytest.importorskip("diffusers")
    from referdiffusion import ReferDiffusionPipeline, RegionEmbedder

    assert ReferDiffusionPipeline.__module__ == "referdiffusion.pipeline_referdiffusion"
    assert RegionEmbedder.__module__ == "referdiffusion.rem"


def test_train_overrides_may_come_before_between_and_after_options(capsys):
    argv = ["train", "optim.learning_rate=0.001", "--config", "tiny", "seed=7", "--print-config", "batch_size=3"]
    assert main(argv) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["learning_rate"] == 0.001
    assert printed["seed"] == 7 and printed["batch_size"] == 3
