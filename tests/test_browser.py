"""End to end in headless Debian chromium (selenium) against the app on a free local port.

The app runs a tiny model by default (fast, independent of the trained weights). With GMEM_SCREENSHOTS=1 the
same code runs on the embedded default model and rewrites docs/images/app_<tab>.png for the README
(without it the tree is never touched, so CI stays clean).
"""
from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import free_port

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[1]
SHOTS = os.environ.get("GMEM_SCREENSHOTS") == "1"
TIMEOUT = 240  # seconds for one UI step; most take 1-5 s, but a CPU shared with training can starve the server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="Debian chromium and chromedriver are not installed (apt-get install chromium "
                              "chromium-driver, or `make browser`)"),
]


@pytest.fixture(scope="module")
def app_demo():
    from gmem_explore.app.server import build_app, launch
    from gmem_explore.app.common import Limits

    if SHOTS:
        from gmem_explore import GMemPipeline
        from gmem_explore.bank.map2d import embed_2d

        pipe = GMemPipeline.from_pretrained("emoji-32")
        embed_2d(pipe.bank, "umap")  # cached, so the Bank tab opens on the UMAP map
        demo = build_app(lambda name: pipe, "emoji-32", limits=Limits(preview_seconds=0.5), use_spaces_gpu=False)
    else:
        from app_tiny import tiny_factory

        demo = build_app(tiny_factory, "tiny", limits=Limits(preview_seconds=0.0), use_spaces_gpu=False)
    launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def app_url(app_demo):
    return app_demo.local_url


@pytest.fixture
def slow_steps(app_demo, monkeypatch):
    """Each model call of the app's pipeline takes 30 ms more: a 500-step run lasts 15 s on the server, whatever
    the machine's load. The tiny model's own steps are so quick that the server finished while the browser was
    still drawing its early previews: the run was over before the test could look at it or stop it."""
    model = app_demo.gmem_context.store.get().model
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: time.sleep(0.03) or forward(*a, **k))


@pytest.fixture(scope="module")
def browser(app_url):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gmem-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 # WebGL on the CPU (SwiftShader) for the Bank map: chromium warns that its automatic fallback
                 # is deprecated without this flag (the map draws on a 2-D canvas where WebGL is missing)
                 "--enable-unsafe-swiftshader",
                 f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(TIMEOUT)
    start = time.monotonic()
    driver.get(app_url)
    wait_for(driver, lambda: driver.find_elements("id", "generate-button"), "the page to load")
    driver.page_load_seconds = time.monotonic() - start
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def red_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "red.png"
    img = Image.new("RGB", (48, 48), (255, 255, 255))
    img.paste((220, 30, 30), (8, 8, 40, 40))
    img.save(path)
    return str(path)


# ---- helpers ----------------------------------------------------------------------------------------------------
def wait_for(driver, condition, what: str, timeout: float = TIMEOUT):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = condition()
        except AssertionError:  # a check inside the condition failed (e.g. an error toast): no point waiting
            raise
        except Exception:  # noqa: BLE001 - elements re-render while gradio updates them
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def css(driver, selector):
    return driver.find_elements("css selector", selector)


def no_error_toast(driver):
    """None of these tests expects an error: a red toast means a handler failed (its text says which)."""
    errors = [t.text for t in css(driver, ".toast-body.error")]
    assert not errors, f"the page shows an error: {errors}"


def open_tab(driver, name: str):
    (tab,) = [b for b in css(driver, "button[role=tab]") if b.text.strip() == name]
    tab.click()
    wait_for(driver, lambda: tab.get_attribute("aria-selected") == "true", f"the {name} tab")
    time.sleep(0.5)  # the tab's own select handlers (row ranges, the Bank tab's statistics) answer within this
    no_error_toast(driver)


def set_number(driver, elem_id: str, value):
    from selenium.webdriver.common.keys import Keys

    box = wait_for(driver, lambda: css(driver, f"#{elem_id} input[type=number]"), f"#{elem_id}")[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)
    wait_for(driver, lambda: box.get_attribute("value") == str(value), f"#{elem_id} = {value}")


def gallery(driver, elem_id: str) -> list[tuple[str, str]]:
    """(src, caption) of every image in a gallery."""
    return [(img.get_attribute("src"), img.get_attribute("alt"))
            for img in css(driver, f"#{elem_id} .thumbnail-item img")]


def content(src: str) -> str:
    """What a served image holds: gradio's cache folder for a file is named by the hash of its bytes."""
    return src.rsplit("/", 2)[-2]


def final_gallery(driver, elem_id: str, count: int, done=lambda caption: not re.search(r"\d+/\d+", caption)):
    """Wait until the gallery shows `count` final images (live previews say their step: 'step k/N' in Generate,
    'w 0.25 · k/N' in Interpolate)."""
    def ready():
        no_error_toast(driver)
        items = gallery(driver, elem_id)
        return items if len(items) == count and all(done(c) for _, c in items) else None
    items = wait_for(driver, ready, f"{count} images in #{elem_id}")
    no_error_toast(driver)
    return items


