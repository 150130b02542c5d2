"""The micro study (`referdiffusion.study.micro`): a minute of training through the real trainer must teach
the UNet the reference edits and the REM the referred object; broken on purpose, it must fail."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from referdiffusion.study import micro  # noqa: E402
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


def test_micro_study_learns_the_edits_and_the_mask(tiny_cache, tmp_path):
    result = micro.run_micro(tmp_path)
    assert result.steps == micro.STEPS
    assert result.passed, result.problems()
    assert result.last_loss < result.first_loss


def _zero_rem_gradients(monkeypatch):
    """Every gradient that reaches the REM's parameters is replaced by zeros (a cut gradient path)."""
    import referdiffusion.train.state as state_module

    build = state_module.build_state

    def build_cut(*args, **kwargs):
        state = build(*args, **kwargs)
        for p in state.rem.parameters():
            p.register_hook(torch.zeros_like)
        return state

    monkeypatch.setattr(state_module, "build_state", build_cut)


def _wrong_noise_target(monkeypatch):
    """L_noise regresses the prediction on zeros instead of the added noise (a wrong loss)."""
    import referdiffusion.losses as losses

    right = losses.noise_loss
    monkeypatch.setattr(losses, "noise_loss", lambda pred, target: right(pred, torch.zeros_like(target)))


@pytest.mark.slow
@pytest.mark.parametrize(("breakage", "symptom"), [(_zero_rem_gradients, "REM mask IoU"),
                                                    (_wrong_noise_target, "edit error")])
def test_micro_study_fails_when_training_is_broken(tiny_cache, tmp_path, monkeypatch, breakage, symptom):
    breakage(monkeypatch)
    result = micro.run_micro(tmp_path)
    assert not result.passed
    assert any(p.startswith(symptom) for p in result.problems()), result.problems()
