"""Time to the first paint of the Bank map in headless Chromium: the WebGL map (app/scatter.py + scatter.js) of
1,280,000 and of 50,000 synthetic points, drawn by WebGL and by its 2-D canvas path (what it uses where WebGL runs
on the CPU, as here), against the map it replaces, matplotlib's scatter_figure of a 50,000-row
subsample rendered to a PNG and shown by gr.Plot, in the same run.

    python benchmarks/map_paint.py --repeats 5                     # 1,280,000 and 50,000 points, 5 loads each
    python benchmarks/map_paint.py --sizes 50000 --repeats 1       # a quick look

"First paint" runs from the page's navigation start (performance.now() = 0) to the first frame showing every
point: scatter.js marks it (window.gmemMapMarks.firstPaint: the animation frame after the draw has finished); for
the picture, a head script checks every animation frame for the plot's <img> loaded. Each case is a small Gradio
app whose map is filled by demo.load, as the Bank tab fills its map when opened, from coordinates already computed
(the app reads them from the map cache): the server's share (packing the points, or drawing and encoding the
figure) is inside the time and also reported alone. Each page is loaded once to warm the browser's cache of
gradio's scripts, then --repeats times; medians are reported. The points: 1,000 Gaussian blobs (a UMAP-like
layout) coloured by 10 groups (matplotlib draws one scatter per group: ImageNet's 1,000 classes would slow the
baseline far more than this). Writes benchmarks/results/map_paint.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from gmem_explore.safefiles import write_bytes_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GROUPS = 10
# a head script for the picture: the first animation frame in which the plot's image has loaded
PLOT_HEAD = """<script>
(function poll() {
  const i = document.querySelector('#bench-plot img');
  if (i && i.complete && i.naturalWidth > 0) { window.benchPaint = performance.now(); return; }
  requestAnimationFrame(poll);
})();
</script>"""


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (1000, 2))
    blob = rng.integers(0, 1000, n)
    return (centres[blob] + rng.normal(0, 0.35, (n, 2))).astype(np.float32), blob % GROUPS


def map_app(coords, labels, server_s: list, renderer: str = "auto"):
    import gradio as gr
    from PIL import Image

    from gmem_explore.app import scatter

    store = scatter.MapStore()
    grey = Image.new("RGB", (8, 8), (200, 200, 200))
    with gr.Blocks(title="map paint") as demo:
        view_box = scatter.map_component(store, elem_id="bench-map", renderer=renderer)

        def fill():
            t = time.perf_counter()
            view = scatter.MapView.build(coords, scatter.group_colours(labels, [f"group {g}" for g in range(GROUPS)]),
                                         title=f"{len(coords):,} points")
            token = store.put(("bench", time.perf_counter()), scatter.Entry(view, lambda r: (grey, f"row {r}"),
                                                                          len(coords)))
            server_s.append(time.perf_counter() - t)
            return gr.HTML(value=view.header["title"], points={**view.header, "token": token}, rings=None)
        demo.load(fill, None, view_box)
    demo.payload_bytes = lambda: len(next(iter(store._entries.values())).view.payload)
    return demo


def plot_app(coords, labels, server_s: list):
    import gradio as gr
    import torch

    from gmem_explore.bank.map2d import scatter_figure

    with gr.Blocks(title="map paint") as demo:
        plot = gr.Plot(elem_id="bench-plot")

        def fill():
            t = time.perf_counter()
            fig = scatter_figure(torch.from_numpy(coords), torch.from_numpy(labels),
                                 [f"group {g}" for g in range(GROUPS)], title=f"UMAP map of {len(coords):,} snippets")
            server_s.append(time.perf_counter() - t)  # the PNG is encoded by gr.Plot afterwards (inside first paint)
            return fig
        demo.load(fill, None, plot)
    return demo


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gmem-bench-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--enable-unsafe-swiftshader", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(300)
    return driver, profile


def wait(driver, script: str, timeout: float = 300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"no answer to {script!r} in {timeout} s")


def run_case(driver, demo, is_map: bool, repeats: int, server_s: list) -> dict:
    from gmem_explore.app.server import launch
    from gmem_explore.evaluation.fid_sampling import free_port

    launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True,
           head=None if is_map else PLOT_HEAD)
    done = "return window.gmemMapMarks && gmemMapMarks.firstPaint" if is_map else "return window.benchPaint"
    loads = []
    try:
        for i in range(repeats + 1):  # the first load warms the browser's cache of gradio's own scripts
            driver.get(demo.local_url)
            paint = wait(driver, done)
            if i == 0:
                continue
            load = {"first_paint_ms": round(paint, 1), "server_s": round(server_s[-1], 3)}
            if is_map:
                marks = driver.execute_script("return gmemMapMarks")
                load.update({"requested_ms": round(marks["requested"], 1), "decoded_ms": round(marks["decoded"], 1),
                             "drawn_ms": round(marks["drawn"], 1),
                             "frame_ms": round(driver.execute_script("return gmemMap.frameMs(5)"), 1),
                             "pick_us": round(driver.execute_script("return gmemMap.pickUs(2000)"), 1),
                             "renderer": driver.execute_script("return gmemMap.renderer"),
                             "count": driver.execute_script("return gmemMap.count")})
            else:
                load["png_bytes"] = driver.execute_script(
                    "const i = document.querySelector('#bench-plot img');"
                    "return i.src.startsWith('data:') ? Math.round(i.src.length * 3 / 4) : null;")
            loads.append(load)
            print(json.dumps(load), flush=True)
    finally:
        demo.close()
    out = {"loads": loads, "first_paint_ms_median": statistics.median(x["first_paint_ms"] for x in loads),
           "server_s_median": statistics.median(x["server_s"] for x in loads)}
    if is_map:
        out["payload_bytes"] = demo.payload_bytes()
        for key in ("frame_ms", "pick_us", "decoded_ms", "requested_ms"):
            out[key + "_median"] = round(statistics.median(x[key] for x in loads), 1)
    return out


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    version = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "chromium": version,
            "load_avg_start": [round(x, 2) for x in os.getloadavg()]}


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Bank map: time to first paint in headless Chromium", "",
             f"Machine: {m['cpu']}, {m['cores']} cores (shared), {m['platform']}; {m['chromium']} headless, no GPU "
             f"(WebGL on the CPU through SwiftShader: a GPU draws the same frames far faster). Load average "
             f"{m['load_avg_start']} at the start, {r['load_avg_end']} at the end. Medians of {r['repeats']} loads "
             "after one warm-up load per page.", "",
             "First paint: from navigation start to the first frame showing every point (the WebGL map's "
             "`gmemMapMarks.firstPaint`; the picture's first animation frame with its image loaded). Server: the "
             "handler's own time (packing the points; for the picture, drawing the matplotlib figure, before gr.Plot "
             "encodes its PNG).", "",
             "| map | points | first paint (ms) | points asked for (ms) | points decoded (ms) | server (s) | sent | "
             "one pan frame (ms) | nearest point (µs) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in r["cases"]:
        sent = f"{c['payload_bytes'] / 2**20:.1f} MiB base64" if "payload_bytes" in c else (
            f"{c['loads'][0]['png_bytes'] / 2**10:.0f} KiB PNG" if c["loads"][0].get("png_bytes") else "PNG")
        lines.append(f"| {c['name']} | {c['points']:,} | {c['first_paint_ms_median']:,.0f} | "
                     f"{c.get('requested_ms_median', '–')} | {c.get('decoded_ms_median', '–')} | "
                     f"{c['server_s_median']:.2f} | {sent} | {c.get('frame_ms_median', '–')} | "
                     f"{c.get('pick_us_median', '–')} |")
    lines += ["", "'Points asked for': when the map's props arrived and it asked the server for the packed points "
              "(the page's own load and the server's packing come before); 'decoded': when they were in typed arrays. "
              "The map picks its renderer itself: WebGL on a GPU, the 2-D canvas where WebGL runs on the CPU, as "
              "here (SwiftShader spends about 1 µs a point). Pan, zoom and hover redraw in the browser without a "
              "server round trip; the picture needed a new figure from the server for any change, and showed a "
              "50,000-row subsample, never the whole bank.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_280_000, 50_000])
    ap.add_argument("--baseline-rows", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--renderers", nargs="+", default=["webgl", "2d"], choices=["webgl", "2d", "auto"])
    args = ap.parse_args()
    os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="gmem-bench-gradio-"))
    report = {"machine": machine(), "repeats": args.repeats, "cases": []}
    full, labels = synthetic(max(args.sizes + [args.baseline_rows]))
    driver, profile = browser()
    try:
        for n in args.sizes:
            pick = np.random.default_rng(1).permutation(len(full))[:n] if n < len(full) else slice(None)
            for renderer in args.renderers:
                server_s: list = []
                out = run_case(driver, map_app(full[pick], labels[pick], server_s, renderer), True, args.repeats,
                               server_s)
                report["cases"].append({"name": f"interactive map, {renderer} (this change)", "points": n, **out})
        pick = np.random.default_rng(1).permutation(len(full))[:args.baseline_rows]
        server_s = []
        out = run_case(driver, plot_app(full[pick], labels[pick], server_s), False, args.repeats, server_s)
        report["cases"].append({"name": "matplotlib picture (before)", "points": args.baseline_rows, **out})
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    report["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    write_bytes_atomic(RESULTS / "map_paint.json", json.dumps(report, indent=1).encode())
    write_bytes_atomic(RESULTS / "map_paint.md", markdown(report).encode())
    print(markdown(report))


if __name__ == "__main__":
    main()
