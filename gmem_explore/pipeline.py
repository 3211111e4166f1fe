"""GMemPipeline: model + memory bank + autoencoder (+ snippet encoder) -> images, with everything that was used.

    pipe = GMemPipeline.from_pretrained()            # the embedded default, no download
    out = pipe.generate(8, seeds=range(8))           # rows chosen from the noise by frequency (released rule)
    out.grid().save("grid.png"); out.indices, out.seeds
    for event in pipe.generate_iter(8, seeds=0):     # the same run as events: Progress per step, then Finished
        ...
"""
from __future__ import annotations

import numbers
import secrets
from typing import Callable, Iterator, Sequence

import torch

from .autoencoders import PixelSpace, SDVAE, VAVAE
from .autoencoders.ldm import LDMConfig
from .bank.memory import MIX_METHODS, MemoryBank, normalize
from .bank.memory import mix as mix_snippets  # interpolate's `mix` argument names the method
from .bank.checks import check_snippets
from .checkpoints.folder import Checkpoint, load_checkpoint
from .devices import check_device
from .events import Finished, Generation, Progress
from .sampling import SamplerSettings, initial_noise, make_generators, sample_steps
from .sampling.grids import ODE_METHODS
from .values import as_integer, is_whole
from .checkpoints import hub

CHOICES = ("noise", "frequency", "uniform")
MAX_SEED = 2**63 - 1
MAX_IMAGES = 100_000  # per call; larger runs belong to `gmem sample`, which shards and resumes
# the model settings describe() reports
MODEL_FIELDS = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "snippet_dim")
PROJECTOR_PREFIXES = ("projectors.", "projector.")  # the REPA head: v1's ModuleList name, v2's
BACKBONE_NAMES = {"sit": "SiT", "lightningdit": "LightningDiT"}
CHOICE_WORDS = {"noise": "by frequency from the noise", "frequency": "by frequency", "uniform": "uniformly"}
is_row_number = is_whole  # a bank row given as a number (not a snippet vector): a whole number in any spelling




def check_seeds(seeds, n: int | None) -> list[int]:
    """One seed per image: a sequence of n integers, or one integer s for the seeds s, s + 1, ..., s + n - 1 (what
    the CLI's and the app's --seed mean); random ones when None."""
    if seeds is None:
        return [secrets.randbelow(2**31) for _ in range(n or 0)]
    if isinstance(seeds, (str, bytes)):
        raise ValueError(f"seeds must be integers in [0, 2^63 - 1]; got {seeds!r}")
    if isinstance(seeds, torch.Tensor) and seeds.ndim == 0 or not hasattr(seeds, "__iter__"):
        first = as_integer(seeds, "seeds")
        seeds = [first + i for i in range(1 if n is None else n)]
    seeds = [as_integer(s, "seeds") for s in seeds]
    for s in seeds:
        if not 0 <= s <= MAX_SEED:
            raise ValueError(f"seeds must be integers in [0, 2^63 - 1]; got {s!r}")
    if n is not None and len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} images; give one seed per image, one first seed, or none")
    return seeds


def parameters(n: int) -> str:
    """A parameter count for people: 4.3M, or the number itself below 0.1M (a tiny model's 2,304-parameter projector
    read "+0.0M")."""
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"


def parameter_line(counts: dict[str, int]) -> str:
    """'4.3M parameters (+0.3M REPA projector, training only)' from parameter_counts(): the projector only serves
    the training loss, so it is named apart from the parameters that generate."""
    projector = f" (+{parameters(counts['projector'])} REPA projector, training only)" if counts["projector"] else ""
    return f"{parameters(counts['generating'])} parameters{projector}"


