"""Security: safe loading only, bounded uploads, loopback by default, no server-side paths from requests, and
downloads that are checked before use.

- A static scan (AST, not grep: comments and strings do not count) of the package, app.py, benchmarks, scripts
  and the notebooks' code cells: torch.load only with weights_only=True; no pickle / dill / joblib / marshal /
  shelve loading, no np.load(allow_pickle=True), no yaml.load, no eval / exec / compile, no shell commands.
- A code-carrying pickle is refused by every loader and runs nothing.
- The app on a tiny model, served on a free loopback port: not reachable on other interfaces, uploads above the
  limit refused, no file outside its upload folder served or accepted in a request.
- The Hub path: a corrupt download is refused before it is converted, even when the Hub's metadata is missing.
"""
from __future__ import annotations

import ast
import json
import socket
import sys
from pathlib import Path

import httpx
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY, free_port, randomize  # noqa: E402

from gmem_explore import offline  # noqa: E402
from gmem_explore import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["gmem_explore", "app.py", "benchmarks", "scripts", "notebooks"]

# attribute calls that deserialise code-capable formats; "module.function" as written in the source
UNSAFE_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cPickle.load",
    "cPickle.loads", "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads", "joblib.load",
    "marshal.load", "marshal.loads", "shelve.open", "yaml.load", "yaml.unsafe_load", "yaml.full_load",
    "torch.serialization.add_safe_globals", "serialization.add_safe_globals", "os.system", "os.popen",
    "jsonpickle.decode",
}
UNSAFE_BUILTINS = {"eval", "exec", "compile"}


def dotted(node: ast.AST) -> str:
    """'torch.load' for torch.load(...); '?.eval' for model.to(x).eval(), which is not the builtin eval."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "?")
    return ".".join(reversed(parts))


def keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_uses(source: str, where: str) -> list[str]:
    """Every unsafe call in `source`, as 'where:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        line = f"{where}:{node.lineno}"
        if name == "torch.load" and not keyword_is(node, "weights_only", True):
            found.append(f"{line}: torch.load without weights_only=True")
        elif name in UNSAFE_CALLS:
            found.append(f"{line}: {name}")
        elif name in UNSAFE_BUILTINS:
            found.append(f"{line}: {name}()")
        elif name.endswith(("np.load", "numpy.load")) and keyword_is(node, "allow_pickle", True):
            found.append(f"{line}: np.load(allow_pickle=True)")
        elif name.startswith("subprocess.") and keyword_is(node, "shell", True):
            found.append(f"{line}: {name}(shell=True)")
    return found


def sources():
    for entry in SCANNED:
        path = ROOT / entry
        files = [path] if path.is_file() else sorted(path.rglob("*.py")) + sorted(path.rglob("*.ipynb")) if path.is_dir() else []
        for file in files:
            if ".ipynb_checkpoints" in file.parts:
                continue
            rel = str(file.relative_to(ROOT))
            if file.suffix == ".ipynb":
                cells = json.loads(file.read_text())["cells"]
                for i, cell in enumerate(cells):
                    if cell["cell_type"] == "code":
                        code = "".join(cell["source"])
                        # IPython magics and shell escapes are not Python; drop those lines
                        code = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in code.splitlines())
                        yield f"{rel}[cell {i}]", code
            else:
                yield rel, file.read_text()


def test_the_scanner_catches_what_it_looks_for():
    planted = """
import pickle, numpy as np, torch, subprocess, os
torch.load("a.pth")
torch.load("a.pth", weights_only=False)
torch.load("ok.pth", weights_only=True)
pickle.loads(b"")
np.load("x.npy", allow_pickle=True)
np.load("ok.npy")
eval("1 + 1")
model.to("cpu").eval()
exec("x = 1")
subprocess.run("ls", shell=True)
subprocess.run(["ls"])
os.system("ls")
# torch.load("in a comment") does not count
text = "pickle.loads(...) in a string does not count"
"""
    found = unsafe_uses(planted, "planted")
    assert [f.split(": ", 1)[1] for f in found] == [
        "torch.load without weights_only=True", "torch.load without weights_only=True", "pickle.loads",
        "np.load(allow_pickle=True)", "eval()", "exec()", "subprocess.run(shell=True)", "os.system"]