def screenshot(driver, name: str):
    if not SHOTS:
        return
    out = ROOT / "docs" / "images" / f"app_{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    driver.save_screenshot(str(tmp))
    with Image.open(tmp) as img:  # 256 colours keep each screenshot around 100 KB
        img.convert("RGB").quantize(256).save(out, optimize=True)
    tmp.unlink()


# ---- tests ----------------------------------------------------------------------------------------------------
def test_page_loads(browser):
    assert "GMem explorer" in browser.title
    tabs = [b.text.strip() for b in css(browser, "button[role=tab]")]
    assert tabs == ["Generate", "Bank", "Swap", "Interpolate"]
    assert browser.page_load_seconds < TIMEOUT
    # the README sends API users to "Use via API" at the bottom of the page (a CSS rule hid the whole footer)
    assert [b for b in css(browser, "footer button") if b.text.strip() == "Use via API" and b.is_displayed()]


def test_generate_produces_captioned_images(browser):
    open_tab(browser, "Generate")
    css(browser, "#generate-button")[0].click()
    items = final_gallery(browser, "generate-gallery", 4)
    assert all(caption.startswith("seed ") and " · row " in caption for _, caption in items)  # seed first
    first_seed = items[0][1].split(" · ")[0].removeprefix("seed ")
    wait_for(browser, lambda: f"from seed {first_seed}" in css(browser, "#generate-status")[0].text, "the status line")
    # the rows the images came from, as pictures beside them (once each, in the images' order)
    rows = list(dict.fromkeys(caption.split(" · ")[1] for _, caption in items))
    wait_for(browser, lambda: [c for _, c in gallery(browser, "generate-sources")] == rows, "the source rows")
    assert all(shown(browser, img) for img in css(browser, "#generate-sources .thumbnail-item img"))
    # one row of images, nothing to scroll: no scroll bar beside it, once the images have their size (while they
    # load, the row can overflow for a moment)
    bar = "const g = document.querySelector('#generate-gallery .grid-wrap'); return g.offsetWidth - g.clientWidth;"
    wait_for(browser, lambda: browser.execute_script(bar) == 0, "the gallery without a scroll bar", timeout=15)


def shown(driver, element) -> bool:
    """Displayed with a size: an image is there for the user to see."""
    box = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", element)
    return element.is_displayed() and min(box) > 0


def top(driver, selector: str) -> float:
    return driver.execute_script(f"return document.querySelector('{selector}').getBoundingClientRect().top;")


def bottom(driver, selector: str) -> float:
    return driver.execute_script(f"return document.querySelector('{selector}').getBoundingClientRect().bottom;")


def test_swap_changes_what_a_row_generates(browser, red_png):
    open_tab(browser, "Swap")
    set_number(browser, "swap-row", 2)
    css(browser, "#swap-compare")[0].click()
    before = final_gallery(browser, "swap-before", 4)
    after = final_gallery(browser, "swap-after", 4)
    # unedited: the same row gives the same images. gradio serves a file from a folder named by its content's hash;
    # the names differ ("gmem-row2-original-seed0.png", "gmem-row2-edited-seed0.png")
    assert [content(s) for s, _ in before] == [content(s) for s, _ in after]
    wait_for(browser, lambda: css(browser, "#swap-upload input[type=file]"), "the upload box")[0].send_keys(red_png)
    wait_for(browser, lambda: css(browser, "#swap-upload img"), "the uploaded image's preview")
    css(browser, "#swap-replace")[0].click()
    wait_for(browser, lambda: "replaced row 2" in css(browser, "#swap-log")[0].text, "the edit log")
    css(browser, "#swap-compare")[0].click()

    def changed():
        now = gallery(browser, "swap-after")
        return len(now) == 4 and [content(s) for s, _ in now] != [content(s) for s, _ in after]
    wait_for(browser, changed, "images from the swapped row")
    css(browser, "#swap-generate")[0].click()
    final_gallery(browser, "swap-gallery", 4)
    # the nearest bank rows are pictures (they were a line of text)
    near = wait_for(browser, lambda: gallery(browser, "swap-nearest"), "the nearest rows")
    assert len(near) == 3 and all(re.fullmatch(r"row \d+ · cos -?\d\.\d\d", c) for _, c in near)
    assert all(shown(browser, img) for img in css(browser, "#swap-nearest .thumbnail-item img"))
    # the comparison follows the nearest rows, with its one-line note between: an empty note, then the taller
    # controls' row, left a blank band there (about 160 px at this width)
    assert 0 <= top(browser, "#swap-note") - bottom(browser, "#swap-nearest") <= 24
    assert 0 <= top(browser, "#swap-before") - bottom(browser, "#swap-note") <= 24
    screenshot(browser, "swap")