def va_vae_from_config(ae_cfg: dict, folder, device="cpu", **kwargs) -> VAVAE:
    """The VA-VAE a checkpoint's "autoencoder" section names: its checkpoint and stats as paths (relative ones read
    from the checkpoint folder) or "hf://REPO/FILE" names (hub.autoencoder_file: the cache, offline fail-fast, or
    the GMEM_VA_VAE folder); "ldm" holds the decoder's sizes when they are not f16d32's (tests)."""
    paths = [hub.autoencoder_file(ae_cfg.get(key), key, folder) for key in ("checkpoint", "stats")]
    options = {"image_size": ae_cfg.get("image_size", 256), "multiplier": ae_cfg.get("multiplier", 1.0),
               "device": device, **kwargs}
    if ae_cfg.get("ldm") and "config" not in options:
        options["config"] = LDMConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ae_cfg["ldm"].items()})
    return VAVAE(*paths, **options)


def resolve_snippet(pipe: "GMemPipeline", x) -> tuple[int | None, torch.Tensor]:
    """(bank row or None, normalised snippet (1, D) or (N, D)) for a bank row number or a snippet vector."""
    if is_whole(x):
        row = as_integer(x, "bank rows")
        return row, pipe.bank.snippets([row])
    if isinstance(x, numbers.Real) and not isinstance(x, bool) or isinstance(x, torch.Tensor) and x.ndim == 0:
        raise ValueError(f"a bank row must be a whole number and a snippet a vector of {pipe.snippet_dim} values; "
                         f"got {x!r}")
    return None, normalize(check_snippets(x, pipe.snippet_dim))


