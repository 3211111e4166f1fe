"""Resuming a train state: the state records where its images came from (the Trainer's data_source; gmem train:
--data, --split, --init), and a resume on other images names the saved source and the given one; gmem train's
--seed on --resume; what an export records of the run."""
from __future__ import annotations

import pytest
import torch

from gmem_explore import build_model
from gmem_explore.safefiles import read_header
from gmem_explore.train.trainer import TrainConfig, Trainer

from conftest import TINY


def pixels(n, seed=0):
    return torch.randint(0, 256, (n, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def trainer(images, source):
    torch.manual_seed(0)
    rows = torch.randn(len(images), 16, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=2, batch_size=4, lr=3e-3, warmup=1, progress=False)
    return Trainer(build_model(**TINY), images, rows, config, use_accelerate=False, data_source=source)


SAVED = {"--data": "/photos/cats", "--split": "train", "--init": "emoji-32"}


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "state.safetensors"
    first = trainer(pixels(8), SAVED)
    first.fit()
    first.save_state(path)
    return path


def test_the_state_records_the_data_source(saved_state):
    assert read_header(saved_state)[1]["data"]["source"] == SAVED


def test_a_resume_on_other_images_names_both_sources_and_what_to_do(saved_state):
    other = trainer(pixels(6, seed=1), {**SAVED, "--data": "/photos/dogs"})
    with pytest.raises(ValueError, match="trained on 8 images from --data /photos/cats --split train --init emoji-32, "
                                         "and this run has 6 images from --data /photos/dogs --split train --init "
                                         "emoji-32: resuming would not continue that run. Resume with --data "
                                         "/photos/cats --split train --init emoji-32, or start a new run with this "
                                         r"data \(a new --out\)"):
        other.load_state(saved_state)
    assert other.step == 0
    changed = trainer(pixels(8, seed=2), SAVED)  # the same folder, whose files changed
    with pytest.raises(ValueError, match=r"from --data /photos/cats --split train --init emoji-32 \(the same "
                                         r"source, whose images have changed since\)"):
        changed.load_state(saved_state)


def test_the_same_images_from_another_place_resume(saved_state):
    """A folder moved or named another way holds the same images: the fingerprint decides, not the path."""
    moved = trainer(pixels(8), {**SAVED, "--data": "/archive/cats"})
    moved.load_state(saved_state)
    assert moved.step == 2
    unnamed = trainer(pixels(8), None)  # and a trainer given no source resumes it too
    unnamed.load_state(saved_state)
    assert unnamed.step == 2


def test_gmem_train_resume_refuses_another_seed_only_when_given(tmp_path):
    """--seed on --resume was dropped without a word (the saved seed went on); its default 0 could not tell a
    given --seed 0 from none. Now a --seed given is compared like the other flags that shape training."""
    import argparse

    from gmem_explore.cli.train import add_arguments, resumed_config
    from gmem_explore.safefiles import save_tensors

    state = tmp_path / "train-state.safetensors"
    save_tensors(state, {"x": torch.zeros(1)}, {"config": TrainConfig(seed=5, batch_size=32, lr=2e-4).to_dict()})
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def resume(*flags):
        return resumed_config(state, parser.parse_args(["--data", "digits", "--out", str(tmp_path), "--resume", *flags]))

    assert resume().seed == 5 and resume("--seed", "5").seed == 5
    with pytest.raises(ValueError, match=r"--seed 0 \(the saved run used 5\)"):
        resume("--seed", "0")


def test_an_export_records_the_recipe_without_the_run_s_save_folder(tmp_path):
    """gmem train now saves through config.out_dir / checkpoint_every; the exported config.json keeps the recipe
    without that local path, and still reads back as a TrainConfig."""
    import json

    from gmem_explore import MemoryBank

    images = pixels(8)
    config = TrainConfig(steps=1, batch_size=4, progress=False, checkpoint_every=1, out_dir=str(tmp_path / "secret"))
    torch.manual_seed(0)
    rows = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    tr = Trainer(build_model(**TINY), images, rows, config, use_accelerate=False)
    tr.fit()
    tr.export(tmp_path / "ckpt", MemoryBank(rows, torch.ones(8)))
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())["training"]["config"]
    assert saved["out_dir"] is None and saved["checkpoint_every"] == 0 and "secret" not in json.dumps(saved)
    assert TrainConfig.from_dict(saved).batch_size == 4


def test_a_state_loaded_into_a_trainer_with_another_recipe_says_which_settings_differ(saved_state):
    import warnings

    same = trainer(pixels(8), SAVED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved recipe itself, after its JSON round trip (betas a list): silent
        same.load_state(saved_state)
    other = trainer(pixels(8), SAVED)
    other.config.batch_size, other.config.ema_decay, other.config.steps = 8, 0.99, 50  # steps may grow: not named
    with pytest.warns(UserWarning, match=r"batch_size: saved 4, this trainer 8; ema_decay: saved 0.999, this "
                                         r"trainer 0.99\); the run continues with this Trainer's") as record:
        other.load_state(saved_state)
    assert "steps:" not in str(record[0].message) and other.step == 2