def test_no_unsafe_loading_or_code_execution_anywhere():
    scanned, found = 0, []
    for where, code in sources():
        scanned += 1
        found += unsafe_uses(code, where)
    assert scanned > 20, "the scan found almost nothing to scan: the layout changed"
    assert not found, "unsafe calls:\n" + "\n".join(found)


# ---- pickles that carry code ---------------------------------------------------------------------------------
class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_every_loader_refuses_a_pickle_that_carries_code(tmp_path):
    from gmem_explore.checkpoints.folder import load_checkpoint
    from gmem_explore.checkpoints.hub import resolve_checkpoint
    from gmem_explore.checkpoints.official import load_official
    from gmem_explore.safefiles import load_tensors

    marker = tmp_path / "pwned"
    evil = {"network": {"w": torch.zeros(1)}, "memorybank": torch.zeros(2, 4), "memoryfreq": Evil(marker)}
    pth = tmp_path / "released.pth"
    torch.save(evil, pth)
    with pytest.raises(Exception, match="(?i)refused|weights only|unsupported global"):
        load_official(pth)
    with pytest.raises(Exception, match="(?i)refused|weights only|unsupported global"):
        resolve_checkpoint(str(pth))  # a .pth path is converted; the conversion must refuse first
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format": "gmem-explore-1", "model": TINY}))
    (folder / "model.safetensors").write_bytes(pth.read_bytes())
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load_tensors(folder / "model.safetensors")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load_checkpoint(folder)
    assert not marker.exists(), "a loader ran the pickle's code"
    assert not [p for p in tmp_path.glob("*.gmem-explore-*") if p.is_dir()], "a refused file was converted anyway"


# ---- the Hub path ----------------------------------------------------------------------------------------------
def test_a_corrupt_download_is_refused_before_conversion_even_without_hub_metadata(tmp_path, monkeypatch):
    """hf_hub_download hands back a file whose bytes do not hash to its blob name (the LFS sha256), and the Hub's
    metadata call fails (so the size check is skipped): the sha256 check must still refuse it."""
    import huggingface_hub

    import gmem_explore.checkpoints.hub as hub
    from gmem_explore.checkpoints.official import file_sha256

    spec = hub.HUB["gmem-v1-xl"]
    model = randomize(build_model(**TINY))
    good = {"network": model.state_dict(), "memorybank": torch.randn(8, TINY["snippet_dim"]),
            "memoryfreq": torch.ones(8)}
    repo = tmp_path / "cache" / "models--Tangentone--GMem"
    (repo / "blobs").mkdir(parents=True)
    staging = repo / "blobs" / "incoming"
    torch.save(good, staging)
    sha = file_sha256(staging)
    blob = repo / "blobs" / sha
    staging.rename(blob)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in transit
    blob.write_bytes(bytes(data))
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / spec["filename"]).symlink_to(Path("..") / ".." / "blobs" / sha)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(offline, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(snap / spec["filename"]))

    def no_metadata(url):
        raise OSError("metadata unavailable")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_metadata)
    with pytest.raises(ValueError, match="is corrupt: its sha256"):
        hub.resolve_checkpoint("gmem-v1-xl", progress=False, model_overrides=TINY)
    assert not [p for p in snap.iterdir() if p.is_dir()], "the corrupt file was converted"


# ---- the app ---------------------------------------------------------------------------------------------------
def outward_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("10.255.255.255", 1))
            address = sock.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.fixture(scope="module")
