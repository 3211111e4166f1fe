"""Faults: a writer killed with SIGKILL at a random moment leaves the old file or the new one, loadable, never a
broken one; training killed and resumed ends with the same weights as an uninterrupted run.

The writers are forked children (the parent has already paid for `import torch`), killed after a random delay
while they rewrite the same file in a loop with alternating contents; after every kill the parent loads the file
and checks that it is exactly one complete version. Some kills must land inside a write (a temporary file is
left behind), or the test would prove nothing.
"""
from __future__ import annotations

import functools
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY  # noqa: E402

from gmem_explore import MemoryBank, build_model  # noqa: E402
from gmem_explore.checkpoints.folder import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

BANK_ROWS, BANK_DIM = 24_000, 512  # 49 MB of float32: one save takes long enough to be killed inside
CKPT_BANK = (200_000, TINY["snippet_dim"])  # 13 MB: the checkpoint's bank, for the tiny model
BUDGET_S = 3.5  # per test: stop killing after this long (each round also loads and checks the file)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # also makes fork safe: no intra-op worker threads to inherit
    yield
    torch.set_num_threads(before)


def bank_version(v: int, rows: int = BANK_ROWS, dim: int = BANK_DIM) -> MemoryBank:
    """Version v: every value is v + 1, and freq holds v + 1 too, so a mix of versions is visible."""
    return MemoryBank(torch.full((rows, dim), float(v + 1)), torch.full((rows,), float(v + 1)))


def which_bank_version(bank: MemoryBank, shape=(BANK_ROWS, BANK_DIM)) -> int:
    value = float(bank.rows[0, 0])
    assert torch.all(bank.rows == value) and torch.all(bank.freq == value), "a bank mixing two versions"
    assert bank.rows.shape == shape
    return int(value) - 1


def kill_while(write_forever, delays, started: Callable[[], bool] | None = None) -> list[int]:
    """Forks a child running write_forever(), SIGKILLs it after each delay (counted from when `started()` first
    holds, if given: on a loaded machine a child may need a while to get going); returns the exit signals."""
    signals = []
    for delay in delays:
        pid = os.fork()
        if pid == 0:  # the child: write until killed, never return into pytest
            try:
                write_forever()
            finally:
                os._exit(0)
        limit = time.monotonic() + 20
        while started is not None and not started() and time.monotonic() < limit:
            time.sleep(0.001)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        signals.append(os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1)
    return signals


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def test_killed_bank_writer_leaves_a_loadable_old_or_new_bank(tmp_path):
    path = tmp_path / "bank.safetensors"
    versions = [bank_version(0), bank_version(1)]
    versions[0].save(path)

    def write_forever():
        for i in range(10_000):
            versions[i % 2].save(path)

    rng = random.Random(0)
    seen, interrupted = set(), 0
    started = time.monotonic()
    for round_ in range(12):
        before = len(leftovers(tmp_path))
        # odd rounds: a random moment; even rounds: just after a write began (so some kills surely land inside)
        writing = None if round_ % 2 else (lambda: len(leftovers(tmp_path)) > before)
        assert kill_while(write_forever, [rng.uniform(0.0, 0.02 if writing else 0.4)], writing) == [signal.SIGKILL]
        interrupted += len(leftovers(tmp_path)) > before
        seen.add(which_bank_version(MemoryBank.load(path)))  # loads, and is one whole version
        if time.monotonic() - started > BUDGET_S:
            break
    assert interrupted >= 1, "no kill landed inside a write: the test proved nothing"
    assert seen <= {0, 1}


def model_version(v: int):
    torch.manual_seed(0)
    model = build_model(**TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(v + 1)
    return model


def which_checkpoint_version(folder: Path) -> int:
    ckpt = load_checkpoint(folder)
    weights = {float(p.detach().flatten()[0]) for p in ckpt.model.parameters()}
    assert len(weights) == 1, "a model mixing two versions"
    v_model = int(weights.pop()) - 1
    v_bank = which_bank_version(ckpt.bank, CKPT_BANK)
    assert v_model == v_bank, f"the folder holds the model of version {v_model} with the bank of version {v_bank}"
    assert ckpt.info.get("version") == v_model, "config.json from another version than the weights"
    return v_model


def test_killed_checkpoint_writer_leaves_a_loadable_consistent_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    versions = [Checkpoint(model_version(v), bank_version(v, *CKPT_BANK), info={"version": v}) for v in (0, 1)]
    save_checkpoint(folder, versions[0])

    def write_forever():
        for i in range(10_000):
            save_checkpoint(folder, versions[i % 2])

    rng = random.Random(1)
    seen, interrupted = set(), 0
    started = time.monotonic()
    for _ in range(12):
        assert kill_while(write_forever, [rng.uniform(0.02, 0.4)]) == [signal.SIGKILL]
        interrupted += any(tmp_path.glob(".ckpt.saving-*"))  # the kill landed inside a save
        seen.add(which_checkpoint_version(folder))
        if time.monotonic() - started > BUDGET_S:
            break
    assert interrupted >= 1, "no kill landed inside a save: the test proved nothing"
    assert seen <= {0, 1}
    save_checkpoint(folder, versions[1])  # the next save clears what the killed ones left
    assert not list(tmp_path.glob(".ckpt.*")) and which_checkpoint_version(folder) == 1


def test_a_save_killed_between_its_renames_is_still_loadable(tmp_path):
    """The one moment the folder name is free: the old folder is aside, the new one not yet in place."""
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, Checkpoint(model_version(0), bank_version(0, 50, 16), info={"version": 0}))
    os.rename(folder, tmp_path / ".ckpt.old-abc123")
    ckpt = load_checkpoint(folder)
    assert ckpt.info["version"] == 0 and not folder.exists()  # read where it lies, nothing moved
    save_checkpoint(folder, Checkpoint(model_version(1), bank_version(1, 50, 16), info={"version": 1}))
    assert load_checkpoint(folder).info["version"] == 1 and not list(tmp_path.glob(".ckpt.*"))


