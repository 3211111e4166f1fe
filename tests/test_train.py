"""Trainer: the loss goes down, resuming is exact, callbacks fire, conditions and exports work."""
from __future__ import annotations

import json

import pytest
import torch

from gmem_explore import GMemPipeline, MemoryBank, build_model
from gmem_explore.data import load_digits
from gmem_explore.safefiles import load_tensors
from gmem_explore.train.trainer import TrainConfig, Trainer

from conftest import TINY, free_port, randomize


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.subset(torch.arange(256))


def conditions(n, seed=0):
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))


def make(digits, **cfg):
    torch.manual_seed(0)
    config = TrainConfig(**{"steps": 10, "batch_size": 16, "lr": 3e-3, "warmup": 2, "progress": False, **cfg})
    return Trainer(build_model(**TINY), digits.images, conditions(len(digits)), config, use_accelerate=False)


def test_loss_goes_down_on_digits(digits):
    trainer = make(digits, steps=80, batch_size=32, time_sampling="uniform")
    history = trainer.fit()
    first = sum(h["mse"] for h in history[:10]) / 10
    last = sum(h["mse"] for h in history[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert trainer.step == 80 and all(torch.isfinite(p).all() for p in trainer.ema_model.parameters())
    # the EMA network learnt too (an EMA left at its initial weights predicts zeros: the loss of no training),
    # measured with the objective written out here, not with trainer.loss_on
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, len(trainer.data), (128,), generator=g)
    t, noise = torch.rand(128, generator=g), torch.randn((128, *trainer.data.shape[1:]), generator=g)
    x = trainer.data[idx]
    x_t = (1 - t[:, None, None, None]) * x + t[:, None, None, None] * noise
    with torch.no_grad():
        v, _ = trainer.ema(x_t, t, trainer.conditions[idx], "snippet", torch.ones(128), want_projection=False)
    untrained = torch.nn.functional.mse_loss(torch.zeros_like(x), noise - x).item()
    ema_mse = torch.nn.functional.mse_loss(v, noise - x).item()
    assert ema_mse < 0.7 * untrained, (ema_mse, untrained)


def test_resume_gives_the_same_weights_as_one_run(digits, tmp_path):
    straight = make(digits, steps=8)
    straight.fit()
    first = make(digits, steps=8)
    first.fit(steps=3)
    first.save_state(tmp_path / "state.safetensors")
    second = make(digits, steps=8)
    torch.manual_seed(123)  # the caller's RNG must not matter
    second.load_state(tmp_path / "state.safetensors")
    assert second.step == 3
    second.fit()
    for name, value in straight.network.state_dict().items():
        assert torch.equal(value, second.network.state_dict()[name]), name
    for name, value in straight.ema_model.state_dict().items():
        assert torch.equal(value, second.ema_model.state_dict()[name]), name
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in second.history]


def test_callbacks_fire_with_payloads(digits, tmp_path):
    trainer = make(digits, steps=4, eval_every=2, eval_images=3, eval_steps=2, checkpoint_every=4,
                   out_dir=str(tmp_path))
    seen = {"on_step": [], "on_eval": [], "on_checkpoint": []}
    for event in seen:
        trainer.on(event, lambda tr, ev, _e=event: seen[_e].append(ev))
    trainer.fit()
    assert [e["step"] for e in seen["on_step"]] == [1, 2, 3, 4]
    assert {"loss", "lr", "images_per_s"} <= set(seen["on_step"][0])
    assert [e["step"] for e in seen["on_eval"]] == [2, 4]
    assert seen["on_eval"][0]["images"].shape == (3, 8, 8, 3) and seen["on_eval"][0]["images"].dtype == torch.uint8
    assert seen["on_checkpoint"][0]["path"].endswith("state.safetensors")
    assert (tmp_path / "state.safetensors").is_file()
    with pytest.raises(ValueError, match="Unknown event"):
        trainer.on("on_epoch", print)


