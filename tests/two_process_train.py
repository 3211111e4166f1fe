"""One process of tests/test_train.py's two-process run (started by torchrun --nproc_per_node 2, on the CPU):
train exactly like the test's make(steps=3), then save the state and, on the main process, the weights.
With GMEM_TEST_NAN_RANK=r, process r's loss turns NaN at step 2: every process must stop, none may hang.
With GMEM_TEST_CTRL_C_RANK=r, process r alone gets SIGINT during step 2: every process must stop after step 2."""
import math
import os
import signal
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # test_train; the repository

from conftest import TINY  # noqa: E402
from test_train import conditions  # noqa: E402

from gmem_explore import build_model  # noqa: E402
from gmem_explore.data import load_digits  # noqa: E402
from gmem_explore.safefiles import save_tensors  # noqa: E402
from gmem_explore.train.trainer import StopRequested, TrainConfig, Trainer  # noqa: E402

out = Path(sys.argv[1])
digits = load_digits().subset(torch.arange(256))
torch.manual_seed(0)
config = TrainConfig(steps=3, batch_size=16, lr=3e-3, warmup=2, progress=False)
trainer = Trainer(build_model(**TINY), digits.images, conditions(len(digits)), config, use_accelerate=True)
if os.environ.get("GMEM_TEST_NAN_RANK") == str(trainer.rank):
    real_loss = trainer.loss_on
    trainer.loss_on = lambda *b: tuple(v * (math.nan if trainer.step == 1 and i == 0 else 1)
                                       for i, v in enumerate(real_loss(*b)))
if os.environ.get("GMEM_TEST_CTRL_C_RANK") == str(trainer.rank):
    real_loss = trainer.loss_on

    def loss_on(*batch):
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*batch)

    trainer.loss_on = loss_on
try:
    trainer.fit()
except FloatingPointError as e:
    print(f"rank {trainer.rank} stopped at step {trainer.step}: {e}", flush=True)
    sys.exit(3)
except StopRequested:
    print(f"rank {trainer.rank} stopped by Ctrl-C after step {trainer.step}", flush=True)
    sys.exit(4)
trainer.save_state(out / "state.safetensors")  # written by the main process only
if trainer.is_main:
    save_tensors(out / "weights.safetensors", dict(trainer.network.state_dict()), {"world": trainer.world})
print(f"rank {trainer.rank} of {trainer.world}: done", flush=True)