class GMemPipeline:
    def __init__(self, model, bank: MemoryBank, autoencoder=None, encoder=None,
                 sampler: SamplerSettings | dict | None = None,
                 info: dict | None = None, device="cpu", choose: str = "noise"):
        device = check_device(device)
        if choose not in CHOICES:
            raise ValueError(f"Unknown choice {choose!r}; choose one of {CHOICES}")
        if bank.dim != model.config.snippet_dim:
            raise ValueError(f"the bank's rows have dimension {bank.dim} but the model expects {model.config.snippet_dim}; "
                             f"use the bank (or the snippet encoder) the model was trained with")
        self.model = model.to(device).eval()
        self.bank = bank
        self.autoencoder = autoencoder or PixelSpace(model.config.input_size)
        self.encoder = encoder
        # the default sampler settings, checked here once (a dict is a checkpoint config's "sampler" section)
        self.sampler = SamplerSettings.from_config(sampler)
        self.info = dict(info or {})
        self.device = torch.device(device)
        self.choose = choose  # generate()'s rule for picking rows when given none: the checkpoint's

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device="cpu", **autoencoder_kwargs) -> "GMemPipeline":
        ae_cfg = ckpt.autoencoder
        if ae_cfg.get("type", "pixels") == "pixels":
            autoencoder = PixelSpace(ckpt.model.config.input_size)
        elif ae_cfg["type"] == "sd-vae":
            kwargs = {"image_size": ae_cfg.get("image_size", 256), "device": device, **autoencoder_kwargs}
            if ae_cfg.get("source") and "source" not in kwargs:
                kwargs["source"] = ae_cfg["source"]
            autoencoder = SDVAE(**kwargs)
        elif ae_cfg["type"] == "va-vae":
            autoencoder = va_vae_from_config(ae_cfg, ckpt.folder, device, **autoencoder_kwargs)
        else:
            raise ValueError(f"Unknown autoencoder type {ae_cfg['type']!r} in the checkpoint config; known: "
                             f"pixels, sd-vae, va-vae")
        return cls(ckpt.model, ckpt.bank, autoencoder, ckpt.encoder, ckpt.sampler, ckpt.info, device, ckpt.choose)

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, device="cpu", **kwargs) -> "GMemPipeline":
        """A named checkpoint ("emoji-32", the default; "gmem-v1-xl") or a local checkpoint folder."""

        device = check_device(device)  # before a download or a load
        folder = hub.resolve_checkpoint(name_or_path, **kwargs)  # looked up here: tests replace it
        return cls.from_checkpoint(load_checkpoint(folder, device=device), device=device)

    # ---- what it is ---------------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """{"generating", "projector", "encoder"} parameters: the REPA projector only serves the training loss
        (emoji-32: 4.3M generate, 0.3M of projector), so it is counted apart."""
        # v1 (SiT) names the head `projectors.`, v2 (LightningDiT) `projector.`
        projector = sum(p.numel() for n, p in self.model.named_parameters() if n.startswith(PROJECTOR_PREFIXES))
        encoder = sum(p.numel() for p in self.encoder.parameters()) if hasattr(self.encoder, "parameters") else 0
        return {"generating": sum(p.numel() for p in self.model.parameters()) - projector, "projector": projector,
                "encoder": encoder}

    @property
    def image_size(self) -> int:
        """Pixels per side of the images it makes (the SD-VAE decodes 8 pixels per latent, the VA-VAE 16)."""
        factor = {"sd-vae": 8, "va-vae": getattr(getattr(self.autoencoder, "config", None), "factor", 16)}
        return self.model.config.input_size * factor.get(getattr(self.autoencoder, "name", ""), 1)

    @property
    def backbone(self) -> str:
        """"SiT" (GMem v1) or "LightningDiT" (GMem v2)."""
        return BACKBONE_NAMES.get(getattr(self.model.config, "backbone", "sit"), type(self.model).__name__)

    def describe(self) -> dict:
        """What this pipeline is, as JSON-able fields: summary(), the app's model panel and `gmem info` (whose --json
        prints this) all format these, so they cannot disagree."""
        cfg, bank = self.model.config, self.bank
        return {"name": self.info.get("name"), "image_size": self.image_size, "backbone": self.backbone,
                "model": {k: getattr(cfg, k) for k in MODEL_FIELDS},
                "parameters": self.parameter_counts(),
                "bank": {"rows": len(bank), "dim": bank.dim, "dtype": str(bank.dtype).removeprefix("torch."),
                         "extras": [name for name in ("freq", "labels", "thumbnails") if bank.column(name) is not None],
                         "groups": list(bank.label_names or [])},
                "encoder": type(self.encoder).__name__ if self.encoder is not None else None,
                "autoencoder": getattr(self.autoencoder, "name", type(self.autoencoder).__name__),
                "sampler": self.sampler.to_config(),  # what generate() uses when not told
                "choose": self.choose,  # how generate() picks rows when not told
                "device": str(self.device), "info": self.info}

    def summary(self) -> str:
        """What this pipeline is, a line per part (also its repr, so a notebook cell that ends in `pipe` shows it)."""
        d = self.describe()
        m, bank, counts = d["model"], d["bank"], d["parameters"]
        groups = f", {len(bank['groups'])} groups" if bank["groups"] else ""
        encoder = (f"{d['encoder']}, {parameters(counts['encoder'])} parameters" if counts["encoder"]
                   else d["encoder"] or "none (snippets of new images cannot be made)")
        lines = [f"GMemPipeline({d['name'] or 'unnamed'!r})",
                 f"  model        {d['backbone']}, {d['image_size']} px images, {m['input_size']}x{m['input_size']}x{m['in_channels']} "
                 f"input, patch {m['patch_size']}, width {m['hidden_size']}, depth {m['depth']}: "
                 f"{parameter_line(counts)}",
                 f"  bank         {bank['rows']:,} rows x {bank['dim']} ({bank['dtype']}), "
                 f"with {', '.join(bank['extras']) or 'rows only'}{groups}",
                 f"  encoder      {encoder}",
                 f"  autoencoder  {d['autoencoder']}",
                 f"  sampler      {d['sampler']['method']}, {d['sampler']['steps']} steps by default; rows "
                 f"{CHOICE_WORDS[d['choose']]}",
                 f"  device       {d['device']}"]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def with_bank(self, bank) -> "GMemPipeline":
        """The same model, autoencoder, encoder and settings with another bank: a MemoryBank, or a bank file (a
        .safetensors, e.g. the edited bank the app's Swap tab downloads). This pipeline is untouched. A bank made
        for another model (its snippets of another width) is refused, naming both widths."""
        from pathlib import Path

        if isinstance(bank, (str, Path)):
            path = Path(bank).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such bank file; give a .safetensors bank, such as the one the "
                                        f"app's Swap tab downloads (\"Download the bank\")")
            try:
                bank = MemoryBank.load(path)
            except ValueError:
                raise
            except Exception as e:  # noqa: BLE001 - a file that is not safetensors at all: one plain sentence
                raise ValueError(f"{path} is not a bank file ({type(e).__name__}: {str(e)[:200]}); give a "
                                 f".safetensors bank, such as the one the app's Swap tab downloads") from None
        if not isinstance(bank, MemoryBank):
            raise TypeError(f"with_bank takes a MemoryBank or a bank file's path; got {type(bank).__name__}")
        if bank.dim != self.snippet_dim:
            name = self.info.get("name") or "this checkpoint"
            raise ValueError(f"the bank's snippets have {bank.dim} values, but {name}'s model takes {self.snippet_dim}: "
                             f"use a bank made for this model (downloaded from the app's Swap tab while it ran this "
                             f"model, or built with gmem build-bank --checkpoint {name})")
        return GMemPipeline(self.model, bank, self.autoencoder, self.encoder, self.sampler, self.info, self.device,
                            self.choose)

    # ---- snippets ---------------------------------------------------------------------------------------
    @property
    def snippet_dim(self) -> int:
        return self.model.config.snippet_dim

    def snippets_from_images(self, images) -> torch.Tensor:
        """Snippets of new images (uint8 N x H x W x 3 or PIL images) through the pipeline's encoder."""
        if self.encoder is None:
            raise RuntimeError("This checkpoint has no snippet encoder; pass snippets or bank rows instead")
        return normalize(self.encoder.encode(images))

    def mix(self, a, b, weight: float, method: str = "slerp", seed: int = 0) -> torch.Tensor:
        """Mix two snippets, each a bank row number or a snippet vector (as in interpolate); returns (N, D), what
        generate(snippets=...) takes."""
        return mix_snippets(resolve_snippet(self, a)[1], resolve_snippet(self, b)[1], weight, method, seed)

    # ---- generation -------------------------------------------------------------------------------------
    def generate(
        self,
        n: int | None = None,
        *,
        indices: Sequence[int] | None = None,
        snippets: torch.Tensor | None = None,
        seeds: Sequence[int] | int | None = None,
        choose: str | None = None,
        method: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        time_shift: float | None = None,
        batch_size: int = 64,
        callback: Callable[[Progress, int, int], None] | None = None,
        progress: bool = False,
        fast: bool | str | None = None,
    ) -> Generation:
        """Generate n images; or one per bank row in `indices`; or one per row of `snippets`.

        Seeds (one per image, or one first seed s for s, s + 1, ...; random when omitted, and always returned) fix
        the initial noise and the SDE noise.
        `choose` picks rows when neither indices nor snippets are given: "noise" (v1's released rule, rows by
        frequency from the initial noise), "frequency" or "uniform" (seeded by the image's seed; v2's rule, upstream's
        randint). None: the checkpoint's rule (self.choose: "noise" for v1 and the embedded models, "uniform" for v2).
        `method`, `steps`, `guidance`, `guidance_interval` and `time_shift` override the pipeline's sampler settings
        (self.sampler, the checkpoint's recipe) where given.
        `callback(event, first_image_of_batch, total_images)` runs after every sampler step, with the step's
        events.Progress; `progress=True` shows a tqdm bar. This is generate_iter run to its end.
        `fast`: the fast sampling path (see sampling.sample; None = on CUDA only).
        """
        events = self.generate_iter(n, indices=indices, snippets=snippets, seeds=seeds, choose=choose, method=method,
                                    steps=steps, guidance=guidance, guidance_interval=guidance_interval,
                                    time_shift=time_shift,
                                    batch_size=batch_size, fast=fast)
        return self._run_to_end(events, callback, progress)

    def generate_iter(
        self,
        n: int | None = None,
        *,
        indices: Sequence[int] | None = None,
        snippets: torch.Tensor | None = None,
        seeds: Sequence[int] | int | None = None,
        choose: str | None = None,
        method: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        time_shift: float | None = None,
        batch_size: int = 64,
        fast: bool | str | None = None,
    ) -> Iterator[Progress | Finished]:
        """generate() as a stream of events (events.py): a Progress after every sampler step of every batch, then a
        Finished holding the Generation that generate() returns for the same arguments. The arguments are checked
        now, before the first event. Stop iterating (break, or .close()) and the sampler stops after the step
        under way; nothing keeps running in the background."""
        if is_row_number(n):  # a NumPy or 0-d tensor integer counts too, as for indices and seeds
            n = as_integer(n, "n")
        given = [x is not None for x in (indices, snippets)]
        if sum(given) > 1:
            raise ValueError("give either indices or snippets, not both")
        choose = self.choose if choose is None else choose
        if choose not in CHOICES:
            raise ValueError(f"Unknown choice {choose!r}; choose one of {CHOICES}")
        if indices is not None:
            if hasattr(indices, "reshape"):  # tensor or array: its values as Python numbers, any shape
                indices = indices.reshape(-1).tolist()
            indices = [as_integer(i, "indices (bank rows)") for i in (indices if hasattr(indices, "__iter__") else [indices])]
            if not indices:
                raise ValueError("indices is empty: give at least one bank row")
            self.bank._check_index(indices)
            count = len(indices)
        elif snippets is not None:
            snippets = normalize(check_snippets(snippets, self.snippet_dim))
            count = snippets.shape[0]
            if not count:
                raise ValueError(f"snippets is empty (shape {tuple(snippets.shape)}): give at least one snippet")
        else:
            if n is None and seeds is not None:  # one image per seed; a single seed makes one image
                n = len(check_seeds(seeds, None))
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"n (number of images) must be a positive integer; got {n!r}")
            count = n
        if n is not None and count != n:
            raise ValueError(f"n={n} disagrees with the {count} indices/snippets given")
        if count > MAX_IMAGES:
            raise ValueError(f"{count} images in one call is too many (max {MAX_IMAGES}); use `gmem sample-fid`, which writes them in shards and resumes")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        seeds = check_seeds(seeds, count)
        # The one check of the sampler settings in this call. `is None`, not `or`: steps=0 or method="" must be
        # refused, not silently replaced by the default.
        if method is not None and method not in ODE_METHODS and time_shift is None:
            time_shift = 1.0  # the recipe's ODE shift does not carry over to a method with a fixed grid
        given = {"method": method, "steps": steps, "guidance": guidance, "guidance_interval": guidance_interval,
                 "time_shift": time_shift}
        settings = self.sampler.replace(**{k: v for k, v in given.items() if v is not None})
        return self._events(count, indices, snippets, seeds, choose, settings, batch_size, fast)

    def _events(self, count: int, indices, snippets, seeds: list[int], choose: str, settings: SamplerSettings,
                batch_size: int, fast) -> Iterator[Progress | Finished]:
        """generate_iter's stream, its arguments checked."""
        images, used_idx, used_snip = [], [], []
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            gens = make_generators(seeds[start:stop], self.device)
            noise = initial_noise(gens, self.autoencoder.latent_shape(), self.device)
            if snippets is not None:
                batch_idx, batch_snip = [None] * (stop - start), snippets[start:stop]
            else:
                if indices is not None:
                    rows = torch.tensor(indices[start:stop])
                elif choose == "noise":
                    rows = self.bank.from_noise(noise.cpu())
                else:
                    rows = torch.cat([self.bank.choose(1, choose, torch.Generator().manual_seed(s)) for s in seeds[start:stop]])
                batch_idx, batch_snip = rows.tolist(), self.bank.snippets(rows)
            steps = sample_steps(self.model, noise, batch_snip.to(self.device), settings, gens, fast=fast)
            try:
                for item in steps:
                    if isinstance(item, torch.Tensor):  # the sampler's last item: the final latents
                        images.append(self.autoencoder.decode(item))
                        break
                    yield Progress(item.step, item.total, item.t, start, stop, count, item.x, item.denoised,
                                   self.autoencoder.decode)
            finally:  # a consumer that stopped iterating stops the sampler here, after the step under way
                steps.close()
            used_idx += batch_idx
            used_snip.append(batch_snip.cpu())
        recorded = {"method": settings.method, "steps": settings.steps, "guidance": settings.guidance,
                    "guidance_interval": settings.guidance_interval, "time_shift": settings.time_shift, "choose": choose}
        yield Finished(Generation(torch.cat(images), seeds, used_idx, torch.cat(used_snip), recorded))

    @staticmethod
    def _run_to_end(events: Iterator, callback=None, progress: bool = False) -> Generation:
        """Exhaust a stream of events, calling callback(event, start, total images) per Progress and moving a tqdm
        bar when `progress`; returns the Generation."""
        bar = None
        try:
            for event in events:
                if isinstance(event, Finished):
                    return event.generation
                if progress and bar is None:
                    from tqdm.auto import tqdm  # optional display dependency, only when a bar is asked for

                    # images, as a user counts them: 16 images of 8 steps read "128 steps" as a bar of steps
                    bar = tqdm(total=event.images_total, desc="sampling", unit="image")
                if bar is not None:
                    bar.n = round(event.images_done, 2)  # the batch under way counts by its share of steps done
                    bar.set_postfix_str(f"step {event.step}/{event.total}", refresh=False)
                    bar.refresh()
                if callback is not None:
                    callback(event, event.start, event.images_total)
        finally:
            events.close()
            if bar is not None:
                bar.close()
        raise RuntimeError("the generation ended without its images")

    def decode_preview(self, info) -> torch.Tensor:
        """uint8 images of a step's denoised estimate (a StepInfo's or a Progress's), for live previews."""
        return self.autoencoder.decode(info.denoised.float())

    def interpolate(self, a, b, k: int = 8, mix: str = "slerp", seed: int = 0, callback=None, progress: bool = False,
                    **generate_kwargs) -> Generation:
        """k images from snippet a to snippet b (bank rows or vectors), all from the same seed.

        `mix`: how snippets are blended (lerp, slerp, concat, mask); every other keyword goes to generate(), so
        `method` and `steps` choose the sampler as they do there. The settings record the mix and the endpoints.
        This is interpolate_iter run to its end (callback and progress as in generate)."""
        return self._run_to_end(self.interpolate_iter(a, b, k, mix, seed, **generate_kwargs), callback, progress)

    def interpolate_iter(self, a, b, k: int = 8, mix: str = "slerp", seed: int = 0,
                         **generate_kwargs) -> Iterator[Progress | Finished]:
        """interpolate() as a stream of events, as generate_iter is generate()'s."""
        if is_whole(k):
            k = int(k)
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 256:
            raise ValueError(f"k (number of frames) must be an integer in [2, 256]; got {k!r}")
        if generate_kwargs.get("method") in MIX_METHODS:
            raise ValueError(f"method={generate_kwargs['method']!r} names a mix: interpolate takes it as "
                             f"mix={generate_kwargs['method']!r}; `method` chooses the sampler, as in generate()")
        for taken in ("seeds", "snippets", "indices", "n"):
            if taken in generate_kwargs:
                raise ValueError(f"interpolate sets {taken} itself (every frame uses seed={seed}); "
                                 f"pass seed= for another seed")
        seed = check_seeds([seed], 1)[0]  # one seed for every frame (and the 'mask' mix)
        (row_a, a), (row_b, b) = resolve_snippet(self, a), resolve_snippet(self, b)
        frames = torch.cat([mix_snippets(a, b, w, mix, seed) for w in torch.linspace(0, 1, k).tolist()])
        events = self.generate_iter(snippets=frames, seeds=[seed] * k, **generate_kwargs)
        return self._frames(events, mix, row_a, row_b)

    @staticmethod
    def _frames(events: Iterator, mix: str, row_a, row_b) -> Iterator[Progress | Finished]:
        try:
            for event in events:
                if isinstance(event, Finished):
                    # a frame is a mix, not a bank row (indices stay None); the endpoints' rows are said here
                    # (None: a vector)
                    event.generation.settings.update(mix=mix, from_row=row_a, to_row=row_b)
                yield event
        finally:
            events.close()