def test_an_added_row_compares_alone_and_the_bank_downloads_in_one_click(browser, tmp_path):
    """After Add, "Generate from the row" showed an empty "Original bank" box above the new row's images; Download
    showed a file box whose link was a second click."""
    open_tab(browser, "Swap")
    css(browser, "#swap-add")[0].click()  # the red image is still in the upload box
    log = wait_for(browser, lambda: re.search(r"added row (\d+)", css(browser, "#swap-log")[0].text), "the edit log")
    added = log.group(1)
    wait_for(browser, lambda: css(browser, "#swap-row input[type=number]")[0].get_attribute("value") == added,
             f"row {added} in the row box")
    css(browser, "#swap-compare")[0].click()
    wait_for(browser, lambda: "added in this session" in css(browser, "#swap-note")[0].text, "the note")
    final_gallery(browser, "swap-after", 4)
    assert not [e for e in css(browser, "#swap-before") if e.is_displayed()]
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    css(browser, "#swap-download")[0].click()
    saved = wait_for(browser, lambda: not list(tmp_path.glob("*.crdownload")) and list(tmp_path.glob("*-bank-edited"
                                                                                               ".safetensors")),
                     "the saved bank", 60)
    from gmem_explore import MemoryBank

    assert len(MemoryBank.load(saved[0])) == int(added) + 1
    set_number(browser, "swap-row", 2)  # a row of the original bank: both galleries again
    css(browser, "#swap-compare")[0].click()
    wait_for(browser, lambda: [e for e in css(browser, "#swap-before") if e.is_displayed()], "the original gallery")
    final_gallery(browser, "swap-before", 4)


def test_interpolate_yields_k_frames(browser):
    open_tab(browser, "Interpolate")
    set_number(browser, "interp-k", 5)
    css(browser, "#interp-button")[0].click()
    items = final_gallery(browser, "interp-frames", 5)
    assert [c for _, c in items] == ["w 0.00", "w 0.25", "w 0.50", "w 0.75", "w 1.00"]  # the seed is said once:
    # "Random seed" starts ticked (one rule on every tab): the status says which seed it drew
    wait_for(browser, lambda: re.search(r"5 frames from seed \d+", css(browser, "#interp-status")[0].text),
             "the status line")
    (strip,) = wait_for(browser, lambda: css(browser, "#interp-strip img"), "the strip")
    wait_for(browser, lambda: css(browser, "#interp-gif img"), "the GIF")
    # five frames in one line, each at least 128 px as shown (they were 64 px: too small to read)
    wait_for(browser, lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", strip),
             "the strip's pixels")
    width = browser.execute_script("return arguments[0].getBoundingClientRect().width;", strip)
    assert width / 5 >= 128, width
    # rows A and B as pictures beside their boxes
    for which in "ab":
        (img,) = wait_for(browser, lambda: css(browser, f"#interp-picture-{which} img"), f"row {which.upper()}'s picture")
        assert shown(browser, img)
    screenshot(browser, "interpolate")


def test_bank_map_and_selection(browser):
    open_tab(browser, "Bank")
    map_painted(browser)
    thumbs = wait_for(browser, lambda: css(browser, "#bank-selection .thumbnail-item"), "selected thumbnails")
    caption = thumbs[1].find_element("css selector", "img").get_attribute("alt")
    thumbs[1].click()
    row = caption.split(" · ")[0]  # "row N"
    wait_for(browser, lambda: css(browser, "#bank-row-info")[0].text.startswith(row), f"details of {row}")
    assert not css(browser, "#bank-selection .preview")  # a click picks the row; no enlarged preview covers the grid
    widths = browser.execute_script("const g = document.querySelector('#bank-selection .grid-wrap');"
                                    "return [g.scrollWidth, g.clientWidth];")
    assert widths[0] <= widths[1]  # every column fits: no sideways scrolling, no column cut off
    screenshot(browser, "bank")
    # a neighbour's click shows that neighbour (the grid's rows come with the details, not from its captions)
    neighbours = wait_for(browser, lambda: css(browser, "#bank-neighbours .thumbnail-item"), "neighbour thumbnails")
    picked = neighbours[2].find_element("css selector", "img").get_attribute("alt").split(" · ")[0]
    neighbours[2].click()
    wait_for(browser, lambda: css(browser, "#bank-row-info")[0].text.startswith(picked), f"details of {picked}")


def map_painted(driver) -> int:
    """Wait until the Bank map has drawn every point (scatter.js's hook); the number of points."""
    return wait_for(driver, lambda: driver.execute_script("return window.gmemMap && gmemMap.painted && gmemMap.count"),
                    "the bank map drawn")