@pytest.mark.parametrize("condition", ["label", "none"])
def test_label_and_unconditional_training(digits, condition):
    """What reaches the snippet slot: the normalised, trained label embedding of each image's label (zeroed where
    the keep mask drops it), or zeros for "none"."""
    torch.manual_seed(0)
    config = TrainConfig(steps=3, batch_size=8, condition=condition, progress=False)
    trainer = Trainer(build_model(**TINY), digits.images, digits.labels, config, use_accelerate=False)
    embedding = trainer.module.label_embedding
    assert (embedding is None) == (condition == "none")
    initial = None if embedding is None else embedding.weight.detach().clone()
    trainer.fit()
    assert trainer.sample(2, steps=2).shape == (2, 8, 8, 3)
    if embedding is not None:  # the embedding is trained with the network
        assert not torch.equal(initial, embedding.weight)
    seen = []
    hook = trainer.network.condition_projection.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    trainer.config.snippet_dropout = 0.5  # so that both kept and dropped rows occur
    idx, t, noise, keep = trainer._draw_batch()
    try:
        with torch.no_grad():
            trainer.loss_on(idx, t, noise, keep)
    finally:
        hook.remove()
    if condition == "none":
        assert torch.equal(seen[0], torch.zeros(len(idx), 16))
    else:
        assert torch.equal(trainer.conditions, digits.labels.long())
        want = torch.nn.functional.normalize(embedding.weight[digits.labels[idx]], dim=1) * keep[:, None]
        torch.testing.assert_close(seen[0], want)
        assert 0 < keep.sum() < len(keep)


def test_repa_alignment_uses_the_encoder(digits):
    from gmem_explore.encoders.conv import ConvEncoder

    encoder = ConvEncoder(dim=16, image_size=8, widths=(8, 8, 8), head_channels=8)
    torch.manual_seed(0)
    config = TrainConfig(steps=2, batch_size=8, repa_weight=0.5, progress=False)
    trainer = Trainer(build_model(**TINY), digits.images, conditions(len(digits)), config, encoder=encoder,
                      use_accelerate=False)
    history = trainer.fit()
    assert 0 < history[0]["repa"] <= 2 and history[0]["loss"] > history[0]["mse"]


def test_bad_inputs_say_what_to_do(digits):
    with pytest.raises(ValueError, match="one per image"):
        Trainer(build_model(**TINY), digits.images, conditions(3), TrainConfig(progress=False), use_accelerate=False)
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        Trainer(build_model(**TINY), digits.images, torch.randn(len(digits), 5), TrainConfig(progress=False),
                use_accelerate=False)
    with pytest.raises(ValueError, match="model expects"):
        Trainer(build_model(**{**TINY, "input_size": 16}), digits.images, conditions(len(digits)),
                TrainConfig(progress=False), use_accelerate=False)
    with pytest.raises(ValueError, match="condition must be"):
        TrainConfig(condition="class")
    with pytest.raises(ValueError, match="needs the snippet encoder"):
        Trainer(build_model(**TINY), digits.images, conditions(len(digits)), TrainConfig(repa_weight=1.0),
                use_accelerate=False)


def test_export_loads_as_a_pipeline(digits, tmp_path):
    trainer = make(digits, steps=2)
    trainer.fit()
    rows = conditions(len(digits))
    bank = MemoryBank(rows, torch.ones(len(rows)), digits.labels, digits.label_names, digits.images)
    trainer.export(tmp_path / "ckpt", bank, sampler={"method": "euler", "steps": 3}, info={"name": "digits"})
    pipe = GMemPipeline.from_pretrained(str(tmp_path / "ckpt"))
    out = pipe.generate(2, seeds=[0, 1])
    assert out.images.shape == (2, 8, 8, 3) and pipe.info["name"] == "digits"
    torch.testing.assert_close(pipe.model.state_dict()["final_layer.linear.weight"],
                               trainer.ema_model.state_dict()["final_layer.linear.weight"])
    # the EMA weights, not the training network's (after 2 steps they differ; the EMA itself is checked by
    # test_ema_update_follows_the_warmed_up_decay)
    assert not torch.equal(pipe.model.state_dict()["final_layer.linear.weight"],
                           trainer.network.state_dict()["final_layer.linear.weight"])
    # a folder exported from a label baseline by an older version (the config says so) is refused on load
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["training"]["config"]["condition"] = "label"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="condition='label', a baseline for comparison"):
        GMemPipeline.from_pretrained(str(tmp_path / "ckpt"))