def app_url():
    from app_tiny import tiny_factory

    from gmem_explore.app.server import build_app, launch
    from gmem_explore.app.common import Limits

    torch.set_num_threads(1)
    demo = build_app(tiny_factory, "tiny", limits=Limits(preview_seconds=0.0), use_spaces_gpu=False)
    launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)  # host and upload limit: the defaults
    yield demo.local_url.rstrip("/"), demo
    demo.close()


def test_the_app_listens_on_loopback_unless_told_otherwise(app_url, monkeypatch):
    url, demo = app_url
    assert demo.server_name == "127.0.0.1" and url.startswith("http://127.0.0.1:")
    address = outward_address()
    if address is not None:  # the port is open on loopback but closed on the machine's other address
        with pytest.raises(OSError):
            socket.create_connection((address, demo.server_port), timeout=2).close()
    sys.path.insert(0, str(ROOT))
    import app

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert app.parse_args([]).host == "127.0.0.1"
    assert app.parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"  # only when told


def test_uploads_above_the_limit_are_refused(app_url):
    url, _ = app_url
    big = httpx.post(f"{url}/gradio_api/upload", files={"files": ("big.png", b"\0" * (11 << 20), "image/png")}, timeout=60)
    assert big.status_code == 413 and "maximum allowed size" in big.text
    small = httpx.post(f"{url}/gradio_api/upload", files={"files": ("small.png", b"\0" * 100, "image/png")}, timeout=60)
    assert small.status_code == 200


def test_no_file_outside_the_upload_folder_is_served(app_url, tmp_path):
    url, _ = app_url
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    for path in (str(secret), str(ROOT / "app.py"), "app.py", str(ROOT / "gmem_explore" / "__init__.py"),
                 "/etc/hostname", "../../../../etc/hostname"):
        answer = httpx.get(f"{url}/gradio_api/file={path}", timeout=30)
        assert answer.status_code in (403, 404), (path, answer.status_code)
        assert "top secret" not in answer.text


def test_a_request_cannot_hand_the_app_a_server_side_file(app_url, tmp_path):
    """A FileData naming a path that was not uploaded is refused before any handler sees it."""
    url, _ = app_url
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"top secret")
    call = httpx.post(f"{url}/gradio_api/call/swap_replace",
                      json={"data": [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}, 1]}, timeout=30)
    assert call.status_code == 200
    events = httpx.get(f"{url}/gradio_api/call/swap_replace/{call.json()['event_id']}", timeout=60).text
    assert "event: error" in events and "not uploaded by a user" in events
    # without gradio's FileData marker the payload reaches the handler unchecked: the app refuses it itself (a
    # readable image here would otherwise come back as generations or as a bank thumbnail)
    from PIL import Image
    Image.new("RGB", (8, 8), (200, 10, 10)).save(secret, format="PNG")
    for payload, refusal in (({"path": str(secret)}, "not a file uploaded to this app"),
                             (str(secret), "valid dictionary or instance of ImageData")):  # gradio's own check
        call = httpx.post(f"{url}/gradio_api/call/swap_replace", json={"data": [payload, 1]}, timeout=30)
        events = httpx.get(f"{url}/gradio_api/call/swap_replace/{call.json()['event_id']}", timeout=60).text
        assert "event: error" in events and refusal in events, events[-300:]


def test_a_request_cannot_load_a_checkpoint_by_server_side_path(app_url, tmp_path):
    from gradio_client import Client

    from gmem_explore.checkpoints.folder import Checkpoint, save_checkpoint
    from app_tiny import tiny_pipeline

    url, _ = app_url
    pipe = tiny_pipeline()
    folder = save_checkpoint(tmp_path / "elsewhere", Checkpoint(pipe.model, pipe.bank, sampler={"method": "euler", "steps": 2}))
    client = Client(url, verbose=False, analytics_enabled=False)
    for name, path in ((str(folder), ""), ("", str(folder))):
        try:
            text, _ = client.predict(name, path, api_name="/load_checkpoint")
        except Exception:  # noqa: BLE001 - an error is a refusal
            continue
        assert "Could not load" in text, f"the app loaded {folder} because a request named it"
