"""The `gmem` command line as a user meets it: fast help, and bad input answered with one clear error line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Every command and `gmem bank` action, as typed before --help.
HELP_COMMANDS = [[], ["sample"], ["sample-fid"], ["convert"], ["info"], ["bank"], ["bank", "stats"], ["bank", "nearest"],
                 ["bank", "compress"], ["bank", "prepare"], ["build-bank"], ["train"], ["evaluate"]]

# Runs `python -m gmem_explore ARGS` in this interpreter, then says whether torch was imported on the way.
NO_TORCH = """
import runpy, sys
sys.argv = ["gmem", *sys.argv[1:]]
try:
    runpy.run_module("gmem_explore", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
else:
    code = 0
print("TORCH-IMPORTED" if "torch" in sys.modules else "NO-TORCH", file=sys.stderr)
sys.exit(code)
"""


def run_python(*argv, code=None):
    """A fresh interpreter (its own sys.modules) in the repository root."""
    args = [sys.executable, "-c", code, *argv] if code else [sys.executable, *argv]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "gmem")
def test_help_does_not_import_torch(command):
    """`gmem [COMMAND] --help` must not import torch (seconds of start-up for a page of text): heavy modules are
    imported inside the functions that run a command. Fails if someone adds a top-level torch import again."""
    result = run_python(*command, "--help", code=NO_TORCH)
    assert result.returncode == 0, result.stderr
    assert "usage: gmem" in result.stdout
    assert "NO-TORCH" in result.stderr, f"`gmem {' '.join(command)} --help` imported torch"


def test_importing_the_package_does_not_import_torch_until_a_public_name_is_used():
    result = run_python(code="import sys, gmem_explore\n"
                             "assert 'torch' not in sys.modules, 'import gmem_explore imported torch'\n"
                             "from gmem_explore import GMemPipeline\n"
                             "assert 'torch' in sys.modules and GMemPipeline.__name__ == 'GMemPipeline'\n"
                             "print('ok')")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_lazy_public_names_behave_like_the_eager_ones():
    import gmem_explore
    from gmem_explore.bank.memory import MemoryBank
    from gmem_explore.pipeline import GMemPipeline

    assert gmem_explore.MemoryBank is MemoryBank and gmem_explore.GMemPipeline is GMemPipeline
    assert set(gmem_explore.__all__) <= set(dir(gmem_explore))
    for name in gmem_explore.__all__:
        assert getattr(gmem_explore, name) is not None, name
    namespace = {}
    exec("from gmem_explore import *", namespace)
    assert {n for n in namespace if not n.startswith("__")} == set(gmem_explore.__all__)
    assert gmem_explore.bank.memory.MemoryBank is MemoryBank  # submodules it used to load stay reachable
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        gmem_explore.no_such_name
    assert not hasattr(gmem_explore, "no_such_name")


# ---- bad input: one paragraph on stderr, a non-zero status, no traceback, nothing written ---------------------
from gmem_explore.cli.main import build_parser, main  # noqa: E402

LINUX_PROC = Path("/proc/self").is_dir()  # /proc takes no new files, even from root (os.access says it would)


def refused_by_argparse(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err and "usage:" not in err  # the one line that matters, not a dozen of usage
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["sample", "--n", "0"], "argument --n: must be at least 1, got 0"),
    (["sample", "--n", "-3"], "argument --n: must be at least 1, got -3"),
    (["sample", "--n", "two"], "argument --n: expected a whole number, got 'two'"),
    (["sample", "--scale", "0"], "argument --scale: must be from 1 to 32, got 0"),  # failed after sampling
    (["sample", "--rows"], "argument --rows: expected at least one argument"),  # sampled 16 images by --choose
    (["sample", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    (["sample-fid", "--out", "x", "--num-fid-samples", "0"], "argument --num-fid-samples: must be at least 1"),
    (["sample-fid", "--out", "x", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["sample-fid", "--out", "x", "--seed", "-1"], "argument --seed: must be at least 0"),  # left a run.json
    (["bank", "stats", "emoji-32", "--sample", "-4"], "argument --sample: must be at least 2 rows"),  # took n-4 rows
    (["bank", "stats", "emoji-32", "--sample", "0"], "argument --sample: must be at least 2 rows"),
    (["bank", "nearest", "emoji-32", "--row", "3", "--k", "0"], "argument --k: must be at least 1"),
    (["bank", "nearest", "emoji-32", "--row"], "argument --row: expected at least one argument"),
    (["bank", "compress", "emoji-32", "--rank", "-1"], "argument --rank: must be at least 1"),
    (["build-bank", "--images", "x", "--out", "b.safetensors", "--thumb-size", "4"],
     "argument --thumb-size: must be from 8 to 256 pixels, got 4"),
    (["train", "--data", "x", "--out", "o", "--steps", "0"], "argument --steps: must be at least 1"),
    (["train", "--data", "x", "--out", "o", "--batch-size", "-1"], "argument --batch-size: must be at least 1"),
    (["train", "--data", "x", "--out", "o", "--lr", "0"], "argument --lr: must be a finite number more than 0"),
    (["train", "--data", "x", "--out", "o", "--snippet-dropout", "2"], "between 0 and 1, got 2"),
    (["train", "--data", "x", "--out", "o", "--repa-weight", "-1"], "argument --repa-weight: must be a finite"),
    (["train", "--data", "x", "--out", "o", "--repa-weight", "nan"], "argument --repa-weight: must be a finite"),
    (["train", "--data", "x", "--out", "o", "--threads", "0"], "argument --threads: must be at least 1"),
    (["evaluate", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["evaluate", "--seed", "-2"], "argument --seed: must be at least 0"),
    (["train", "--out", "o"], "the following arguments are required: --data"),
    (["convert"], "the following arguments are required: SOURCE, OUT"),
    (["bank"], "the following arguments are required: ACTION"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
])
def test_bad_options_are_one_line_from_argparse(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused_by_argparse(argv, capsys)
    assert message in err
    prog = "gmem " + " ".join(argv[:2] if argv[0] == "bank" and len(argv) > 2 else argv[:1])
    if argv[0] == "no-such-command":
        prog = "gmem"
    assert err.startswith(f"{prog}: error: ") and f"Run `{prog} --help`" in err
    assert not list(tmp_path.iterdir())


def never(what):
    def fail(*args, **kwargs):
        pytest.fail(f"{what} ran before the bad input was refused")
    return fail


@pytest.fixture
def places(tmp_path):
    """A file, a folder, and paths that cannot be written: under a file, and (Linux) under /proc."""
    (tmp_path / "notes.txt").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    unwritable = [(tmp_path / "notes.txt" / "x", "notes.txt is a file, not a folder")]
    if LINUX_PROC:
        unwritable.append((Path("/proc/gmem-test"), "cannot write in /proc"))
    return tmp_path, unwritable


def assert_refused(argv, message, capsys, code=1):
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and err.count("error:") == 1
    return err


def assert_only(tmp_path):
    """Nothing written beside the fixtures' files: no half-written output, no temporary or probe file."""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "notes.txt"]
    assert not list((tmp_path / "folder").iterdir())


def test_sample_refuses_an_unwritable_out_before_loading(places, capsys, monkeypatch):
    import gmem_explore.pipeline

    tmp_path, unwritable = places
    monkeypatch.setattr(gmem_explore.pipeline.GMemPipeline, "from_pretrained", never("the model load"))
    for where, message in unwritable:
        assert_refused(["sample", "--out", f"{where}.png"], message, capsys)
    assert_refused(["sample", "--out", tmp_path / "folder"], "cannot write images of type '(no extension)'", capsys)
    (tmp_path / "folder.png").mkdir()
    assert_refused(["sample", "--out", tmp_path / "folder.png"], f"is a folder; give a file name, e.g. "
                   f"{tmp_path / 'folder.png' / 'samples.png'}", capsys)
    (tmp_path / "folder.png").rmdir()
    assert_only(tmp_path)


@pytest.mark.parametrize("command", [["sample", "--out", "{tmp}/s.png"], ["evaluate"],
                                     ["bank", "nearest", "emoji-32", "--row", "1"],
                                     ["bank", "compress", "emoji-32"],
                                     ["sample-fid", "--checkpoint", "emoji-32", "--out", "{tmp}/fid"]])
def test_an_unusable_device_is_refused_before_loading(command, places, capsys, monkeypatch):
    import torch

    import gmem_explore.cli.bank
    import gmem_explore.checkpoints.hub
    import gmem_explore.pipeline
    import gmem_explore.evaluation.fid_sampling

    tmp_path, _ = places
    monkeypatch.setattr(gmem_explore.pipeline.GMemPipeline, "from_pretrained", never("the model load"))
    monkeypatch.setattr(gmem_explore.checkpoints.hub, "resolve_checkpoint", never("the checkpoint look-up"))
    monkeypatch.setattr(gmem_explore.cli.bank, "open_bank", never("the bank load"))
    monkeypatch.setattr(gmem_explore.evaluation.fid_sampling, "run", never("the sampling"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command]
    assert_refused([*argv, "--device", "nosuch"], "--device 'nosuch' is not a device torch knows; use cpu, cuda",
                   capsys)
    assert_refused([*argv, "--device", "meta"], "gmem does not run on meta devices", capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_refused([*argv, "--device", "cuda"], "use --device cpu", capsys)  # was an AssertionError's traceback
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert_refused([*argv, "--device", "cuda:2"], "there are only 2 CUDA GPUs here (cuda:0 to cuda:1)", capsys)
    assert_only(tmp_path)


def test_sample_fid_gives_plain_cuda_its_process_gpu(tmp_path, monkeypatch, capsys):
    """torch.cuda.set_device refuses 'cuda' without a number: fid_sampling.run makes it cuda:LOCAL_RANK."""
    import torch

    import gmem_explore.evaluation.fid_sampling

    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(gmem_explore.evaluation.fid_sampling, "run", lambda *a, **k: seen.update(
        device=str(gmem_explore.evaluation.fid_sampling.resolve_device(k["device"], gmem_explore.evaluation.fid_sampling.dist_env()[2]))))
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert main(["sample-fid", "--out", str(tmp_path / "fid"), "--device", "cuda", "--no-npz"]) == 0
    assert seen["device"] == "cuda:1"
    assert main(["sample-fid", "--out", str(tmp_path / "fid"), "--device", "cuda:0", "--no-npz"]) == 0
    assert seen["device"] == "cuda:0"


def test_sample_fid_refuses_unwritable_outputs_before_loading(places, capsys, monkeypatch):
    import gmem_explore.evaluation.fid_sampling

    tmp_path, unwritable = places
    monkeypatch.setattr(gmem_explore.evaluation.fid_sampling, "run", never("the sampling"))
    for where, message in unwritable:
        assert_refused(["sample-fid", "--out", where], message, capsys)
        assert_refused(["sample-fid", "--out", tmp_path / "fid", "--npz", f"{where}.npz"], message, capsys)
    assert_refused(["sample-fid", "--out", tmp_path / "notes.txt"], "notes.txt is a file, not a folder", capsys)
    assert_refused(["sample-fid", "--out", tmp_path / "fid", "--npz", tmp_path / "x.zip"],
                   "must be a .npz file; end the name in .npz", capsys)
    assert_only(tmp_path)


def test_bank_commands_refuse_bad_paths_before_reading_the_bank(places, capsys, monkeypatch):
    import gmem_explore.cli.bank

    tmp_path, unwritable = places
    monkeypatch.setattr(gmem_explore.cli.bank, "open_bank", never("the bank load"))
    for where, message in unwritable:
        assert_refused(["bank", "compress", "emoji-32", "--out", f"{where}.safetensors"], message, capsys)
    err = assert_refused(["bank", "compress", "emoji-32", "--out", tmp_path / "r4.txt"],
                         "must be a .safetensors file; end the name in .safetensors", capsys)
    assert err.startswith("gmem bank compress: error: ")  # the action named, not only `gmem bank`
    assert_refused(["bank", "nearest", "emoji-32", "--image", tmp_path / "folder"],
                   f"--image {tmp_path / 'folder'} is a folder; give image files", capsys)
    monkeypatch.undo()
    assert_refused(["bank", "stats", tmp_path / "missing.safetensors"], "missing.safetensors: no such bank file",
                   capsys)
    assert_only(tmp_path)


def test_build_bank_refuses_bad_paths_before_the_encoder_loads(places, capsys, monkeypatch):
    import gmem_explore.cli.build_bank

    tmp_path, unwritable = places
    monkeypatch.setattr(gmem_explore.cli.build_bank, "build_bank", never("the encoding"))
    images = tmp_path / "folder"
    for where, message in unwritable:
        assert_refused(["build-bank", "--images", images, "--out", f"{where}.safetensors"], message, capsys)
    assert_refused(["build-bank", "--images", images, "--out", tmp_path / "b.txt"], "end the name in .safetensors",
                   capsys)
    assert_refused(["build-bank", "--images", tmp_path / "nothing", "--out", tmp_path / "b.safetensors"],
                   "nothing: no such folder; give a folder of images or one of twemoji", capsys)
    assert_refused(["build-bank", "--images", tmp_path / "notes.txt", "--out", tmp_path / "b.safetensors"],
                   "notes.txt is a file; give a folder of images", capsys)
    assert_only(tmp_path)


def test_convert_refuses_bad_arguments_before_reading_the_source(places, capsys, monkeypatch):
    import gmem_explore.checkpoints.official

    tmp_path, unwritable = places
    monkeypatch.setattr(gmem_explore.checkpoints.official, "convert_official", never("the conversion"))
    source = tmp_path / "notes.txt"  # never read: every refusal comes first
    for where, message in unwritable:
        assert_refused(["convert", source, where], message, capsys)
    assert_refused(["convert", source, tmp_path / "notes.txt"], "OUT", capsys)
    assert_refused(["convert", source, tmp_path / "new", "--model-config", "[1]"],
                   "--model-config must be a JSON object of build_model keywords", capsys)  # was a TypeError
    assert_refused(["convert", source, tmp_path / "new", "--sha256", "xyz"],
                   "--sha256 must be 64 hexadecimal digits", capsys)  # was checked after hashing 4.7 GB
    assert_only(tmp_path)


def test_train_refuses_bad_paths_before_loading(places, capsys, monkeypatch):
    import gmem_explore.checkpoints.folder

    tmp_path, unwritable = places
    monkeypatch.setattr(gmem_explore.checkpoints.folder, "load_checkpoint", never("the checkpoint load"))
    for where, message in unwritable:  # were found when the state was saved: after training
        assert_refused(["train", "--data", "digits", "--out", where], message, capsys)
    assert_refused(["train", "--data", "digits", "--out", tmp_path / "notes.txt"],
                   "--out", capsys)
    assert_refused(["train", "--data", tmp_path / "nothing", "--out", tmp_path / "run"],
                   "nothing: no such folder; give a folder of images", capsys)
    assert_only(tmp_path)


def test_evaluate_refuses_an_unwritable_out_before_sampling(places, capsys, monkeypatch):
    import gmem_explore.checkpoints.hub

    tmp_path, unwritable = places
    monkeypatch.setattr(gmem_explore.checkpoints.hub, "resolve_checkpoint", never("the checkpoint look-up"))
    for where, message in unwritable:  # was found after sampling and encoding, when the report was written
        assert_refused(["evaluate", "--samples", "8", "--out", where], message, capsys)
    assert_refused(["evaluate", "--samples", "8", "--out", tmp_path / "notes.txt"], "is a file, not a folder",
                   capsys)
    assert_only(tmp_path)


def test_evaluate_says_a_file_is_not_an_npz(places, capsys):
    tmp_path, _ = places
    assert_refused(["evaluate", "--images", tmp_path / "notes.txt"], "not an .npz file; give a folder of images",
                   capsys)


def test_a_corrupt_checkpoint_config_is_one_paragraph(tmp_path, capsys):
    """A config.json that is JSON but not a checkpoint's (an AttributeError inside the loader): no traceback."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("[1, 2]")
    for argv in (["sample", "--checkpoint", folder, "--out", tmp_path / "s.png"],
                 ["evaluate", "--checkpoint", folder, "--samples", "8"],
                 ["build-bank", "--images", "digits", "--checkpoint", folder, "--out", tmp_path / "b.safetensors"]):
        err = assert_refused(argv, "config.json", capsys)
        assert err.startswith(f"gmem {argv[0]}: error: ") and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_unexpected_errors_are_one_paragraph_and_debug_shows_the_traceback(monkeypatch, capsys):
    import gmem_explore.cli.convert as convert

    def boom(args):
        raise KeyError("boom")

    monkeypatch.setattr(convert, "run", boom)
    assert main(["convert", "a.pth", "out"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gmem convert: error: KeyError: 'boom'. gmem did not expect this error (")
    assert "gmem --debug convert" in err and "Traceback" not in err
    for argv in (["--debug", "convert", "a.pth", "out"], ["convert", "--debug", "a.pth", "out"]):
        with pytest.raises(KeyError):
            main(argv)
    monkeypatch.setattr(convert, "run", lambda args: (_ for _ in ()).throw(ValueError("said plainly")))
    with pytest.raises(ValueError):
        main(["convert", "a.pth", "out", "--debug"])
    assert main(["convert", "a.pth", "out"]) == 1
    assert capsys.readouterr().err == "gmem convert: error: said plainly\n"
    # the trainer's stop at a non-finite loss says what to change: shown as it is, not as a bug
    monkeypatch.setattr(convert, "run", lambda args: (_ for _ in ()).throw(FloatingPointError("lower lr")))
    assert main(["convert", "a.pth", "out"]) == 1
    assert capsys.readouterr().err == "gmem convert: error: lower lr\n"


def test_ctrl_c_and_a_closed_pipe_end_without_a_traceback(monkeypatch, capsys):
    import gmem_explore.cli.convert as convert

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "run", interrupted)
    assert main(["convert", "a.pth", "out"]) == 130
    err = capsys.readouterr().err
    assert "gmem convert: interrupted" in err and "Traceback" not in err

    def reader_gone(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(convert, "run", reader_gone)
    assert main(["convert", "a.pth", "out"]) == 1
    assert capsys.readouterr().err == ""


def test_debug_parses_before_and_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["--debug", "sample"]).debug is True
    assert parser.parse_args(["sample", "--debug"]).debug is True
    assert parser.parse_args(["bank", "stats", "x", "--debug"]).debug is True
    assert parser.parse_args(["sample"]).debug is False


def test_every_example_in_the_help_parses():
    """The `gmem ...` lines of each command's help use options that exist, with values they accept."""
    import shlex

    from gmem_explore.cli.main import COMMANDS, subparsers

    parser = build_parser()
    texts = [parser.description]
    for sub in subparsers(parser):
        texts.append(sub.description)
        texts += [q.description for q in subparsers(sub)]
    examples = []
    for text in texts:
        for line in (text or "").splitlines():
            line = line.split("#")[0].strip()
            for start in ("gmem ", "Example: gmem "):
                if line.startswith(start) and line.split()[len(start.split())] in COMMANDS:
                    examples.append(shlex.split(line[len(start):]))
            if line.startswith(("torchrun ", "accelerate launch ")) and " -m gmem_explore " in line:
                examples.append(shlex.split(line.split(" -m gmem_explore ", 1)[1]))
    assert len(examples) >= 20, examples
    for argv in examples:
        parser.parse_args(argv)  # argparse exits (SystemExit 2) on an unknown option or a bad value


def test_info_describes_a_checkpoint_in_text_and_json(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("GMemPipeline('emoji-32')\n  model        SiT, 32 px images, 32x32x3 input, patch 4")
    assert "  bank         1,697 rows x 768 (float16), with freq, labels, thumbnails, 9 groups" in out
    assert "\norigin\n  description  GMem on 32x32 Twemoji" in out and "CC-BY 4.0" in out  # the attribution
    assert "  training     7,200 steps, batch 512, lr 0.001" in out
    assert main(["info", "emoji-32", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["parameters"] == {"generating": 4337712, "projector": 312576, "encoder": 1083360}
    assert facts["bank"]["rows"] == 1697 and facts["image_size"] == 32 and facts["sampler"]["method"] == "heun"


def test_every_command_has_its_help_checked_for_torch():
    from gmem_explore.cli.main import COMMANDS

    assert set(COMMANDS) <= {c[0] for c in HELP_COMMANDS if c}


def test_sample_pins_a_hub_revision_and_refuses_one_for_a_checkpoint_without_versions(tmp_path, capsys, monkeypatch):
    from gmem_explore.checkpoints import hub

    assert_refused(["sample", "--revision", "abc123", "--out", tmp_path / "x.png"],
                   "'abc123' (--revision) picks a version of a Hub checkpoint", capsys)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="which has none: drop --revision"):
        hub.resolve_checkpoint(str(tmp_path), revision="abc123")  # a local folder: the revision would be ignored
    asked = []
    real = hub.resolve_checkpoint

    def fake_hub(name, revision=None, **kwargs):  # gmem-v1-xl at a pinned commit, faked by the embedded model
        asked.append((name, revision))
        return real("emoji-32", **kwargs)

    monkeypatch.setattr(hub, "resolve_checkpoint", fake_hub)
    assert main(["sample", "--checkpoint", "gmem-v1-xl", "--revision", "abc123", "--n", "1", "--steps", "1",
                 "--out", str(tmp_path / "x.png")]) == 0
    assert asked == [("gmem-v1-xl", "abc123")]
    assert json.loads((tmp_path / "x.json").read_text())["revision"] == "abc123"


def test_the_cli_knows_the_same_data_set_names_as_the_loader():
    """cli/checks.py spells them out so that --help need not import torch (data.py does): they must not drift."""
    from gmem_explore.cli.checks import DATASET_NAMES
    from gmem_explore.data import DATASET_NAMES as LOADED

    assert DATASET_NAMES == LOADED


def test_the_cli_offers_every_sampler_method():
    """The CLI spells the sampler names out (sampling imports torch, which --help must not); they stay the same."""
    from gmem_explore.cli.checks import SAMPLER_METHODS
    from gmem_explore.sampling import METHODS

    assert SAMPLER_METHODS == METHODS


def test_sample_takes_v2_settings_and_defaults_to_the_recipe(tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["sample", "--n", "2", "--method", "sde-heun", "--steps", "3", "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["method"] == "sde-heun"
    assert main(["sample", "--n", "1", "--method", "euler", "--steps", "3", "--time-shift", "0.3",
                 "--out", str(out)]) == 0
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["time_shift"] == 0.3 and settings["guidance"] == 1.0
    assert main(["sample", "--n", "1", "--method", "sde", "--time-shift", "0.3", "--out", str(out)]) == 1
    assert "time_shift applies to the ODE methods" in capsys.readouterr().err


def test_sample_takes_a_bank_downloaded_from_the_app(tmp_path, capsys, monkeypatch):
    """`gmem sample --bank FILE`: the Swap tab's download (here: the embedded bank with one row added) is sampled
    from with the same model; a missing file is refused before the model loads, another model's bank (snippets of
    another width) and a file that is not a bank with one line each."""
    import torch

    from gmem_explore import GMemPipeline, MemoryBank

    pipe = GMemPipeline.from_pretrained()
    edited = pipe.bank.copy()
    (added,) = edited.add(pipe.bank.column("rows")[5][None]).tolist()  # a copy of row 5, as a new row
    edited.save(tmp_path / "emoji-32-bank-edited.safetensors")
    out = tmp_path / "mine.png"
    assert main(["sample", "--bank", str(tmp_path / "emoji-32-bank-edited.safetensors"), "--rows", str(added),
                 "--scale", "1", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["rows"] == [added] and record["bank"].endswith("emoji-32-bank-edited.safetensors")
    import numpy as np
    from PIL import Image

    with Image.open(out) as grid:  # the added row holds row 5's snippet: the file's row made row 5's image
        cell = torch.from_numpy(np.asarray(grid.convert("RGB")).copy())[2:34, 2:34]  # inside the grid's 2 px pad
        assert torch.equal(cell, pipe.generate(indices=[5], seeds=[0]).images[0])
    # the checkpoint's own bank has no such row
    capsys.readouterr()
    assert_refused(["sample", "--rows", str(added), "--out", tmp_path / "x.png"], "the bank has rows 0..1696", capsys)
    import gmem_explore.pipeline as pipeline

    loads = []
    monkeypatch.setattr(pipeline.GMemPipeline, "from_pretrained", classmethod(lambda *a, **k: loads.append(a)))
    assert_refused(["sample", "--bank", tmp_path / "nothing.safetensors", "--out", tmp_path / "y.png"],
                   "--bank " + str(tmp_path / "nothing.safetensors") + ": no such file", capsys)
    assert not loads  # refused before the model loads
    monkeypatch.undo()
    MemoryBank(torch.randn(4, 16)).save(tmp_path / "other.safetensors")
    err = assert_refused(["sample", "--bank", tmp_path / "other.safetensors", "--out", tmp_path / "z.png"],
                         "the bank's snippets have 16 values, but emoji-32's model takes 768", capsys)
    assert err.startswith("gmem sample: error: --bank ")
    (tmp_path / "notes.safetensors").write_text("not a bank")
    assert_refused(["sample", "--bank", tmp_path / "notes.safetensors", "--out", tmp_path / "w.png"],
                   "is not a valid safetensors file", capsys)
    assert not any((tmp_path / n).exists() for n in ("x.png", "y.png", "z.png", "w.png"))


def test_bank_prepare_caches_the_whole_map_and_draws_it(tmp_path, capsys, monkeypatch):
    import json

    import torch

    from gmem_explore import MemoryBank

    monkeypatch.setenv("GMEM_CACHE", str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g)
    rows = centres[torch.arange(300) % 4] + 0.05 * torch.randn(300, 16, generator=g)
    MemoryBank(rows).save(tmp_path / "bank.safetensors")
    argv = ["bank", "prepare", str(tmp_path / "bank.safetensors"), "--map", "pca", "--fit-rows", "64"]
    assert_refused([*argv, "--figure", tmp_path / "map.jpg"], "map figure", capsys)  # refused before any work
    assert main([*argv, "--figure", str(tmp_path / "map.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 300 and report["map"]["rows_on_map"] == 300 and "not needed" in report["index"]
    assert "read" not in report["map"]["stages"]  # computed this time
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv) == 0  # the second run reads what the first cached
    assert "read" in json.loads(capsys.readouterr().out)["map"]["stages"]
