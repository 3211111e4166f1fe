"""The Bank map's payload (app/scatter.py MapView) at ImageNet's size, for the three ways points map to bank rows:
rows 0..N-1 (the checkpoint's map), every row once with moved rows drawn last (an edited session: 50 replaced,
50 added) and a subsample (every point's row sent). Synthetic coordinates and 1,000 groups: the size depends on
the count only, not on where the points lie. Seconds, not minutes.

    PYTHONPATH=. python benchmarks/map_payload.py
"""
from __future__ import annotations

import base64
import time

import numpy as np

from gmem_explore.app import scatter

N, MOVED = 1_281_167, 50


def main():
    g = np.random.default_rng(0)
    coords, labels = g.normal(0, 6, (N, 2)).astype(np.float32), np.arange(N) % 1000
    moved = np.r_[g.choice(N, MOVED, replace=False), np.arange(N, N + MOVED)]
    cases = {
        "checkpoint (rows 0..N-1)": (coords, labels, None),
        f"edited ({MOVED} replaced + {MOVED} added, drawn last)":
            (np.r_[coords, coords[:MOVED]], np.r_[labels, -np.ones(MOVED, int)],
             np.r_[np.setdiff1d(np.arange(N + MOVED), moved), moved]),
        "subsample (1.28M of 1.5M rows)": (coords, labels, np.sort(g.choice(1_500_000, N, replace=False))),
    }
    for name, (xy, groups, rows) in cases.items():
        t = time.perf_counter()
        view = scatter.MapView.build(xy, scatter.group_colours(groups), rows)
        built = time.perf_counter() - t
        h = view.header
        print(f"{name}: {len(view.payload):,} B base64 = {len(view.payload) / 2**20:.2f} MiB "
              f"({len(base64.b64decode(view.payload)):,} B raw); rows column: {h['rows']}, rows drawn last: "
              f"{h['top']}; packed in {built:.2f} s")


if __name__ == "__main__":
    main()
