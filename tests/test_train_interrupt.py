"""Around fit's step loop: Ctrl-C stops between two steps, so the state saved then resumes exactly (a second Ctrl-C
stops at once); the LR schedule's warm-up holds when the cosine decay spans the whole run; the progress bar."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from gmem_explore import build_model
from gmem_explore.train.trainer import StopRequested, TrainConfig, Trainer

from conftest import TINY


def trainer(**cfg):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rows = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(**{"steps": 4, "batch_size": 4, "lr": 3e-3, "warmup": 1, "progress": False, **cfg})
    return Trainer(build_model(**TINY), images, rows, config, use_accelerate=False)


def ctrl_c_during_step(tr, step: int, times: int = 1):
    """Send SIGINT `times` times from inside the loss of step `step` (1-based): mid-step, where a plain
    KeyboardInterrupt would leave the optimizer, EMA and RNG out of step with each other."""
    real_loss = tr.loss_on

    def loss_on(*batch):
        out = real_loss(*batch)
        if tr.step == step - 1:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return out

    tr.loss_on = loss_on


def test_ctrl_c_stops_after_the_step_and_the_saved_state_resumes_exactly(tmp_path):
    straight = trainer()
    straight.fit()
    handler = signal.getsignal(signal.SIGINT)
    stopped = trainer()
    ctrl_c_during_step(stopped, 2)
    ends = []
    stopped.on("on_end", lambda tr, event: ends.append(event["error"]))
    with pytest.raises(StopRequested, match="after step 2"):
        stopped.fit()
    assert stopped.step == 2 and len(stopped.history) == 2 and isinstance(ends[0], KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is handler  # fit puts the caller's handler back
    stopped.save_state(tmp_path / "state.safetensors")
    resumed = trainer()
    resumed.load_state(tmp_path / "state.safetensors")
    resumed.fit()
    for name, value in straight.ema_model.state_dict().items():
        assert torch.equal(value, resumed.ema_model.state_dict()[name]), name
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]


def test_a_second_ctrl_c_stops_at_once():
    tr = trainer()
    ctrl_c_during_step(tr, 2, times=2)
    with pytest.raises(KeyboardInterrupt) as stop:
        tr.fit()
    assert not isinstance(stop.value, StopRequested) and tr.step == 1  # inside step 2: not applied


def test_warm_up_holds_under_a_cosine_over_the_whole_run():
    """decay=steps (a cosine over the whole run) replaced the warm-up: the first step ran at the full rate."""
    tr = trainer(steps=10, warmup=4, decay=10, lr=1.0, lr_final=0.0)
    rates = [tr.lr_at(step) for step in range(10)]
    assert rates[:4] == pytest.approx([0.25 * 1.0, 0.5 * 0.9755, 0.75 * 0.9045, 0.7939], abs=1e-4)
    assert rates[4:] == pytest.approx([0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / 10)).item())
                                       for s in range(4, 10)], abs=1e-6)


def test_gmem_train_saves_its_state_at_ctrl_c(tmp_path, monkeypatch, capsys):
    """Ctrl-C lost every step since the last periodic save (200 by default); now the state is saved after the
    step under way, for --resume."""
    from gmem_explore.cli.main import main
    from gmem_explore.safefiles import read_header

    real_loss = Trainer.loss_on

    def loss_on(self, *batch):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(self, *batch)

    monkeypatch.setattr(Trainer, "loss_on", loss_on)
    common = ["train", "--data", "digits", "--split", "held_out", "--steps", "3", "--batch-size", "4",
              "--no-progress", "--out", str(tmp_path / "run")]
    assert main(common) == 130
    err = capsys.readouterr().err
    assert f"stopped at step 2 of 3; the training state is saved in {tmp_path / 'run' / 'train-state.safetensors'}" in err
    # exactly the state of step 2 (test_ctrl_c_stops_after_the_step_and_the_saved_state_resumes_exactly resumes one);
    # a whole command run, the only check that gmem train saves at Ctrl-C: ~10 s (loading emoji-32 and digits)
    assert read_header(tmp_path / "run" / "train-state.safetensors")[1]["step"] == 2


def test_the_progress_bar_redraws_at_its_own_rate_with_the_current_loss(monkeypatch):
    """set_postfix redrew the bar on every step (its refresh=True default), past tqdm's mininterval: in a notebook
    one widget message per step. The loss now rides on the next update, which tqdm draws at its own rate."""
    import tqdm.auto

    calls = []

    class Bar:
        def __init__(self, total, initial, desc, unit):
            calls.append(("open", total, initial))

        def set_postfix(self, refresh=True, **values):
            calls.append(("postfix", values["loss"], refresh))

        def update(self, n):
            calls.append(("update", n))

        def close(self):
            calls.append(("close",))

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    tr = trainer(steps=2, progress=True)
    history = tr.fit()
    losses = [f"{h['loss']:.4f}" for h in history]
    assert calls == [("open", 2, 0), ("postfix", losses[0], False), ("update", 1), ("postfix", losses[1], False),
                     ("update", 1), ("close",)]


def test_an_ignored_ctrl_c_stays_ignored():
    """A run whose SIGINT is ignored (started with nohup, or `&` in a script) got fit's handler anyway and stopped."""
    original = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        tr = trainer()
        ctrl_c_during_step(tr, 2)
        assert len(tr.fit()) == 4
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, original)
