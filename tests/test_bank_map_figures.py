"""Bank maps and their figures (tests written to kill mutants of bank/map2d.py that the suite let through): PCA's
fixed signs, small banks mapped by PCA whatever the method, the 'drawn uniformly' sentence, a selection that
keeps its points in full colour and fades the rest."""
from __future__ import annotations

import torch

from gmem_explore import MemoryBank
from gmem_explore.bank.map2d import FADED_ALPHA, embed_2d, pca_2d, uniform_frequency, scatter_figure


def test_pca_signs_put_each_components_largest_loading_positive():
    for seed in range(8):
        x = torch.randn(30, 6, generator=torch.Generator().manual_seed(seed))
        coords = pca_2d(x).double()
        loadings = (x - x.mean(0)).double().T @ coords  # (6, 2): each column along its component
        top = loadings.gather(0, loadings.abs().argmax(0, keepdim=True))
        assert bool((top > 0).all()), seed


def test_a_bank_below_32_rows_is_mapped_by_pca_even_when_umap_is_asked():
    rows = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(embed_2d(rows, "umap", cache_dir=False), pca_2d(torch.nn.functional.normalize(rows, dim=1)))


def test_uniform_frequency_only_when_every_row_is_equally_frequent():
    rows = torch.randn(3, 4)
    assert "no frequencies" in uniform_frequency(MemoryBank(rows))
    assert "frequency 2" in uniform_frequency(MemoryBank(rows, freq=torch.tensor([2.0, 2.0, 2.0])))
    assert uniform_frequency(MemoryBank(rows, freq=torch.tensor([2.0, 2.0, 3.0]))) is None


def test_a_selection_is_drawn_in_full_colour_and_the_rest_faded():
    coords = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    fig = scatter_figure(coords, selected=[1, 4, 99])  # 99 is outside the map: ignored
    sizes = {round(c.get_alpha(), 2): len(c.get_offsets()) for c in fig.axes[0].collections}
    assert sizes == {round(FADED_ALPHA, 2): 8, 0.85: 2}


def test_frequencies_spanning_more_than_100x_get_a_log_colour_scale():
    from matplotlib.colors import LogNorm

    coords = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    wide = scatter_figure(coords, color_by=torch.logspace(0, 4, 30).double())
    narrow = scatter_figure(coords, color_by=torch.linspace(1, 50, 30).double())
    assert isinstance(wide.axes[0].collections[-1].norm, LogNorm)
    assert not isinstance(narrow.axes[0].collections[-1].norm, LogNorm)


def test_the_group_legend_is_beside_the_points_not_on_them():
    """loc="best" put emoji-32's 9-group legend over a corner of the map's points."""
    coords = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(200) % 9
    fig = scatter_figure(coords, color_by=labels, label_names=[f"group number {i}" for i in range(9)])
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # as savefig draws it for the app
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    figure = fig.bbox
    assert legend.x0 >= axes.x1  # right of the map
    assert legend.x1 <= figure.x1 and legend.y0 >= figure.y0 and legend.y1 <= figure.y1  # and not cut off
    assert axes.width >= 0.6 * figure.width  # the map keeps most of the figure