def test_accelerate_single_process_matches_plain_loop(digits):
    pytest.importorskip("accelerate")
    plain = make(digits, steps=3)
    plain.fit()
    torch.manual_seed(0)
    config = TrainConfig(steps=3, batch_size=16, lr=3e-3, warmup=2, progress=False)
    accelerated = Trainer(build_model(**TINY), digits.images, conditions(len(digits)), config, use_accelerate=True)
    accelerated.fit()
    for name, value in plain.network.state_dict().items():
        torch.testing.assert_close(value, accelerated.network.state_dict()[name], atol=1e-6, rtol=1e-5)



def run_two_processes(out, **env) -> tuple[int, str]:
    """tests/two_process_train.py under torchrun, two CPU processes: (return code, output)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("two_process_train.py")
    # `accelerate launch --cpu` starts one process unless MPI is installed; torchrun starts two here
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(script), str(out)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=Path(__file__).parents[1], start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's workers too: nothing may outlive the test
        output, _ = proc.communicate()
        pytest.fail(f"two-process training did not finish in 180 s:\n{output[-3000:]}")
    return proc.returncode, output


def test_two_accelerate_processes_train_like_one(digits, tmp_path):
    """The docstring's promise, through torchrun (two CPU processes; Accelerate sees WORLD_SIZE and uses gloo, the
    same code path as on several GPUs):
    each process takes its slice of the same global batch and DDP averages the gradients, so two processes end
    with the weights of the plain one-process loop (float rounding aside), and their saved state resumes in one."""
    pytest.importorskip("accelerate")
    from gmem_explore.safefiles import load_tensors

    returncode, output = run_two_processes(tmp_path)
    assert returncode == 0, output[-3000:]
    weights, meta = load_tensors(tmp_path / "weights.safetensors")
    assert meta["world"] == 2
    plain = make(digits, steps=3)
    plain.fit()
    for name, value in plain.network.state_dict().items():
        torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=1e-5, msg=name)
    resumed = make(digits, steps=3)
    resumed.load_state(tmp_path / "state.safetensors")
    assert resumed.step == 3
    for name, value in plain.ema_model.state_dict().items():
        torch.testing.assert_close(resumed.ema_model.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_a_nan_loss_on_one_of_two_processes_stops_both(tmp_path):
    """Process 1's loss alone turns NaN at step 2: both processes stop there (none waits for ever in the next
    gradient all-reduce), process 0 saying that it was another process's loss."""
    pytest.importorskip("accelerate")
    returncode, output = run_two_processes(tmp_path, GMEM_TEST_NAN_RANK="1")
    assert returncode != 0, output[-3000:]
    assert "rank 1 stopped at step 1: the training loss became nan at step 2" in output, output[-3000:]
    assert "rank 0 stopped at step 1: the training loss became NaN or infinite on another process at step 2" in output
    assert not (tmp_path / "weights.safetensors").exists()


def test_ctrl_c_on_one_of_two_processes_stops_both_after_the_same_step(tmp_path):
    """Process 1 alone gets SIGINT during step 2: both stop after step 2 (the request travels with the step's
    reduced flags), where process 0 would otherwise go on into step 3's all-reduce and wait for ever. ~50 s: the only
    check of that agreement (two CPU processes under torchrun)."""
    pytest.importorskip("accelerate")
    returncode, output = run_two_processes(tmp_path, GMEM_TEST_CTRL_C_RANK="1")
    assert returncode != 0, output[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} stopped by Ctrl-C after step 2" in output, output[-3000:]