def test_saving_over_a_checkpoint_keeps_other_files_and_permissions(tmp_path):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, Checkpoint(model_version(0), bank_version(0, 50, 16), info={"version": 0}))
    (folder / "notes.txt").write_text("keep me")
    (folder / "runs").mkdir()
    (folder / "runs" / "log.csv").write_text("step,loss")
    folder.chmod(0o750)
    save_checkpoint(folder, Checkpoint(model_version(1), bank_version(1, 50, 16), info={"version": 1}))
    assert (folder / "notes.txt").read_text() == "keep me" and (folder / "runs" / "log.csv").is_file()
    assert folder.stat().st_mode & 0o777 == 0o750
    assert load_checkpoint(folder).info["version"] == 1


# ---- training killed and resumed -------------------------------------------------------------------------------
TRAIN_STEPS = 16


@functools.lru_cache(maxsize=1)
def digits_images() -> torch.Tensor:
    from gmem_explore.data import load_digits

    return load_digits().subset(torch.arange(128)).images


def digits_trainer(out_dir=None):
    from gmem_explore.train.trainer import TrainConfig, Trainer

    images = digits_images()
    snippets = torch.randn(len(images), TINY["snippet_dim"], generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=TRAIN_STEPS, batch_size=8, lr=3e-3, warmup=2, progress=False, seed=7,
                         checkpoint_every=1 if out_dir else 0, out_dir=str(out_dir) if out_dir else None)
    torch.manual_seed(0)
    return Trainer(build_model(**TINY), images, snippets, config, use_accelerate=False)


def test_training_killed_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    pytest.importorskip("sklearn")
    state = tmp_path / "run" / "state.safetensors"
    digits_images()  # loaded once, before the fork

    def train_until_killed():
        digits_trainer(tmp_path / "run").fit()  # saves its state after every step

    pid = os.fork()
    if pid == 0:
        try:
            train_until_killed()
        finally:
            os._exit(0)
    deadline = time.monotonic() + 60
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(2).uniform(0.0, 0.1))  # a step or two further, maybe inside a save
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), "the training process finished before it was killed: nothing was tested"

    resumed = digits_trainer(tmp_path / "run")
    resumed.load_state(state)  # the last complete state, whatever the kill interrupted
    killed_at = resumed.step
    assert 1 <= killed_at < TRAIN_STEPS
    resumed.config.checkpoint_every = 0
    resumed.fit()
    straight = digits_trainer()
    straight.fit()
    for name, value in straight.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[name]), f"{name} differs after a kill at step {killed_at}"
    for name, value in straight.ema_model.state_dict().items():
        assert torch.equal(value, resumed.ema_model.state_dict()[name]), f"EMA {name} differs (kill at {killed_at})"


def test_a_new_save_removes_only_stale_temporary_files(tmp_path):
    """What a killed writer left (older than an hour) goes at the next save; a younger one may be a save in
    progress elsewhere and stays; other files are never touched."""
    from gmem_explore.safefiles import STALE_TEMP_SECONDS

    path = tmp_path / "bank.safetensors"
    stale, fresh, other = (tmp_path / ".bank.safetensors.abc123.tmp", tmp_path / ".bank.safetensors.def456.tmp",
                           tmp_path / ".other.safetensors.ghi789.tmp")
    for f in (stale, fresh, other):
        f.write_bytes(b"partial")
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    bank_version(0).save(path)
    assert not stale.exists() and fresh.exists() and other.exists()
    assert which_bank_version(MemoryBank.load(path)) == 0


# ---- what an atomic save promises besides atomicity ------------------------------------------------------------
def test_a_save_is_flushed_to_disk_before_it_replaces_the_old_file(tmp_path, monkeypatch):
    # Without the fsync, a power cut after the rename can leave an empty or partial file under the final name
    # (the rename reached the disk, the data did not): crash safety needs fsync(temp) strictly before replace.
    import gmem_explore.safefiles as sf

    calls = []
    real_fsync, real_replace = sf.os.fsync, sf.os.replace

    def fsync(fd):
        calls.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.stat(src).st_ino))
        return real_replace(src, dst)

    monkeypatch.setattr(sf.os, "fsync", fsync)
    monkeypatch.setattr(sf.os, "replace", replace)
    path = tmp_path / "b.safetensors"
    MemoryBank(torch.randn(5, 16)).save(path)
    inode = path.stat().st_ino
    assert ("fsync", inode) in calls and ("replace", inode) in calls, calls
    assert calls.index(("fsync", inode)) < calls.index(("replace", inode)), calls
    assert MemoryBank.load(path).rows.shape == (5, 16)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_saved_file_gets_the_usual_permissions_not_mkstemps_0600(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = tmp_path / "b.safetensors"
        MemoryBank(torch.randn(5, 16)).save(path)
        assert path.stat().st_mode & 0o777 == mode, oct(path.stat().st_mode & 0o777)
        MemoryBank(torch.randn(6, 16)).save(path)  # saving over it: the same
        assert path.stat().st_mode & 0o777 == mode, oct(path.stat().st_mode & 0o777)
    finally:
        os.umask(old)