def point_offset(driver, row: int) -> tuple[float, float]:
    """Where the map draws a row, as an offset from the map stage's centre (what ActionChains moves by), read from
    the page's own transform (gmemMap.toScreen) so a change of layout or zoom cannot make the test miss."""
    at = driver.execute_script(f"return gmemMap.toScreen({row})")
    assert at, f"row {row} is not on the map"
    box = driver.execute_script("const r = document.querySelector('#bank-map .gm-stage').getBoundingClientRect();"
                                "return [r.left + r.width / 2, r.top + r.height / 2];")
    return at["x"] - box[0], at["y"] - box[1]


@pytest.mark.skipif(SHOTS, reason="written for the tiny model's 40-row bank (colours red/green/blue); screenshots run emoji-32")
@pytest.mark.parametrize("renderer", ["auto", "webgl"])
def test_a_click_on_the_map_picks_that_row_and_a_hover_shows_its_picture(browser, app_url, renderer):
    """Both drawing paths: auto is WebGL on a GPU and the 2-D canvas on a software WebGL (this headless chromium's
    SwiftShader), ?gmem_map=webgl forces WebGL."""
    if renderer != "auto":
        browser.get(f"{app_url}?gmem_map={renderer}")
        wait_for(browser, lambda: browser.find_elements("id", "generate-button"), "the page to load")
    try:
        click_a_point(browser, renderer)
    finally:
        if renderer != "auto":
            browser.get(app_url)
            wait_for(browser, lambda: browser.find_elements("id", "generate-button"), "the page to load")


def click_a_point(browser, renderer):
    from selenium.webdriver.common.action_chains import ActionChains

    open_tab(browser, "Bank")
    assert map_painted(browser) >= 40  # the tiny bank's rows (and those the Swap tests added to this session's bank)
    drawn = browser.execute_script("return gmemMap.renderer")
    software = browser.execute_script("return gmemMap.softwareGL")
    assert drawn == ("2d" if renderer == "auto" and software else "webgl2"), (drawn, software)
    browser.execute_script("document.querySelector('#bank-map').scrollIntoView()")
    stage = css(browser, "#bank-map .gm-stage")[0]
    row = 17 if not css(browser, "#bank-row-info")[0].text.startswith("row 17 ") else 23
    ActionChains(browser).move_to_element_with_offset(stage, *point_offset(browser, row)).perform()
    tip = wait_for(browser, lambda: browser.execute_script(
        "const t = document.querySelector('#bank-map .gm-tip'); const i = t.querySelector('img');"
        "return !t.hidden && i.src.startsWith('data:image/png') && i.complete && t.textContent.trim();"),
        "the hover picture")
    assert tip == f"row {row} · {['red', 'green', 'blue'][row % 3]}"
    ActionChains(browser).click().perform()
    wait_for(browser, lambda: css(browser, "#bank-row-info")[0].text.startswith(f"row {row} "), f"details of row {row}")
    assert css(browser, "#bank-row input[type=number]")[0].get_attribute("value") == str(row)
    # the row and its nearest neighbours are ringed (the neighbours come with the details)
    rings = wait_for(browser, lambda: (r := browser.execute_script("return gmemMap.rings")) and r["neighbours"] and r,
                     "the rings")
    shown = [int(img.get_attribute("alt").split()[1]) for img in css(browser, "#bank-neighbours .thumbnail-item img")]
    assert rings["row"] == row and rings["neighbours"] == shown
    no_error_toast(browser)