def test_a_launch_accelerate_does_not_join_is_refused(digits, monkeypatch):
    """Started as several processes but Accelerate sees one: each process would train the whole batch alone."""
    accelerate = pytest.importorskip("accelerate")

    class Alone:
        num_processes = 1

        def __init__(self, **kw):
            pass

    monkeypatch.setattr(accelerate, "Accelerator", Alone)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(RuntimeError, match="started as 4 processes .* Launch with torchrun"):
        Trainer(build_model(**TINY), digits.images, conditions(len(digits)), TrainConfig(progress=False),
                use_accelerate=True)


def test_gmem_train_checkpoint_every(tmp_path, monkeypatch, capsys):
    """`gmem train --checkpoint-every 0` saves no periodic state (it used to divide by zero) but still the final
    one; N saves every N steps, on every process (a save waits for all of them: saved from an on_step callback,
    which runs on the main process only, it hung a multi-process run at the first save); a negative count is
    refused by argparse before anything loads."""
    from gmem_explore.cli.main import main
    from gmem_explore.safefiles import load_tensors

    saved = []
    original = Trainer.save_state

    def save_state(self, path):
        saved.append(self.step)
        assert path.name == "train-state.safetensors", path  # what --resume reads
        return original(self, path)

    monkeypatch.setattr(Trainer, "save_state", save_state)
    # held_out digits and 2 steps of 4 images: the cheapest real run of the command
    common = ["train", "--data", "digits", "--split", "held_out", "--steps", "2", "--batch-size", "4", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "never"), "--checkpoint-every", "0"]) == 0
    assert saved == [2]  # only the final save
    saved.clear()
    assert main([*common, "--out", str(tmp_path / "odd"), "--checkpoint-every", "3"]) == 0
    assert saved == [2]  # no periodic save at step 2: the final one still happens
    _, state = load_tensors(tmp_path / "never" / "train-state.safetensors")
    assert state["step"] == 2 and (tmp_path / "never" / "config.json").is_file()
    saved.clear()
    assert main([*common, "--out", str(tmp_path / "every"), "--checkpoint-every", "1"]) == 0
    assert saved == [1, 2]  # after each step; the final save is the one at step 2 (it was written twice)
    # a process other than the main one saves as often (it writes nothing, and prints nothing)
    built = Trainer.__init__
    monkeypatch.setattr(Trainer, "__init__", lambda self, *a, **k: built(self, *a, **k) or setattr(self, "is_main", False))
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "other"), "--checkpoint-every", "1"]) == 0
    assert saved == [1, 2, 1, 2] and capsys.readouterr().out == ""
    assert not (tmp_path / "other" / "train-state.safetensors").exists()
    with pytest.raises(SystemExit) as exit_info:
        main([*common, "--out", str(tmp_path / "bad"), "--checkpoint-every", "-1"])
    assert exit_info.value.code == 2
    assert "--checkpoint-every: must be 0 (no periodic saves) or a positive number of steps" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_gmem_train_baseline_notice_is_printed_once_by_the_main_process(tmp_path, monkeypatch, capsys):
    from gmem_explore.cli.main import main

    common = ["train", "--data", "digits", "--split", "held_out", "--steps", "1", "--batch-size", "4", "--no-progress",
              "--condition", "none", "--checkpoint-every", "0"]
    assert main([*common, "--out", str(tmp_path / "main")]) == 0
    assert "--condition none trains a baseline for comparison" in capsys.readouterr().out
    built = Trainer.__init__
    monkeypatch.setattr(Trainer, "__init__", lambda self, *a, **k: built(self, *a, **k) or setattr(self, "is_main", False))
    assert main([*common, "--out", str(tmp_path / "other")]) == 0
    assert capsys.readouterr().out == ""  # was printed by every process, before the Trainer knew which it was


# ---- the condition baselines, the schedule, the config and sample()'s inputs ----------------------------------


def randomized_trainer(digits, **cfg):
    """A trainer whose network already depends on its input (a fresh SiT predicts zeros, so every condition would
    give the same image and a test of conditioning could not fail)."""
    from conftest import randomize

    config = TrainConfig(**{"steps": 2, "batch_size": 8, "progress": False, **cfg})
    labels_or_rows = digits.labels if config.condition != "snippet" else conditions(len(digits))
    return Trainer(randomize(build_model(**TINY)), digits.images, labels_or_rows, config, use_accelerate=False)


