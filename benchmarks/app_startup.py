"""How fast the app opens and generates, each against a baseline measured in the same run.

1. Launch to first page load: `python app.py --port P` in a fresh process until headless chromium shows the
   Generate button, against a bare gr.Blocks app (one button) launched and loaded the same way. The difference
   is what our app adds to the floor that Python + torch + gradio set.
2. A 4-image generation on the CPU with the default model and its default sampler settings: the pipeline called
   directly, against the same request through the running app (gradio_client, /generate): the app's overhead.
3. What a visitor waits for in the browser: from the click on Generate to the first live preview on screen and to
   the final images, for the default sampler and for the paper's 250-step SDE (4 images each), against the
   pipeline's own time for the same images.

    .venv/bin/python benchmarks/app_startup.py                      # the embedded default (emoji-32)
    .venv/bin/python benchmarks/app_startup.py --checkpoint DIR     # another checkpoint folder
    .venv/bin/python benchmarks/app_startup.py --only first-images  # part 3 only (results/app_first_images.*)
Writes benchmarks/results/app_startup.json and .md. Medians of --repeats runs (launches alternate between
our app and the baseline so both see the same machine load).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))  # the uninstalled checkout
from gmem_explore.evaluation.fid_sampling import free_port  # noqa: E402
BASELINE_APP = textwrap.dedent("""
    import sys, gradio as gr
    with gr.Blocks() as demo:
        gr.Button("Generate", elem_id="generate-button")
    demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]))
