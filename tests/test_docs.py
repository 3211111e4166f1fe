"""The documentation's structure, never its wording: README is short and starts with the two commands that the
Makefile and CI run; every link and every repository path or module named in README, docs/ and
benchmarks/README.md exists; the public names are documented somewhere."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import gmem_explore

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# written by tests/test_bad_input.py from its cases (their messages, cut to a cell's length); checked there
WRITTEN = [ROOT / "docs" / "bad_input.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# a path into the repository, as prose or commands name it; one with a placeholder (<card>, {json,md}, *) is a
# pattern, not a path, and is not matched at all
REPO_PATH = re.compile(r"(?<![\w/.\-])((?:gmem_explore|scripts|benchmarks|tests|docs|notebooks)/[\w./\-]*[\w/])"
                       r"(?![\w./\-{<*\[])")
RESULTS_PATH = re.compile(r"(?<![\w/.\-])(results/[\w./\-]*\w)(?![\w./\-{<*\[])")
MODULE = re.compile(r"(?<![\w.])(gmem_explore(?:\.\w+)+)")


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number of the opening fence, language, body) of every ``` block."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start, lang, body = i, lines[i][3:].strip(), []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((start + 1, lang, "\n".join(body)))
        i += 1
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(), re.M)}


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move detail into docs/ (at most 300)"


def test_readme_starts_with_the_two_commands_that_make_and_ci_run():
    readme = (ROOT / "README.md").read_text()
    first = next(((line, body) for line, lang, body in fenced_blocks(readme) if lang in ("bash", "sh", "")), None)
    assert first is not None and first[0] <= 40, "README's first shell block (within 40 lines) shows the commands"
    commands = [c.split("#")[0].strip() for c in first[1].splitlines()]
    assert commands == ["make app", "make test"], f"README's first shell block: {commands}"
    makefile = (ROOT / "Makefile").read_text()
    for target in ("app", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"the Makefile has no {target!r} target"
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M), ".ci/run must run `make test`"


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, fragment = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif fragment and file.suffix == ".md" and fragment not in anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "links to nothing: " + "; ".join(broken)


def test_every_repository_path_named_exists():
    missing = []
    for page in (p for p in PAGES if p not in WRITTEN):
        text = page.read_text()
        found = set(REPO_PATH.findall(text))
        if page.parent.name == "benchmarks":  # benchmarks/README.md names its results relative to itself
            found |= {"benchmarks/" + p for p in RESULTS_PATH.findall(text)}
        for path in sorted(found):
            if not (ROOT / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, "paths that do not exist: " + "; ".join(missing)


def test_every_module_named_exists():
    missing = []
    for page in (p for p in PAGES if p not in WRITTEN):
        for dotted in sorted(set(MODULE.findall(page.read_text()))):
            parts = dotted.split(".")
            # the longest prefix that is a module or package in the source tree; the rest must be attributes
            n = max(i for i in range(1, len(parts) + 1)
                    if (ROOT.joinpath(*parts[:i]).with_suffix(".py")).exists() or (ROOT.joinpath(*parts[:i])).is_dir())
            obj = importlib.import_module(".".join(parts[:n]))
            try:
                for attr in parts[n:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(f"{page.relative_to(ROOT)}: {dotted}")
    assert not missing, "modules or names that do not exist: " + "; ".join(missing)


def test_public_names_are_importable_and_documented():
    docs = "\n".join(page.read_text() for page in PAGES)
    for name in ("GMemPipeline", "MemoryBank", "build_model", "sample", "mix", "index_from_noise"):
        assert hasattr(gmem_explore, name), name
        assert f"`{name}" in docs, f"neither README nor docs/ mention {name}"


def test_the_gradio_client_example_names_the_endpoints_arguments():
    """docs/app.md's gradio_client call passes every argument by name (ten positional values could not be read),
    and the names, in order, are the endpoint's, as the app on a tiny model reports them."""
    import ast

    import app_tiny

    calls = [node for _, lang, body in fenced_blocks((ROOT / "docs" / "app.md").read_text())
             if lang == "python" and "gradio_client" in body
             for node in ast.walk(ast.parse(body))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "predict"]
    assert calls, "docs/app.md has no gradio_client example"
    endpoints = app_tiny.tiny_demo().get_api_info()["named_endpoints"]
    for call in calls:
        assert not call.args, "an argument passed by position"
        names = [k.arg for k in call.keywords]
        endpoint = ast.literal_eval(call.keywords[names.index("api_name")].value)
        names.remove("api_name")
        assert names == [p["parameter_name"] for p in endpoints[endpoint]["parameters"]], endpoint