@pytest.mark.parametrize("condition", ["label", "none"])
def test_baseline_conditions_are_not_exported(digits, tmp_path, condition):
    """A label / none network fed bank rows by the pipeline would make meaningless images without a word: export
    refuses, says why and how to sample the baseline, and writes nothing."""
    trainer = randomized_trainer(digits, condition=condition)
    bank = MemoryBank(conditions(len(digits)), torch.ones(len(digits)), digits.labels, digits.label_names, digits.images)
    with pytest.raises(ValueError, match=r"baseline for comparison.*trainer\.sample\(.*condition='snippet'"):
        trainer.export(tmp_path / "ckpt", bank)
    assert not (tmp_path / "ckpt").exists()
    assert trainer.sample(conditions=digits.labels[:2], steps=2).shape == (2, 8, 8, 3)


def test_gmem_train_label_writes_the_state_and_no_checkpoint(tmp_path, capsys):
    from gmem_explore.cli.main import main

    out = tmp_path / "labels"
    assert main(["train", "--data", "digits", "--split", "held_out", "--steps", "1", "--batch-size", "4",
                 "--no-progress", "--condition", "label", "--out", str(out)]) == 0
    assert (out / "train-state.safetensors").is_file() and not (out / "config.json").exists()
    said = capsys.readouterr().out
    assert "baseline for comparison" in said and "no checkpoint folder" in said and "trainer.sample" in said


def test_lr_holds_its_final_value_beyond_the_schedule(digits):
    """fit(steps=N) may run past config.steps; the cosine decay must stay at lr_final there, not climb its next
    period back to lr (it gave .155, .505, .855, 1.0 after the end)."""
    trainer = make(digits, steps=6, decay=4, warmup=1, lr=1e-3, lr_final=1e-5)
    rates = [trainer.lr_at(step) / 1e-3 for step in range(14)]
    assert rates == pytest.approx([1, 1, 1, .855, .505, .155] + [.01] * 8, abs=1e-3)
    short = make(digits, steps=1, decay=1, warmup=1, lr=1e-3, lr_final=1e-5)
    short.fit()
    assert [h["lr"] for h in short.fit(steps=2)] == pytest.approx([1e-5, 1e-5])


def test_checkpoint_every_needs_an_out_dir(tmp_path):
    """Periodic saves with nowhere to save were skipped without a word; the defaults stay quiet."""
    import warnings

    with pytest.raises(ValueError, match="out_dir is not set: give out_dir, or checkpoint_every=0"):
        TrainConfig(checkpoint_every=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TrainConfig().checkpoint_every == 0 and TrainConfig().out_dir is None
    assert TrainConfig(checkpoint_every=5, out_dir=str(tmp_path)).checkpoint_every == 5


def test_sample_normalises_snippets_as_training_does(digits):
    trainer = randomized_trainer(digits)
    rows = conditions(3, seed=5) * 7  # norm ~28: far from the unit rows training saw
    raw = trainer.sample(conditions=rows, steps=2)
    unit = trainer.sample(conditions=rows / rows.norm(dim=1, keepdim=True), steps=2)
    assert torch.equal(raw, unit)
    # the check can fail: the snippet does change the image
    assert not torch.equal(unit, trainer.sample(conditions=conditions(3, seed=6), steps=2))


def test_sample_takes_its_count_from_the_conditions(digits):
    trainer = randomized_trainer(digits)
    rows = conditions(len(digits))
    assert trainer.sample(conditions=rows[:3], steps=2).shape == (3, 8, 8, 3)  # eval_images is 16
    assert trainer.sample(seeds=[4, 5], steps=2).shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match=r"\{'n': 2, 'conditions': 3\}.*leave n out"):
        trainer.sample(2, conditions=rows[:3])
    with pytest.raises(ValueError, match="label 99 but training saw labels 0 to 9"):
        randomized_trainer(digits, condition="label").sample(conditions=torch.tensor([1, 99]))


