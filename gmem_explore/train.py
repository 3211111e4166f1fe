"""Trainer: the GMem objective with EMA, callbacks, atomic checkpoints, exact resume and Accelerate.

    from gmem_explore.train import Trainer, TrainConfig
    trainer = Trainer(model, images, conditions=bank_rows, config=TrainConfig(steps=2000, batch_size=64))
    trainer.on("on_step", lambda tr, ev: losses.append(ev["loss"]))          # every step
    trainer.on("on_eval", lambda tr, ev: show(ev["images"]))                   # every config.eval_every steps
    trainer.on("on_checkpoint", lambda tr, ev: print(ev["path"]))              # after each state save
    trainer.fit()                        # runs to config.steps (or trainer.fit(steps=N) for N more steps)
    trainer.save_state("run/state.safetensors"); trainer.load_state("run/state.safetensors")  # exact resume
    trainer.export("my-model", bank, encoder)   # EMA weights as a checkpoint folder GMemPipeline loads

Inputs: `images` uint8 (N, H, W, 3) (or already-encoded latents, float (N, C, h, w), with autoencoder=None);
`conditions` what each image is conditioned on: config.condition "snippet" -> float (N, D) rows (the image's
own bank row; normalised here), "label" -> long (N,) labels (a learned embedding of the labels fills the snippet
slot: SiT-style class conditioning, for comparison), "none" -> ignored (zeros). "label" and "none" are baselines to
compare GMem with: sample them with trainer.sample(...); export() refuses them, since a checkpoint folder's user
conditions the network on bank rows.

Objective (GMem v1): x_t = (1 - t) x + t eps, target v = eps - x, loss = MSE(model(x_t, t, s), v); the snippet s is
zeroed with probability snippet_dropout (that also trains the unconditional branch for classifier-free guidance).
Optional REPA-style alignment: repa_weight x (1 - cosine) between the model's projector output (after block
encoder_depth) and the encoder's feature of the clean image (per token when the encoder has
`patch_features(images, grid)`, else its global feature broadcast to every token).

Event payloads (dicts): on_step {step, loss, mse, repa, lr, images_per_s}; on_eval {step, images (uint8), seeds,
loss}; on_checkpoint {step, path}; on_end {step, steps (done in this fit call), error (None, or the exception that
stopped it: KeyboardInterrupt, a non-finite loss)}, after every fit call. Callbacks get (trainer, event).

Determinism: batches, t and noise come from the trainer's own torch.Generator; the whole global batch is drawn
and each process takes its slice, so results do not depend on the number of processes. A saved state holds the
weights, EMA, optimizer moments, step and the trainer's RNG state (dropout is seeded from it every step):
resuming gives the same weights as never stopping.

Many GPUs: `accelerate launch scripts/train_default.py ...`, `torchrun ...`, or `notebook_launcher(fn, num_processes=8)`
with fn building a Trainer; on one CPU process nothing needs a launcher (`torchrun --nproc_per_node 2` also runs
several CPU processes over gloo: tests/test_train.py checks that two train exactly like one). bf16 autocast on CUDA.
"""
from __future__ import annotations

import copy
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoders import PixelSpace
from .bank import normalize
from .fingerprints import training_data
from .safefiles import load_tensors, save_tensors
from .train_checks import (as_training_images, check_loss, check_resume_data, data_shape_message,
                           refuse_unknown_labels, training_conditions)
from .train_config import TrainConfig

EVENTS = ("on_step", "on_eval", "on_checkpoint", "on_end")
class TrainingModule(nn.Module):
    """What the optimizer sees: the GMem network plus, for label conditioning, the label embedding that fills the
    snippet slot. One module so that Accelerate/DDP wraps (and synchronises) both."""

    def __init__(self, model, num_labels: int = 0):
        super().__init__()
        self.model = model
        self.label_embedding = nn.Embedding(num_labels, model.config.snippet_dim) if num_labels else None
        if self.label_embedding is not None:
            nn.init.normal_(self.label_embedding.weight, std=1.0)

    def snippets_for(self, cond: torch.Tensor, condition: str) -> torch.Tensor:
        """What fills the snippet slot. Snippet conditions arrive L2-normalised (train_checks.training_conditions)."""
        if condition == "label":
            return normalize(self.label_embedding(cond))
        if condition == "none":
            return torch.zeros(len(cond), self.model.config.snippet_dim, device=cond.device)
        return cond

    def forward(self, x, t, cond, condition: str, keep: torch.Tensor, want_projection: bool):
        s = self.snippets_for(cond, condition) * keep[:, None]
        if want_projection:
            return self.model.forward_with_projection(x, t, s)
        return self.model(x, t, s), None


