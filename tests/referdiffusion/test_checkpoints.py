"""The run folder's temporary names: what a killed run leaves is recognised and removed, nothing else."""

from __future__ import annotations

from referdiffusion.train.checkpoints import remove_leftovers


def test_remove_leftovers_takes_only_the_run_folders_temporary_names(tmp_path):
    stale = [".checkpoint-3.tmp", ".checkpoint-3.k2j4h5.tmp", ".frozen_components.tmp",
             ".frozen_components.a8b9c0.tmp", ".final.tmp", ".final.z1y2x3.tmp"]
    kept = ["checkpoint-3", "frozen_components", "final", "logs", ".hidden", ".notes.tmp"]
    for name in stale + kept:
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "f.bin").write_bytes(b"x")
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "config.yaml"])