def test_unconditional_training_takes_eval_conditions_of_any_kind(digits):
    """condition "none" ignores eval_conditions but used `conditions or [0]`, which a tensor cannot answer."""
    config = TrainConfig(steps=1, batch_size=8, condition="none", eval_images=3, eval_steps=2, progress=False)
    for given in (digits.labels[:3], conditions(3)):
        trainer = Trainer(build_model(**TINY), digits.images, None, config, eval_conditions=given, use_accelerate=False)
        assert trainer.evaluate()["images"].shape == (3, 8, 8, 3)


def test_train_config_from_dict_refuses_unknown_keys_and_reads_saved_ones(digits, tmp_path):
    from gmem_explore.checkpoints.folder import read_config
    from gmem_explore.checkpoints.hub import resolve_checkpoint
    from gmem_explore.safefiles import read_header

    with pytest.raises(ValueError, match=r"Unknown training config keys \['batchsize'\]; known keys: .*'batch_size'"):
        TrainConfig.from_dict({"batchsize": 9})
    shipped = read_config(resolve_checkpoint("emoji-32"))["training"]["config"]  # written by an earlier version
    assert TrainConfig.from_dict(shipped).batch_size == 512
    trainer = make(digits, steps=1)
    trainer.save_state(tmp_path / "state.safetensors")
    assert TrainConfig.from_dict(read_header(tmp_path / "state.safetensors")[1]["config"]) == trainer.config


def test_gmem_train_resume_continues_the_saved_schedule(tmp_path, capsys):
    """The warm-up was derived from --steps again on --resume: a run of 1 step (warm-up 1) extended to --steps 10
    would have warmed up again over 3 steps. The saved config rules; a flag that changes training is refused."""
    from gmem_explore.cli.main import main
    from gmem_explore.safefiles import read_header

    common = ["train", "--data", "digits", "--split", "held_out", "--batch-size", "4", "--no-progress",
              "--checkpoint-every", "0", "--out", str(tmp_path / "run")]
    assert main([*common, "--steps", "1"]) == 0
    assert main([*common, "--steps", "4", "--resume", "--batch-size", "8"]) == 1
    assert "--batch-size 8 (the saved run used 4)" in capsys.readouterr().err
    assert main([*common, "--steps", "10", "--resume"]) == 0
    meta = read_header(tmp_path / "run" / "train-state.safetensors")[1]
    assert meta["config"]["warmup"] == 1 and meta["config"]["steps"] == 10 and meta["step"] == 10
    assert [h["lr"] for h in meta["history"]] == [2e-4] * 10


def test_a_state_resumes_only_on_the_images_it_was_trained_on(digits, tmp_path):
    from gmem_explore.safefiles import save_tensors

    first = make(digits, steps=2)
    first.fit()
    first.save_state(tmp_path / "state.safetensors")
    shifted = digits.subset(torch.arange(1, len(digits)).tolist() + [0])  # the same images, another order
    fewer = digits.subset(torch.arange(len(digits) - 1))
    for data, says in ((shifted, "256 images, and this trainer has other images"),
                       (fewer, "256 images, and this trainer has 255 images")):
        other = make(data, steps=2)
        before = {k: v.clone() for k, v in other.network.state_dict().items()}
        with pytest.raises(ValueError, match=f"{says}.*the same --data and --split"):
            other.load_state(tmp_path / "state.safetensors")
        assert other.step == 0 and all(torch.equal(v, before[k]) for k, v in other.network.state_dict().items())
    # a state saved before the record existed resumes as before
    tensors, meta = first.state_tensors()
    del meta["data"]
    save_tensors(tmp_path / "old.safetensors", tensors, meta)
    make(shifted, steps=2).load_state(tmp_path / "old.safetensors")