def _accelerator(use_accelerate: bool | None):
    """An Accelerator when asked (None: when the accelerate package is importable), else None (plain loop)."""
    if use_accelerate is False:
        return None
    try:
        from accelerate import Accelerator
    except ImportError:
        if use_accelerate:
            raise ImportError("Multi-process training needs accelerate: pip install 'accelerate>=1.0'") from None
        return None
    cuda = torch.cuda.is_available()
    # cpu=True on machines without CUDA: otherwise Accelerate ignores torchrun's WORLD_SIZE there and every process
    # would train the whole batch alone (found by tests/test_train.py's two-process run)
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(f"started as {launched} processes (WORLD_SIZE) but Accelerate joined "
                           f"{accelerator.num_processes}: each would train alone. Launch with torchrun or "
                           f"`accelerate launch --multi_gpu`, one process per GPU.")
    return accelerator


class Trainer:
    def __init__(self, model, images, conditions=None, config: TrainConfig | None = None, autoencoder="auto",
                 encoder=None, eval_conditions=None, use_accelerate: bool | None = None):
        self.config = cfg = config or TrainConfig()
        self.callbacks = defaultdict(list)
        self.accelerator = _accelerator(use_accelerate)
        self.device = self.accelerator.device if self.accelerator else torch.device("cpu")
        self.is_main = self.accelerator.is_main_process if self.accelerator else True
        self.world = self.accelerator.num_processes if self.accelerator else 1
        self.rank = self.accelerator.process_index if self.accelerator else 0
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {self.world} processes")

        self.images = as_training_images(images)
        if autoencoder == "auto":
            autoencoder = PixelSpace(model.config.input_size) if self.images.dtype == torch.uint8 else None
        self.autoencoder = autoencoder
        self.data = autoencoder.encode(self.images).float() if autoencoder is not None else self.images.float()
        want = (model.config.in_channels, model.config.input_size, model.config.input_size)
        if tuple(self.data.shape[1:]) != want:
            raise ValueError(data_shape_message(self.data, want))
        self.conditions = training_conditions(conditions, cfg.condition, model, count=len(self.data))
        self.eval_conditions = None if eval_conditions is None else training_conditions(eval_conditions, cfg.condition, model, "eval_conditions")

        num_labels = int(self.conditions.max()) + 1 if cfg.condition == "label" else 0
        if self.eval_conditions is not None:
            refuse_unknown_labels(self.eval_conditions, num_labels, "eval_conditions", cfg.condition)
        torch.manual_seed(cfg.seed)  # the label embedding's initial values
        self.module = TrainingModule(model, num_labels)
        if cfg.repa_weight <= 0:  # unused parameters would stall DDP; they keep their values in the checkpoint
            self.module.model.projectors.requires_grad_(False)
        self.repa_targets = self._repa_targets(encoder) if cfg.repa_weight > 0 else None
        self.encoder = encoder  # its weights are part of data_fingerprint: they make the snippet conditions
        self.ema = copy.deepcopy(self.module).requires_grad_(False).eval()
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.ema.to(self.device)
        if self.accelerator:
            self.module, self.optimizer = self.accelerator.prepare(self.module, self.optimizer)
        else:
            self.module.to(self.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.history: list[dict] = []

    # ---- set-up helpers ------------------------------------------------------------------------------------
    def _repa_targets(self, encoder):
        if encoder is None or self.images.dtype != torch.uint8:
            raise ValueError("repa_weight > 0 needs the snippet encoder and uint8 training images")
        grid = self.module.model.config.input_size // self.module.model.config.patch_size
        if hasattr(encoder, "patch_features"):
            return encoder.patch_features(self.images, grid).float()  # (N, tokens, D)
        return encoder.encode(self.images).float()[:, None]  # (N, 1, D), broadcast over tokens

    # ---- events ----------------------------------------------------------------------------------------------
    def on(self, event: str, fn) -> None:
        if event not in EVENTS:
            raise ValueError(f"Unknown event {event!r}; events are {EVENTS}")
        self.callbacks[event].append(fn)

    def _fire(self, event: str, payload: dict) -> None:
        if self.is_main:
            for fn in self.callbacks[event]:
                fn(self, payload)

    # ---- the objective ------------------------------------------------------------------------------------
    @property
    def network(self):
        """The training (non-EMA) GMem network, unwrapped."""
        module = self.accelerator.unwrap_model(self.module) if self.accelerator else self.module
        return module.model

    @property
    def ema_model(self):
        return self.ema.model

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then a half cosine to lr_final over the last `decay` steps of config.steps.
        Beyond config.steps (fit(steps=N) may go there) the rate stays at lr_final: the cosine must not climb
        back up its next period."""
        cfg = self.config
        lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
        if cfg.decay and step >= cfg.steps - cfg.decay:
            frac = min(1.0, (step - (cfg.steps - cfg.decay)) / cfg.decay)
            lr = cfg.lr_final + (cfg.lr - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))
        return lr

    def _draw_batch(self):
        """The global batch (indices, t, noise, keep mask), then this process's slice."""
        cfg, g, n = self.config, self.generator, self.config.batch_size
        idx = torch.randint(0, len(self.data), (n,), generator=g)
        if cfg.time_sampling == "logit-normal":
            t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=g))
        else:
            t = torch.rand(n, generator=g)
        noise = torch.randn((n, *self.data.shape[1:]), generator=g)
        keep = (torch.rand(n, generator=g) >= cfg.snippet_dropout).float()
        part = self._my_part(n)
        return idx[part], t[part], noise[part], keep[part]

    def _my_part(self, n: int) -> slice:
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def _condition_dropout_mask(self, projection):
        """v1's dropout after the snippet projection, drawn for the global batch on this process's device (what
        nn.Dropout draws for the whole batch, bit for bit on the CPU), this process's rows; None without dropout."""
        p, n = projection.dropout.p, self.config.batch_size
        if not p:
            return None
        mask = torch.empty(n, projection.linear.out_features, device=self.device).bernoulli_(1 - p).div_(1 - p)
        return mask[self._my_part(n)]

    def loss_on(self, idx, t, noise, keep):
        cfg = self.config
        x = self.data[idx].to(self.device)
        noise, t, keep = noise.to(self.device), t.to(self.device), keep.to(self.device)
        cond = self.conditions[idx].to(self.device)
        t4 = t[:, None, None, None]
        x_t = (1 - t4) * x + t4 * noise
        v, proj = self.module(x_t, t, cond, cfg.condition, keep, want_projection=cfg.repa_weight > 0)
        mse = F.mse_loss(v.float(), noise - x)
        repa = torch.zeros((), device=self.device)
        if proj is not None:
            target = self.repa_targets[idx].to(self.device)
            repa = 1 - F.cosine_similarity(proj.float(), target.expand(-1, proj.shape[1], -1), dim=-1).mean()
        return mse + cfg.repa_weight * repa, mse, repa

    @torch.no_grad()
    def _update_ema(self):
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        source = dict((self.accelerator.unwrap_model(self.module) if self.accelerator else self.module).named_parameters())
        for name, p in self.ema.named_parameters():
            p.lerp_(source[name].detach().to(p.dtype), 1 - decay)

    def train_step(self) -> dict:
        cfg = self.config
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.module.train()
        batch = self._draw_batch()
        # The condition dropout's mask comes from torch's global RNG, seeded from our generator inside a fork: a step
        # depends only on the trainer's state (exact resume), the caller's RNG is left untouched, and every process
        # draws the same global mask and takes its rows (any number of processes trains like one).
        dropout_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(dropout_seed)
            projection = self.network.condition_projection
            projection.mask = self._condition_dropout_mask(projection)
            try:
                loss, mse, repa = self.loss_on(*batch)
            finally:
                projection.mask = None
            self._stop_on_non_finite(loss, lr)
            self.optimizer.zero_grad(set_to_none=True)
            if self.accelerator:
                self.accelerator.backward(loss)
                if cfg.grad_clip:
                    self.accelerator.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
            else:
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        return {"step": self.step, "loss": loss.item(), "mse": mse.item(), "repa": repa.item(), "lr": lr}

    def _stop_on_non_finite(self, loss: torch.Tensor, lr: float) -> None:
        """Every process stops when any process's loss is NaN or infinite, before the optimizer applies the step: one
        stopping alone would leave the others waiting in the next gradient all-reduce for ever (one float reduced
        per step; the step's loss.item() synchronises anyway)."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.world > 1:
            bad = self.accelerator.reduce(bad, reduction="max")
        check_loss(float(loss.detach()), bool(bad.item()), self.step, lr)

    def fit(self, steps: int | None = None) -> list[dict]:
        """Train until config.steps (or for `steps` more steps); returns the per-step history of this call."""
        cfg = self.config
        stop = cfg.steps if steps is None else self.step + steps
        bar = None
        if cfg.progress and self.is_main and stop > self.step:
            from tqdm.auto import tqdm
            bar = tqdm(total=stop, initial=self.step, desc="training", unit="step")
        done, start, error = [], time.perf_counter(), None
        try:
            self._run_until(stop, bar, done)
        except BaseException as e:  # KeyboardInterrupt too: on_end says the run stopped, then it propagates
            error = e
            raise
        finally:
            if bar is not None:
                bar.close()
            if self.is_main and done:
                self.elapsed = time.perf_counter() - start
            self._fire("on_end", {"step": self.step, "steps": len(done), "error": error})
        return done

    def _run_until(self, stop: int, bar, done: list) -> None:
        cfg = self.config
        while self.step < stop:
            tick = time.perf_counter()
            event = self.train_step()
            event["images_per_s"] = cfg.batch_size / max(time.perf_counter() - tick, 1e-9)
            self.history.append(event)
            done.append(event)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{event['loss']:.4f}")
            self._fire("on_step", event)
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self.evaluate()
            if cfg.checkpoint_every and cfg.out_dir and self.step % cfg.checkpoint_every == 0:
                self.save_state(Path(cfg.out_dir) / "state.safetensors")

    # ---- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int | None = None, seeds=None, conditions=None, steps: int | None = None, method="euler",
               use_ema: bool = True):
        """uint8 images (pixel space) or latents from the EMA model, one per condition given (snippet rows, which
        are L2-normalised here as in training, or labels), else conditioned on the first n eval conditions (or
        training conditions); n defaults to the number of conditions or seeds given, else config.eval_images.
        Fixed seeds (0 to n - 1 unless given) so successive evaluations are comparable."""
        from .sampling import initial_noise, make_generators, sample

        cfg = self.config
        module = self.ema if use_ema else (self.accelerator.unwrap_model(self.module) if self.accelerator else self.module)
        if conditions is not None:
            conditions = training_conditions(conditions, cfg.condition, module.model, "conditions given to sample")
            num_labels = module.label_embedding.num_embeddings if module.label_embedding is not None else 0
            refuse_unknown_labels(conditions, num_labels, "conditions given to sample", cfg.condition)
        seeds = None if seeds is None else list(seeds)  # a range or generator is read once
        n = self._sample_count(n, seeds, conditions)
        seeds = list(range(n)) if seeds is None else seeds
        if conditions is None:
            source = self.eval_conditions if self.eval_conditions is not None else self.conditions
            conditions = source[torch.arange(n) % len(source)]
        module.eval()
        snippets = module.snippets_for(conditions.to(self.device), cfg.condition)
        gens = make_generators(seeds, self.device)
        noise = initial_noise(gens, tuple(self.data.shape[1:]), self.device)
        out = sample(module.model, noise, snippets.float(), method=method, steps=steps or cfg.eval_steps, generators=gens)
        return self.autoencoder.decode(out) if self.autoencoder is not None else out

    def _sample_count(self, n, seeds, conditions) -> int:
        """How many images sample() makes: n, else one per condition or seed given, else config.eval_images; the
        counts given must agree (each image needs one seed and one condition)."""
        if n is not None and n < 1:
            raise ValueError(f"n must be at least 1; got {n}")
        given = {"n": n, "seeds": None if seeds is None else len(seeds),
                 "conditions": None if conditions is None else len(conditions)}
        counts = {what: k for what, k in given.items() if k is not None}
        if len(set(counts.values())) > 1:
            raise ValueError(f"sample() got different numbers of images: {counts}; give matching counts, or leave "
                             f"n out (it defaults to the number of conditions or seeds)")
        return next(iter(counts.values()), self.config.eval_images)

    def evaluate(self) -> dict:
        event = {"step": self.step, "images": self.sample(), "seeds": list(range(self.config.eval_images)),
                 "loss": self.history[-1]["loss"] if self.history else None}
        self._fire("on_eval", event)
        return event

    # ---- state: save, resume, export ----------------------------------------------------------------------
    def state_tensors(self) -> tuple[dict, dict]:
        module = self.accelerator.unwrap_model(self.module) if self.accelerator else self.module
        tensors = {f"module.{k}": v for k, v in module.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt = self.optimizer.state_dict()
        for pid, slots in opt["state"].items():
            for key, value in slots.items():
                tensors[f"optimizer.{pid}.{key}"] = torch.as_tensor(value)
        tensors["rng.trainer"] = self.generator.get_state()
        meta = {"format": "gmem-explore-train-1", "step": self.step, "config": self.config.to_dict(),
                "param_groups": opt["param_groups"], "model": self.network.config.to_dict(), "history": self.history,
                "data": self.data_fingerprint()}
        return tensors, meta

    def data_fingerprint(self) -> dict:
        """What this run trains on (fingerprints.training_data), computed once: load_state compares it."""
        if getattr(self, "_data_fingerprint", None) is None:
            labels = self.conditions if self.config.condition == "label" else None
            encoder = self.encoder if self.config.condition == "snippet" else None
            self._data_fingerprint = training_data(self.images, labels, encoder)
        return self._data_fingerprint

    def save_state(self, path) -> Path:
        """Everything needed for an exact resume, in one safetensors file written atomically."""
        path = Path(path)
        if self.accelerator:
            self.accelerator.wait_for_everyone()
        if self.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors, meta = self.state_tensors()
            save_tensors(path, tensors, meta)
        self._fire("on_checkpoint", {"step": self.step, "path": str(path)})
        return path

    def load_state(self, path) -> None:
        tensors, meta = load_tensors(path, mmap=False)
        if meta.get("format") != "gmem-explore-train-1":
            raise ValueError(f"{path} is not a gmem-explore training state (format {meta.get('format')!r})")
        check_resume_data(path, meta.get("data"), self.data_fingerprint())
        module = self.accelerator.unwrap_model(self.module) if self.accelerator else self.module
        module.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("module.")})
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        state = defaultdict(dict)
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, pid, slot = key.split(".", 2)
                state[int(pid)][slot] = value
        self.optimizer.load_state_dict({"state": dict(state), "param_groups": meta["param_groups"]})
        self.generator.set_state(tensors["rng.trainer"])
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))

    def export(self, folder, bank, encoder=None, sampler: dict | None = None, info: dict | None = None,
               bank_dtype=None, autoencoder: dict | None = None) -> Path:
        """The EMA network + bank (+ encoder) as a checkpoint folder (see checkpoint.py). Snippet-conditioned runs
        only: a checkpoint's user feeds the network bank rows (see baseline_refusal)."""
        from .checkpoint import Checkpoint, save_checkpoint

        if self.config.condition != "snippet":
            raise ValueError(baseline_refusal(self.config.condition))
        model = copy.deepcopy(self.ema_model).cpu().float()
        info = {"training": {"steps": self.step, "config": self.config.to_dict()}, **(info or {})}
        ckpt = Checkpoint(model, bank, autoencoder or {"type": "pixels"}, encoder,
                          sampler or {"method": "euler", "steps": 20}, info)
        if self.is_main:
            save_checkpoint(folder, ckpt, bank_dtype=bank_dtype)
        return Path(folder)


def baseline_refusal(condition: str) -> str:
    """Why a condition "label" / "none" run gets no checkpoint folder, and how to sample it instead. These runs are
    training baselines for comparison with GMem: the network learnt from a label embedding (kept in the train state,
    not in the network) or from zeros. A checkpoint folder holds the network and a bank, and the pipeline would
    condition it on bank rows: plausible-looking, meaningless images."""
    how = "trainer.sample(conditions=labels)" if condition == "label" else "trainer.sample(n)"
    return (f"condition={condition!r} trains a baseline for comparison, not a model for the pipeline: its network was "
            f"not trained on bank snippets, so a checkpoint folder would feed it the wrong input. Sample it from the "
            f"Trainer instead: {how}, also after trainer.load_state(path) of a saved train state. Train with "
            f"condition='snippet' for a checkpoint GMemPipeline loads.")