""")


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='gmem-bench-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def launch_to_page(driver, command: list[str], port: int, timeout: float = 900) -> float:
    """Seconds from starting `command` until the page at `port` shows #generate-button."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"{command} exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        driver.get(f"http://127.0.0.1:{port}/")
        while time.monotonic() - start < timeout:
            if driver.find_elements("id", "generate-button"):
                return time.monotonic() - start
            time.sleep(0.05)
        raise TimeoutError(f"no page from {command} within {timeout} s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_startup(checkpoint: str, repeats: int) -> dict:
    driver = chromium()
    ours, base = [], []
    with tempfile.TemporaryDirectory() as tmp:
        baseline_py = Path(tmp) / "baseline_app.py"
        baseline_py.write_text(BASELINE_APP)
        try:
            for _ in range(repeats):
                port = free_port()
                ours.append(launch_to_page(driver, [sys.executable, "app.py", "--port", str(port),
                                                    "--checkpoint", checkpoint], port))
                port = free_port()
                base.append(launch_to_page(driver, [sys.executable, str(baseline_py), str(port)], port))
        finally:
            driver.quit()
    return {"app_s": statistics.median(ours), "bare_gradio_s": statistics.median(base),
            "app_runs_s": [round(x, 2) for x in ours], "bare_runs_s": [round(x, 2) for x in base]}


def bench_generation(checkpoint: str, repeats: int) -> dict:
    from gradio_client import Client

    from gmem_explore.pipeline import GMemPipeline
    from gmem_explore.app.server import build_app, launch

    pipe = GMemPipeline.from_pretrained(checkpoint)
    method, steps = pipe.sampler.get("method", "sde"), int(pipe.sampler.get("steps", 250))
    demo = build_app(lambda name: pipe, checkpoint, use_spaces_gpu=False)
    launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    # download_files=False: a browser fetches the images itself, in parallel; gradio_client's sequential
    # downloads would add about 0.25 s per image on a busy 2-core machine and are not the app's cost
    client = Client(demo.local_url, verbose=False, analytics_enabled=False, download_files=False)
    direct, through_app = [], []
    try:
        pipe.generate(1, seeds=[0], steps=2)  # warm-up: first-call allocations are not what we measure
        client.predict("random (by frequency)", 0, None, None, 1, 0, False, 2, method, 1.0, api_name="/generate")
        for r in range(repeats):
            start = time.monotonic()
            pipe.generate(4, seeds=range(r, r + 4), method=method, steps=steps)
            direct.append(time.monotonic() - start)
            start = time.monotonic()
            client.predict("random (by frequency)", 0, None, None, 4, r, False, steps, method, 1.0,
                           api_name="/generate")
            through_app.append(time.monotonic() - start)
    finally:
        demo.close()
    return {"sampler": method, "steps": steps, "direct_s": statistics.median(direct),
            "app_s": statistics.median(through_app), "direct_runs_s": [round(x, 3) for x in direct],
            "app_runs_s": [round(x, 3) for x in through_app]}


def click_to_images(driver, url: str, method: str, steps: int, timeout: float = 600) -> tuple[float, float]:
    """(seconds to the first preview shown, seconds to the final images shown) after a click on Generate: a fresh
    page, 4 images at random, the given sampler. A preview's caption ends in 'step k/N'; the final ones do not."""
    from selenium.webdriver.common.keys import Keys

    driver.get(url)
    while not driver.find_elements("id", "generate-button"):
        time.sleep(0.05)
    driver.find_element("css selector", "#generate-sampler .label-wrap").click()
    radios = []
    while not radios:  # the accordion draws its content a moment after it opens
        radios = [b for b in driver.find_elements("css selector", "#generate-method label")
                  if b.text.strip() == method and b.is_displayed()]
        time.sleep(0.05)
    radios[0].click()
    box = driver.find_element("css selector", "#generate-steps input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(steps), Keys.TAB)
    time.sleep(0.5)  # the slider takes the typed value
    captions = ("return [...document.querySelectorAll('#generate-gallery .thumbnail-item img')]"
                ".filter(i => i.complete && i.naturalWidth > 0).map(i => i.alt);")
    start = time.monotonic()
    driver.find_element("id", "generate-button").click()
    first = None
    while time.monotonic() - start < timeout:
        shown = driver.execute_script(captions)
        now = time.monotonic() - start
        if shown and first is None:
            first = now  # a preview, or the final images when the run ended before its first preview was due
        if len(shown) == 4 and not any(re.search(r"step \d+/\d+$", c) for c in shown):
            return first, now
        time.sleep(0.02)
    raise TimeoutError(f"no final images within {timeout} s")


def bench_first_images(checkpoint: str, repeats: int) -> dict:
    from gmem_explore.pipeline import GMemPipeline
    from gmem_explore.app.server import build_app, launch

    pipe = GMemPipeline.from_pretrained(checkpoint)
    demo = build_app(lambda name: pipe, checkpoint, use_spaces_gpu=False)
    launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    driver = chromium()
    runs = {}
    try:
        pipe.generate(1, seeds=[0], steps=2)  # warm-up
        for method, steps in ((pipe.sampler.method, pipe.sampler.steps), ("sde", 250)):
            firsts, finals, direct = [], [], []
            for r in range(repeats):
                first, final = click_to_images(driver, demo.local_url, method, steps)
                firsts.append(first)
                finals.append(final)
                start = time.monotonic()
                pipe.generate(4, seeds=range(r, r + 4), method=method, steps=steps)
                direct.append(time.monotonic() - start)
            runs[f"{method}_{steps}"] = {
                "method": method, "steps": steps, "first_preview_s": statistics.median(firsts),
                "final_images_s": statistics.median(finals), "pipeline_s": statistics.median(direct),
                "first_preview_runs_s": [round(x, 2) for x in firsts], "final_runs_s": [round(x, 2) for x in finals]}
    finally:
        driver.quit()
        demo.close()
    return runs


def write_first_images(checkpoint: str, repeats: int, runs: dict) -> None:
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    result = {"checkpoint": checkpoint, "repeats": repeats, "runs": runs, "preview_every_s": 0.4,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_1min": load},
              "date": date}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "app_first_images.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "".join(f"| {r['method']}, {r['steps']} steps | {r['first_preview_s']:.2f} s | {r['final_images_s']:.2f} s "
                   f"| {r['pipeline_s']:.2f} s |\n" for r in runs.values())
    md = (f"# Time to first preview and first image in the app ({date}, {os.cpu_count()} CPUs, load {load:.1f})\n\n"
          f"Headless chromium on the app (checkpoint {checkpoint}, 4 images at random, CPU): from the click on "
          f"Generate until the first live preview is on screen, and until the final images are. The pipeline's own "
          f"time for the same 4 images is the floor. Previews come at most every 0.4 s (Limits.preview_seconds).\n\n"
          f"| sampler | first preview | final images | pipeline alone |\n|---|---|---|---|\n{rows}\n"
          f"Medians of {repeats} runs.\n")
    (RESULTS / "app_first_images.md").write_text(md)
    print(md)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="emoji-32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=["first-images"], help="run only this part")
    args = p.parse_args()
    write_first_images(args.checkpoint, args.repeats, bench_first_images(args.checkpoint, args.repeats))
    if args.only:
        return
    startup = bench_startup(args.checkpoint, args.repeats)
    print(f"launch -> page: app {startup['app_s']:.1f} s, bare gradio {startup['bare_gradio_s']:.1f} s", flush=True)
    generation = bench_generation(args.checkpoint, args.repeats)
    print(f"4 images ({generation['sampler']}, {generation['steps']} steps): direct {generation['direct_s']:.2f} s, "
          f"through the app {generation['app_s']:.2f} s", flush=True)
    result = {"checkpoint": args.checkpoint, "repeats": args.repeats, "startup": startup, "generate_4": generation,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_1min": os.getloadavg()[0]},
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "app_startup.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (f"# App startup and a 4-image generation ({result['date']}, {os.cpu_count()} CPUs, load "
          f"{result['machine']['load_average_1min']:.1f})\n\n"
          f"| measure | ours | baseline |\n|---|---|---|\n"
          f"| launch to first page load (`python app.py`, checkpoint {args.checkpoint}) | {startup['app_s']:.1f} s "
          f"| {startup['bare_gradio_s']:.1f} s (bare gr.Blocks) |\n"
          f"| 4 images, {generation['sampler']} {generation['steps']} steps, CPU | {generation['app_s']:.2f} s "
          f"(through the app) | {generation['direct_s']:.2f} s (pipeline directly) |\n\n"
          f"Medians of {args.repeats} runs.\n")
    (RESULTS / "app_startup.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