def test_a_state_resumes_only_with_the_encoder_that_made_its_snippets(digits, tmp_path):
    """`gmem train --resume --init OTHER` (another snippet encoder) would train the saved run on other bank rows:
    the state records the encoder's config and weights, and another encoder is refused. An encoder with the same
    weights (an --init that copied it, as gmem train does) resumes, and so do states saved without the record."""
    from gmem_explore.encoders.conv import ConvEncoder
    from gmem_explore.safefiles import save_tensors

    def encoder(seed):
        torch.manual_seed(seed)
        return ConvEncoder(dim=16, image_size=8, widths=(8,), head_channels=8).eval()

    def trainer(enc):
        torch.manual_seed(0)
        config = TrainConfig(steps=2, batch_size=16, lr=3e-3, warmup=1, progress=False)
        return Trainer(build_model(**TINY), digits.images, conditions(len(digits)), config, encoder=enc,
                       use_accelerate=False)

    first = trainer(encoder(0))
    first.fit()
    first.save_state(tmp_path / "state.safetensors")
    with pytest.raises(ValueError, match="snippets from another encoder.*the same --init"):
        trainer(encoder(1)).load_state(tmp_path / "state.safetensors")
    same = trainer(encoder(0))
    same.load_state(tmp_path / "state.safetensors")
    assert same.step == 2
    tensors, meta = first.state_tensors()  # a state saved before the encoder was recorded resumes as before
    meta["data"] = {k: v for k, v in meta["data"].items() if k != "encoder"}
    save_tensors(tmp_path / "old.safetensors", tensors, meta)
    trainer(encoder(1)).load_state(tmp_path / "old.safetensors")


def test_gmem_train_resume_on_other_data_is_refused(tmp_path, capsys):
    from gmem_explore.cli.main import main

    common = ["train", "--data", "digits", "--batch-size", "4", "--no-progress", "--checkpoint-every", "0",
              "--steps", "1", "--out", str(tmp_path / "run")]
    assert main([*common, "--split", "held_out"]) == 0
    assert f"gmem evaluate --checkpoint {tmp_path / 'run'} --data digits --split held_out" in capsys.readouterr().out
    assert main([*common, "--split", "train", "--resume"]) == 1
    err = " ".join(capsys.readouterr().err.split())  # one paragraph, wrapped
    assert ("images from --data digits --split held_out --init emoji-32, and this run has" in err
            and "images from --data digits --split train --init emoji-32: resuming would not continue that run. "
                "Resume with --data digits --split held_out --init emoji-32, or start a new run" in err), err


# ---- the objective, the EMA, snippet dropout and normalisation, each checked against its formula ---------------


class RecordingModule(torch.nn.Module):
    """Stands in for the TrainingModule: records what loss_on feeds it and answers `answer`."""

    def __init__(self, answer):
        super().__init__()
        self.answer, self.calls = answer, []

    def forward(self, x_t, t, cond, condition, keep, want_projection):
        self.calls.append({"x_t": x_t, "t": t, "cond": cond, "keep": keep})
        return self.answer, None


def test_loss_on_is_the_gmem_objective(digits):
    """x_t = (1 - t) x + t noise (t = 1 is pure noise) and the target is the velocity noise - x: a network that
    answers exactly noise - x has zero loss."""
    trainer = make(digits)
    idx = torch.tensor([3, 0, 7, 3])
    t = torch.tensor([0.0, 1.0, 0.25, 0.9])
    noise = torch.randn((4, *trainer.data.shape[1:]), generator=torch.Generator().manual_seed(1))
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0])
    x = trainer.data[idx]
    trainer.module = RecordingModule(noise - x)
    loss, mse, repa = trainer.loss_on(idx, t, noise, keep)
    assert mse.item() == 0 and loss.item() == 0 and repa.item() == 0
    call = trainer.module.calls[0]
    torch.testing.assert_close(call["x_t"], (1 - t[:, None, None, None]) * x + t[:, None, None, None] * noise)
    assert torch.equal(call["x_t"][0], x[0]) and torch.equal(call["x_t"][1], noise[1])  # t = 0 data, t = 1 noise
    assert torch.equal(call["t"], t) and torch.equal(call["keep"], keep)
    assert torch.equal(call["cond"], trainer.conditions[idx])
    # and the loss is the mean squared error to that target (an answer of x - noise is off by 2 (noise - x))
    trainer.module = RecordingModule(x - noise)
    torch.testing.assert_close(trainer.loss_on(idx, t, noise, keep)[1], (2 * (noise - x)).pow(2).mean())


