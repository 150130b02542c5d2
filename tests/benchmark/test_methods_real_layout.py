"""The benchmark methods and `referdiffusion init` on folders laid out as the real repositories are
(`tests.fixtures_real_layout`: float16 components, the repository's scheduler, old configs, safety
checker): they run in the dtype asked for and give what they give on the same weights saved plainly;
`init` writes one dtype; the run configuration names the folder actually read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures_real_layout import save_real_layout, save_reference, saved_dtypes
from tests.torch_threads import one_torch_thread

one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


class Sample:
    """The fields the methods read."""

    def __init__(self) -> None:
        yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
        rgb = np.dstack([127 + 100 * np.sin(xx / 7), 127 + 100 * np.cos(yy / 9), np.full_like(xx, 60)])
        self.source_image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        self.source_mask = np.zeros((64, 64), np.uint8)
        self.source_mask[16:40, 24:48] = 1
        self.prompt = "turn the ball on the left red"
        self.edit_text = "a red ball"
        self.target = ""


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("real-layout-methods")
    return {
        "tiny-ip2p": (save_real_layout("tiny-ip2p", root / "real-ip2p", scheduler="euler_ancestral"),
                      save_reference("tiny-ip2p", root / "ref-ip2p", scheduler="euler_ancestral")),
        "tiny-sd15": (save_real_layout("tiny-sd15", root / "real-sd15"),
                      save_reference("tiny-sd15", root / "ref-sd15")),
    }


def _edit(method: str, folder: Path, **options) -> tuple[object, np.ndarray]:
    from benchmark.methods import create_method

    m = create_method(method, model=str(folder), device="cpu", steps=2, size=64, **options)
    m.ensure_ready()
    result = m.edit(Sample(), seed=4)
    return m, np.asarray(result.image, np.int16)


@pytest.mark.parametrize(("method", "tiny"), [("ip2p", "tiny-ip2p"), ("magicbrush", "tiny-ip2p"),
                                              ("instructdiffusion", "tiny-ip2p"), ("blended", "tiny-sd15")])
def test_method_on_real_layout_equals_the_plain_folder(folders, method, tiny):
    import torch

    from refcoco_edit.models.components import check_one_dtype

    real, ref = folders[tiny]
    m, got = _edit(method, real)
    pipe = m.pipeline.pipe if hasattr(m, "pipeline") else m.pipe
    assert check_one_dtype(pipe) == torch.float32
    _, want = _edit(method, ref)
    assert np.abs(got - want).max() <= 1


def test_init_writes_one_dtype_and_referdiffusion_runs_on_mixed_checkpoints(folders, tmp_path):
    import torch

    from referdiffusion.init import init_checkpoint
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline

    real, _ = folders["tiny-ip2p"]
    assert saved_dtypes(real)["text_encoder"] == {"F16"}
    init_checkpoint(str(real), tmp_path / "fp32", progress=False)
    assert set().union(*saved_dtypes(tmp_path / "fp32").values()) == {"F32"}
    init_checkpoint(str(real), tmp_path / "fp16", dtype="float16", progress=False)
    assert set().union(*saved_dtypes(tmp_path / "fp16").values()) == {"F16"}
    # a checkpoint whose text encoder was saved in float16 (its values are float16 ones already)
    pipe = ReferDiffusionPipeline.from_pretrained(tmp_path / "fp32")
    pipe.text_encoder.to(torch.float16)
    pipe.save_pretrained(tmp_path / "mixed")
    assert saved_dtypes(tmp_path / "mixed")["text_encoder"] == {"F16"}
    from refcoco_edit.models.components import check_one_dtype

    # loaded directly (`referdiffusion edit`, training): one dtype, float32 unless asked otherwise
    assert check_one_dtype(ReferDiffusionPipeline.from_pretrained(tmp_path / "mixed")) == torch.float32
    half = ReferDiffusionPipeline.from_pretrained(tmp_path / "mixed", torch_dtype=torch.float16)
    assert check_one_dtype(half) == torch.float16
    _, want = _edit("referdiffusion", tmp_path / "fp32")
    _, got = _edit("referdiffusion", tmp_path / "mixed")
    np.testing.assert_array_equal(got, want)
    _, half_ckpt = _edit("referdiffusion", tmp_path / "fp16")  # float16 on disk, float32 asked for (the default)
    assert half_ckpt.shape == want.shape


def test_config_names_the_folder_actually_read(folders, tmp_path, monkeypatch):
    from benchmark.methods import create_method

    real, _ = folders["tiny-ip2p"]
    (tmp_path / "links").mkdir()
    os.symlink(real, tmp_path / "links" / "ip2p")
    monkeypatch.chdir(tmp_path)
    config = create_method("ip2p", model="./links/ip2p").config()
    assert config["model_source"] == "./links/ip2p"  # as typed
    assert config["model_folder"] == str(real.resolve())  # as read
    rd = create_method("referdiffusion", model="links/../links/ip2p").config()
    assert rd["model"] == str(real.resolve())


def test_a_fresh_process_loads_a_method_quietly(folders, tmp_path):
    """No library progress bars and no torchvision fallback warning (transformers prints it once per
    process, on first use: only a fresh process can show it)."""
    import subprocess
    import sys

    real, _ = folders["tiny-ip2p"]
    code = ("import sys\n"
            "from benchmark.methods import create_method\n"
            "m = create_method(sys.argv[1], model=sys.argv[2], device='cpu', steps=1, size=64)\n"
            "m.ensure_ready()\n"
            "print('ready')\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, "ip2p", str(real)], capture_output=True, text=True, env=env,
                          cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ready"
    for noise in ("torchvision", "Loading pipeline components", "Loading weights", "it/s]"):
        assert noise not in done.stderr, done.stderr[-2000:]