@pytest.mark.skipif(SHOTS, reason="written for the tiny model's 40-row bank (colours red/green/blue); screenshots run emoji-32")
def test_a_box_drawn_on_the_map_selects_the_rows_inside_it(browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_tab(browser, "Bank")
    count = map_painted(browser)  # every row of a small bank is on the map
    browser.execute_script("document.querySelector('#bank-map').scrollIntoView()")
    stage = css(browser, "#bank-map .gm-stage")[0]
    spots = {r: point_offset(browser, r) for r in range(count)}
    xs = sorted(x for x, _ in spots.values())
    cut = (xs[14] + xs[15]) / 2  # between two points: no point on the box's edge
    left = xs[0] - 8
    top, bottom = min(y for _, y in spots.values()) - 8, max(y for _, y in spots.values()) + 8
    ActionChains(browser).move_to_element_with_offset(stage, left, top).key_down(Keys.SHIFT).click_and_hold() \
        .move_by_offset((cut - left) / 2, (bottom - top) / 2).move_by_offset((cut - left) / 2, (bottom - top) / 2) \
        .release().key_up(Keys.SHIFT).perform()
    wait_for(browser, lambda: css(browser, "#bank-summary")[0].text.startswith("15 rows in the box"), "the box's rows")
    rows = wait_for(browser, lambda: len(items := gallery(browser, "bank-selection")) == 15 and items, "15 thumbnails")
    assert sorted(int(c.split()[1]) for _, c in rows) == sorted(r for r, (x, _) in spots.items() if x < cut)
    no_error_toast(browser)


def a_ring_around_a_few_points(spots: dict, half: tuple[float, float], corners: int) -> tuple[list, tuple, float]:
    """(rows, centre, radius): a circle centred on a point, inside the stage, holding 3-8 points, whose inscribed
    polygon of `corners` corners holds the same points with 3 px to spare on either side (the page rounds the
    pointer to whole pixels and samples the lasso every 3 px); more than 12 px wide, so each edge is a step of
    the lasso."""
    shrink = math.cos(math.pi / corners)  # the polygon's edges lie this much inside the circle, at worst
    for cx, cy in spots.values():
        near = sorted((math.dist((cx, cy), xy), r) for r, xy in spots.items())
        for k in range(3, min(9, len(near))):
            inner, outer = near[k - 1][0] + 3, near[k][0] - 3  # the k-th nearest inside, the next one outside
            radius = (inner / shrink + outer) / 2
            fits = abs(cx) + radius < half[0] - 4 and abs(cy) + radius < half[1] - 4
            if inner / shrink < outer and radius > 12 and fits:
                return sorted(r for _, r in near[:k]), (cx, cy), radius
    pytest.fail("no few points lie apart from the rest on this map")


@pytest.mark.skipif(SHOTS, reason="written for the tiny model's 40-row bank (colours red/green/blue); screenshots run emoji-32")
def test_a_lasso_drawn_on_the_map_selects_the_rows_inside_it(browser):
    from selenium.webdriver.common.action_chains import ActionChains

    open_tab(browser, "Bank")
    count = map_painted(browser)
    browser.execute_script("document.querySelector('#bank-map').scrollIntoView()")
    stage = css(browser, "#bank-map .gm-stage")[0]
    spots = {r: point_offset(browser, r) for r in range(count)}
    corners = 16
    inside, (cx, cy), radius = a_ring_around_a_few_points(spots, (stage.size["width"] / 2, stage.size["height"] / 2),
                                                          corners)
    ring = [(cx + radius * math.cos(2 * math.pi * j / corners), cy + radius * math.sin(2 * math.pi * j / corners))
            for j in range(corners + 1)]  # back to the first corner
    css(browser, "#bank-map .gm-lasso")[0].click()
    try:
        assert css(browser, "#bank-map .gm-lasso")[0].get_attribute("aria-pressed") == "true"
        chain = ActionChains(browser).move_to_element_with_offset(stage, *map(round, ring[0])).click_and_hold()
        for x, y in ring[1:]:  # each corner from the stage's centre: rounding errors do not add up along the way
            chain = chain.move_to_element_with_offset(stage, round(x), round(y))
        chain.release().perform()
        wait_for(browser, lambda: css(browser, "#bank-summary")[0].text.startswith(f"{len(inside)} rows in the lasso"),
                 "the lasso's rows")
        rows = wait_for(browser, lambda: len(items := gallery(browser, "bank-selection")) == len(inside) and items,
                        f"{len(inside)} thumbnails")
        assert sorted(int(c.split()[1]) for _, c in rows) == inside
    finally:
        css(browser, "#bank-map .gm-lasso")[0].click()  # off again: later tests drag to pan
    assert css(browser, "#bank-map .gm-lasso")[0].get_attribute("aria-pressed") == "false"
    no_error_toast(browser)


def test_the_map_decodes_each_points_row_as_python_packs_it(browser):
    """scatter_ui.js's rowsOf, run in the browser on payloads scatter.py packed: rows 0..N-1, row order with moved
    rows drawn last (an edited session's map; the tiny bank's own edited map is a PCA of its rows, in row order, so
    the page's tests above never send one) and every point's row (a subsample)."""
    import numpy as np

    from gmem_explore.app import scatter

    source = (ROOT / "gmem_explore/app/scatter_ui.js").read_text()
    rows_of = re.search(r"^function rowsOf\(.*?^}$", source, re.S | re.M).group(0)
    n = 1_001
    cases = [None, np.r_[np.setdiff1d(np.arange(n), [500, 3, 999]), [500, 3, 999]], np.arange(n) * 2]
    for rows in cases:
        view = scatter.MapView.build(np.random.default_rng(0).normal(size=(n, 2)), scatter.one_colour(), rows)
        got = browser.execute_script(
            rows_of + "; const s = atob(arguments[1]), b = new Uint8Array(s.length);"
            "for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);"
            "const r = rowsOf(arguments[0], b.buffer, arguments[2]); return r && Array.from(r);",
            view.header, view.payload, 5 * n + (-(5 * n) % 4))
        assert view.header["top"] == (3 if rows is cases[1] else 0)
        if rows is None:
            assert got is None  # rows 0..N-1: no array, the point is the row
        else:
            assert got == rows.tolist() == scatter.decode_payload(view.payload, view.header)["rows"].tolist()


def captions_cut(driver, elem_id: str) -> list[str]:
    """The captions of a gallery that do not show whole (gradio ends a cut one with '…')."""
    return driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]} .caption-label`)]"
        ".filter(e => e.scrollWidth > e.clientWidth).map(e => e.textContent);", elem_id)


def generate_four(browser, seed: int):
    """The Generate tab's four images from one fixed seed (Random seed off), waited for until final."""
    open_tab(browser, "Generate")
    random = css(browser, "#generate-random input[type=checkbox]")[0]
    if random.is_selected():
        random.click()
    set_number(browser, "generate-seed", seed)
    css(browser, "#generate-button")[0].click()
    final_gallery(browser, "generate-gallery", 4)


def test_captions_fit_a_narrow_window(browser):
    """In an 800 px window a gallery shows fewer columns rather than cut its captions: 4 columns of 80 px cut the
    Generate gallery's 'seed 905427 · row 12' to 'seed 9054…' (and scrolled sideways), and the Bank's neighbours
    lost their cosine."""
    browser.set_window_size(800, 1000)
    try:
        generate_four(browser, seed=987654)
        wait_for(browser, lambda: "from seed 987654" in css(browser, "#generate-status")[0].text, "the status line")
        assert not captions_cut(browser, "generate-gallery")
        wrap = "const g = document.querySelector('#generate-gallery .grid-wrap'); return g.scrollWidth - g.clientWidth;"
        assert browser.execute_script(wrap) == 0  # nothing to scroll sideways
        open_tab(browser, "Bank")
        wait_for(browser, lambda: len(css(browser, "#bank-neighbours .thumbnail-item")) == 8, "neighbour thumbnails")
        assert not captions_cut(browser, "bank-neighbours")
        open_tab(browser, "Swap")  # its before/after galleries scrolled sideways
        css(browser, "#swap-compare")[0].click()
        final_gallery(browser, "swap-after", 4)
        side = "const g = document.querySelector('#swap-after .grid-wrap'); return g.scrollWidth - g.clientWidth;"
        assert browser.execute_script(side) == 0 and not captions_cut(browser, "swap-after")
    finally:
        browser.set_window_size(1280, 1000)


def phone(driver, width: int = 400):
    """A phone's viewport (headless chromium's windows are at least 500 px wide, so the page is emulated)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900,
                                                                  "deviceScaleFactor": 1, "mobile": True})


def test_a_phone_shows_two_columns_and_uncovered_images(browser):
    """At 400 px the Generate gallery showed one column (two 156 px columns need 320 px of its 318): four images
    were 1,300 px tall. The Interpolate strip (44 px tall there) lay under its label and buttons, and the GIF's label
    read "Animation (" under its buttons."""
    phone(browser)
    try:
        generate_four(browser, seed=987654)
        columns = "return getComputedStyle(document.querySelector('#generate-gallery .grid-container'))" \
                  ".gridTemplateColumns.split(' ').length;"
        assert browser.execute_script(columns) == 2 and not captions_cut(browser, "generate-gallery")
        open_tab(browser, "Interpolate")
        set_number(browser, "interp-k", 8)
        css(browser, "#interp-button")[0].click()
        final_gallery(browser, "interp-frames", 8)
        wait_for(browser, lambda: css(browser, "#interp-strip img") and css(browser, "#interp-gif img"), "strip, GIF")
        overlaps = browser.execute_script("""
            const box = s => document.querySelector(s).getBoundingClientRect();
            const label = box('#interp-strip label'), buttons = box('#interp-strip .icon-button-wrapper');
            const strip = box('#interp-strip img');
            const gifLabel = box('#interp-gif label'), gifButtons = box('#interp-gif .icon-button-wrapper');
            return [strip.top < label.bottom - 1, strip.top < buttons.bottom - 1,
                    gifLabel.right > gifButtons.left + 1];""")
        assert overlaps == [False, False, False]  # [strip under its label, under its buttons, GIF label under buttons]
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        browser.set_window_size(1280, 1000)


# ---- issue 22: what a user sees of a run, an upload and the page ------------------------------------------------
@pytest.fixture(scope="module")
def broken_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("broken") / "broken.png"
    path.write_text("a text file renamed .png")
    return str(path)


@pytest.fixture(scope="module")
def photo_45mp(tmp_path_factory):
    """A phone camera's 45 MP JPEG (8192 x 5464; flat colour, so about a megabyte)."""
    from PIL import ImageDraw

    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    img = Image.new("RGB", (8192, 5464), (40, 120, 200))
    ImageDraw.Draw(img).ellipse((2000, 1000, 6000, 5000), fill=(240, 200, 40))
    img.save(path, quality=80)
    return str(path)


def choose(driver, elem_id: str, value: str):
    """Click a radio button by its text (waiting for it: an accordion just opened draws its content a moment later)."""
    (label,) = wait_for(driver, lambda: [b for b in css(driver, f"#{elem_id} label")
                                         if b.text.strip() == value and b.is_displayed()], f"{value!r} in #{elem_id}")
    label.click()


def close_toasts(driver):
    for button in css(driver, ".toast-close"):
        button.click()
    wait_for(driver, lambda: not css(driver, ".toast-body"), "the messages to close", timeout=15)


def reload(driver):
    """A fresh page: every box back to its default (a long run's sampler settings would slow the tests after it)."""
    driver.refresh()
    wait_for(driver, lambda: driver.find_elements("id", "generate-button"), "the page to load")


def start_long_run(driver):
    """A 500-step SDE run of four images: on the tiny model long enough to look at its previews mid-run."""
    open_tab(driver, "Generate")
    choose(driver, "generate-source", "random (by frequency)")
    if not [b for b in css(driver, "#generate-steps input[type=number]") if b.is_displayed()]:
        css(driver, "#generate-sampler .label-wrap")[0].click()
    choose(driver, "generate-method", "sde")
    set_number(driver, "generate-steps", 500)
    css(driver, "#generate-button")[0].click()


# every preview on top where it is drawn: elementFromPoint at its centre is the image or inside its thumbnail (a
# progress overlay there answers with itself), with a size; null until the gallery shows step previews
VISIBLE_PREVIEWS = """
const imgs = [...document.querySelectorAll('#generate-gallery .thumbnail-item img')];
if (!imgs.length || !imgs.every(i => /step \\d+\\/\\d+$/.test(i.alt))) return null;
imgs[0].scrollIntoView({block: 'center'});
return imgs.map(img => {
  const r = img.getBoundingClientRect();
  const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return {width: r.width, height: r.height, onTop: !!top && img.closest('.thumbnail-item').contains(top),
          covering: top ? top.className : null, caption: img.alt};
});"""


def test_live_previews_are_visible_mid_run(browser, slow_steps):
    """During a run the gallery lay under gradio's progress overlay ("sampling: step 103/250") for the whole run:
    the previews were in the page but could not be seen, and Details drew a second progress bar."""
    start_long_run(browser)
    try:
        previews = wait_for(browser, lambda: browser.execute_script(VISIBLE_PREVIEWS), "previews mid-run")
        assert len(previews) == 4
        step, total = map(int, re.search(r"step (\d+)/(\d+)$", previews[0]["caption"]).groups())
        assert step < total == 500  # mid-run
        assert all(p["width"] > 50 and p["height"] > 50 for p in previews), previews
        assert all(p["onTop"] for p in previews), previews  # nothing drawn over them
        # the run's progress shows once, on the status line above the gallery: no tracker text over the gallery or
        # in Details (each output of the run had its own)
        # (gradio draws the bar between the run's outputs and blanks it while an output arrives, and for a frame
        # may draw it in a node outside every component: sampled until a frame shows it settled, and every sample
        # is checked - none may put it over the gallery or in another component such as Details)
        samples = []

        def trackers():
            found = browser.execute_script("""
            const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT), found = [];
            while (walk.nextNode()) {
              const e = walk.currentNode.parentElement;
              if (/sampling: step/.test(walk.currentNode.textContent) && e.getBoundingClientRect().width > 0)
                found.push(e.closest('#generate-status') ? 'status' : (e.closest('[id]') || {}).id);
            }
            return found.length ? found : null;""")
            samples.append(found)
            return found if found and set(found) == {"status"} else None

        wait_for(browser, trackers, "the progress bar on the status line alone", timeout=30)
        placed = {where for found in samples if found for where in found} - {"status", None}
        assert not placed, samples  # never over the gallery or in Details
    finally:
        css(browser, "#generate-stop")[0].click()
        # stopped, or (on a loaded machine the checks above can outlast the 500 steps) already finished: either way
        # no run is left for the next test; Stop's own message is test_stop_says_the_step_its_images_show's

        def settled():
            text = css(browser, "#generate-status")[0].text
            return text and ("Stopped at step" in text or "sampling: step" not in text)

        wait_for(browser, settled, "the run's end")
        reload(browser)


def test_stop_says_the_step_its_images_show(browser, slow_steps):
    """Stop said "Stopped at step 132/250" while the captions said step 137."""
    start_long_run(browser)
    try:
        wait_for(browser, lambda: browser.execute_script(VISIBLE_PREVIEWS), "previews mid-run")
        css(browser, "#generate-stop")[0].click()
        said = wait_for(browser, lambda: re.search(r"Stopped at step (\d+/500)",
                                                   css(browser, "#generate-status")[0].text), "the stop message")
        time.sleep(1)  # the stopped run's last images arrive with the message; nothing may follow them
        captions = [c for _, c in gallery(browser, "generate-gallery")]
        assert len(captions) == 4 and all(c.endswith(f"step {said.group(1)}") for c in captions), (said, captions)
        no_error_toast(browser)
    finally:
        reload(browser)


def upload_on_generate(browser, path) -> None:
    """The Generate tab, its "uploaded image" source, and `path` sent to its upload box."""
    open_tab(browser, "Generate")
    choose(browser, "generate-source", "uploaded image")
    wait_for(browser, lambda: css(browser, "#generate-upload input[type=file]"), "the upload box")[0].send_keys(path)


def test_a_corrupt_upload_is_refused_on_arrival(browser, broken_png):
    """A text file named .png showed as a broken picture in the box, refused only when a run read it."""
    upload_on_generate(browser, broken_png)
    wait_for(browser, lambda: [t for t in css(browser, ".toast-body.warning")
                               if "'broken.png' is not an image" in t.text], "the refusal")
    wait_for(browser, lambda: not css(browser, "#generate-upload img"), "the box emptied")
    close_toasts(browser)


def test_a_failed_run_clears_the_last_results(browser):
    """A failed run left the last run's images and summary under an "Error" badge, as if they were its own."""
    open_tab(browser, "Generate")
    choose(browser, "generate-source", "random (by frequency)")
    generate_four(browser, seed=5)
    wait_for(browser, lambda: "from seed 5" in css(browser, "#generate-status")[0].text, "the status line")
    choose(browser, "generate-source", "uploaded image")  # and no image in the box
    css(browser, "#generate-button")[0].click()
    wait_for(browser, lambda: [t for t in css(browser, ".toast-body.error") if "Upload an image first" in t.text],
             "the error")
    wait_for(browser, lambda: not gallery(browser, "generate-gallery"), "the old images to go")
    wait_for(browser, lambda: css(browser, "#generate-status")[0].text.startswith("No images: the run failed"),
             "the status line to say so")
    close_toasts(browser)


def test_a_large_photo_is_shrunk_on_upload_and_generates(browser, photo_45mp):
    """A 45 MP photo was refused only after Generate ("Resize it first")."""
    upload_on_generate(browser, photo_45mp)
    size = "const i = document.querySelector('#generate-upload img'); return i && [i.naturalWidth, i.naturalHeight];"
    assert wait_for(browser, lambda: browser.execute_script(size) == [1024, 683] and [1024, 683],
                    "the shrunk photo in the box")
    no_error_toast(browser)
    css(browser, "#generate-button")[0].click()
    items = final_gallery(browser, "generate-gallery", 4)
    assert all(c.endswith(" · upload") for _, c in items)
    close_toasts(browser)  # the note that the photo was shrunk
    reload(browser)


def test_mix_two_rows_is_one_click_from_variety(browser):
    open_tab(browser, "Generate")
    choose(browser, "generate-source", "mix two rows")
    wait_for(browser, lambda: [b for b in css(browser, "#generate-pick") if b.is_displayed()], "the pair picker")[0] \
        .click()
    time.sleep(1)  # the pair arrives without the queue
    rows = [css(browser, f"#{i} input[type=number]")[0].get_attribute("value") for i in ("generate-row",
                                                                                          "generate-row-b")]
    assert rows[0] != rows[1]
    css(browser, "#generate-button")[0].click()
    items = final_gallery(browser, "generate-gallery", 4)
    assert all(c.endswith(f" · mix {rows[0]}+{rows[1]}") for _, c in items), (rows, items)
    reload(browser)


def test_the_page_says_what_gmem_and_its_model_are(browser):
    header, note = css(browser, "#header")[0], css(browser, "#model-note")[0]
    assert header.is_displayed() and "GMem is a diffusion transformer" in header.text
    name = "emoji-32" if SHOTS else "tiny"
    assert note.is_displayed() and note.text.startswith(f"What {name} does.")
    if SHOTS:
        assert "1,697 emojis that reproduces its rows" in note.text
    tabs = css(browser, "button[role=tab]")[0]
    assert note.rect["y"] + note.rect["height"] <= tabs.rect["y"]  # read before the tabs


def test_a_deliberate_look_at_1440_px(browser):
    """The default theme with dense controls: now one theme (indigo), the snippet controls grouped, and images
    large enough to see in a 1440 px window."""
    browser.set_window_size(1440, 1000)
    try:
        generate_four(browser, seed=11)
        widths = browser.execute_script(
            "return [...document.querySelectorAll('#generate-gallery .thumbnail-item img')]"
            ".map(i => i.getBoundingClientRect().width);")
        assert len(widths) == 4 and min(widths) >= 200, widths
        colour = browser.execute_script(
            "const s = getComputedStyle(document.querySelector('#generate-button'));"
            "return s.backgroundImage + ' ' + s.backgroundColor;")
        # the theme's indigo 600, or 700 under the pointer that just clicked it (gradio's default theme: orange)
        assert re.search(r"rgb\((79, 70, 229|67, 56, 202)\)", colour), colour
        grouped = browser.execute_script(  # each control inside its group's box
            "const inside = (g, c) => document.querySelector(g).contains(document.querySelector(c));"
            "return [inside('#generate-snippets', '#generate-source'), inside('#generate-seeds', '#generate-seed'),"
            "        inside('#generate-seeds', '#generate-random')];")
        assert grouped == [True, True, True]
        screenshot(browser, "generate")
    finally:
        browser.set_window_size(1280, 1000)