@pytest.mark.parametrize("ema_decay", [0.5, 0.05])
def test_ema_update_follows_the_warmed_up_decay(digits, ema_decay):
    """After optimizer step k (1, 2, ...) each EMA weight moves from its old value towards the new weight by
    1 - min(ema_decay, (1 + k) / (10 + k)): with 0.5 the warm-up rules (2/11, 3/12), with 0.05 the decay does."""
    trainer = make(digits, batch_size=8, ema_decay=ema_decay)
    moved = False
    for k in (1, 2):
        old = {name: p.detach().clone() for name, p in trainer.ema.named_parameters()}
        trainer.train_step()
        assert trainer.step == k
        decay = min(ema_decay, (1 + k) / (10 + k))
        new = dict(trainer.module.named_parameters())
        for name, p in trainer.ema.named_parameters():
            want = old[name] + (new[name].detach() - old[name]) * (1 - decay)
            torch.testing.assert_close(p, want, atol=1e-7, rtol=1e-5, msg=name)
            moved = moved or (new[name] - old[name]).abs().max() > 1e-4
    assert moved  # the weights changed, so an EMA that copies them, or stays behind, fails above


def test_snippet_dropout_keeps_the_right_share(digits):
    """The keep mask keeps a snippet with probability 1 - snippet_dropout."""
    trainer = make(digits, batch_size=4000, snippet_dropout=0.1)
    keep = trainer._draw_batch()[3]
    assert keep.shape == (4000,) and set(keep.unique().tolist()) <= {0.0, 1.0}
    assert keep.mean().item() == pytest.approx(0.9, abs=0.02)
    trainer.config.snippet_dropout = 0.0
    assert torch.equal(trainer._draw_batch()[3], torch.ones(4000))
    trainer.config.snippet_dropout = 1.0
    assert torch.equal(trainer._draw_batch()[3], torch.zeros(4000))


def test_snippet_conditions_are_normalised(digits):
    """Training sees unit rows, so a bank row's scale does not matter (the pipeline normalises too): rows five
    times as long train exactly like the rows themselves."""
    rows = conditions(len(digits))
    config = TrainConfig(steps=1, batch_size=8, progress=False)

    def first_loss(given):
        trainer = Trainer(randomize(build_model(**TINY)), digits.images, given, config, use_accelerate=False)
        return trainer, trainer.train_step()["loss"]

    plain, loss = first_loss(rows)
    scaled, scaled_loss = first_loss(5 * rows)
    torch.testing.assert_close(scaled.conditions.norm(dim=1), torch.ones(len(rows)))
    torch.testing.assert_close(scaled.conditions, rows / rows.norm(dim=1, keepdim=True))
    assert scaled_loss == loss
    assert first_loss(conditions(len(digits), seed=3))[1] != loss  # the check can fail: the snippet matters


def test_save_unless_current_writes_after_a_load_at_the_same_step(digits, tmp_path):
    """save_state_unless_current skips only a save this Trainer already made of its current state: after load_state
    of another file at the same step the weights differ, so it writes again."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    trainer = make(digits, steps=2, batch_size=4)
    trainer.fit()
    trainer.save_state(a)
    stamp = a.stat().st_mtime_ns
    trainer.save_state_unless_current(a)
    assert a.stat().st_mtime_ns == stamp  # the same state at the same step: not written again
    other = make(digits, steps=2, batch_size=4, lr=1e-2)
    other.fit()
    other.save_state(b)
    trainer.load_state(b)  # step 2 again, other weights
    trainer.save_state_unless_current(a)
    assert load_tensors(a)[1]["step"] == 2
    written, loaded = load_tensors(a)[0], load_tensors(b)[0]
    modules = [k for k in loaded if k.startswith("module.")]
    assert modules and all(torch.equal(written[k], loaded[k]) for k in modules)  # b's weights, not the first run's
