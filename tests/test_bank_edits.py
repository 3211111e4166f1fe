"""Edits keep every part of a row together, copies are private, files come back as saved (tests written to kill
mutants of bank.py that the older tests let through: a remove that forgot the thumbnails, a copy that shared the
frequencies, a load that kept the file's own 'format' key in meta, stats that miscounted zero rows, a replace on
rows that share memory)."""
from __future__ import annotations

import torch

from gmem_explore import MemoryBank


def test_remove_keeps_rows_labels_freq_and_thumbnails_together(tiny_bank):
    before = tiny_bank.copy()
    tiny_bank.remove([0, 7, 19])
    kept = [i for i in range(20) if i not in (0, 7, 19)]
    assert len(tiny_bank) == 17 and tiny_bank.thumbnails.shape[0] == 17
    assert torch.equal(tiny_bank.rows, before.rows[kept]) and torch.equal(tiny_bank.freq, before.freq[kept])
    assert torch.equal(tiny_bank.labels, before.labels[kept])
    assert torch.equal(tiny_bank.thumbnails, before.thumbnails[kept])  # row k's picture is still row k's


def test_a_copy_is_private_in_every_part(tiny_bank):
    twin = tiny_bank.copy()
    twin.freq[0] = 99.0  # the documented way to change a count by hand
    twin.labels[1] = 2
    twin.thumbnails[2] = 0
    twin.replace(3, torch.ones(16))
    twin.meta["edited"] = True
    fresh = MemoryBank(*_parts_of_the_fixture())
    for name in ("rows", "freq", "labels", "thumbnails"):
        assert torch.equal(getattr(tiny_bank, name), getattr(fresh, name)), name
    assert "edited" not in tiny_bank.meta


def _parts_of_the_fixture():
    """The conftest tiny_bank, built again (same seed), to compare against."""
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(20, 16, generator=g)
    thumbs = torch.randint(0, 256, (20, 8, 8, 3), generator=g, dtype=torch.uint8)
    return rows, torch.arange(1, 21).double(), torch.arange(20) % 3, ["a", "b", "c"], thumbs


def test_load_gives_back_the_meta_that_was_saved_and_nothing_more(tmp_path, tiny_bank):
    tiny_bank.meta.update(source="test", names=["x", "y"])
    tiny_bank.save(tmp_path / "b.safetensors")
    back = MemoryBank.load(tmp_path / "b.safetensors")
    assert back.meta == {"source": "test", "names": ["x", "y"]}  # the file's format tag and label names are not meta
    assert back.label_names == ["a", "b", "c"]


def test_stats_count_zero_rows_and_their_norms():
    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]])
    s = MemoryBank(rows).stats()
    assert s["zero_rows"] == 1 and s["norm_min"] == 0.0 and abs(s["norm_mean"] - 7 / 3) < 1e-6


def test_replace_in_a_bank_whose_rows_share_memory_changes_one_row():
    rows = torch.arange(4.0)[None].expand(3, 4)  # one row of memory seen three times (stride 0)
    bank = MemoryBank(rows)
    bank.replace(1, torch.ones(4))
    assert torch.equal(bank.rows[1], torch.ones(4))
    assert torch.equal(bank.rows[0], torch.arange(4.0)) and torch.equal(bank.rows[2], torch.arange(4.0))


def test_normalize_gives_unit_rows_or_exact_zeros_and_is_idempotent():
    from gmem_explore.bank.memory import normalize

    rows = torch.tensor([[3.0, 4.0], [1e-13, 0.0], [0.0, 0.0]])
    out = normalize(rows)
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1:], torch.zeros(2, 2))  # shorter than 1e-12 counts as zero, not a short non-unit row
    assert torch.equal(normalize(out), out)


def test_negative_row_numbers_are_refused_not_read_from_the_end(tiny_bank):
    import pytest

    for call in (lambda: tiny_bank.snippets([-1]), lambda: tiny_bank.remove([-1]),
                 lambda: tiny_bank.replace(-1, torch.ones(16)), lambda: tiny_bank.label_of(-2)):
        with pytest.raises(IndexError, match="rows 0..19"):
            call()
    assert len(tiny_bank) == 20


def test_fractional_row_numbers_are_refused_not_cut(tiny_bank):
    import pytest

    with pytest.raises(ValueError, match="whole numbers"):
        tiny_bank.snippets([1.7])
    assert torch.equal(tiny_bank.snippets([2.0]), tiny_bank.snippets([2]))


def test_a_row_float16_cannot_hold_is_named_by_its_number_beyond_the_first_chunk(tmp_path):
    import pytest

    rows = torch.ones(65_537, 1)  # one more row than a chunk (bank/checks.py CHUNK), so the last is in chunk two
    rows[65_536] = 1e6  # beyond float16's 65504
    with pytest.raises(ValueError, match=r"rows \[65536\] do not fit"):
        MemoryBank(rows).save(tmp_path / "b.safetensors", dtype=torch.float16)


def test_thumbnail_values_beyond_255_are_refused_not_wrapped(tiny_bank):
    import pytest

    tile = torch.full((1, 8, 8, 3), 255, dtype=torch.int64)
    tiny_bank.add(torch.ones(1, 16), thumbnails=tile)  # 255 in a wider integer type is fine
    assert int(tiny_bank.thumbnails[-1].min()) == 255
    with pytest.raises(ValueError, match="0..255"):
        tiny_bank.add(torch.ones(1, 16), thumbnails=tile + 1)  # 256 would wrap to 0 (black) in uint8


def test_rows_too_long_for_float32_are_refused_not_turned_into_the_unconditional_zero():
    import pytest

    rows = torch.ones(3, 4, dtype=torch.float64)
    rows[1] = 1e20  # finite, but its float32 norm (2e20 squared) overflows: normalize would give zeros
    with pytest.raises(ValueError, match=r"rows \[1\] have no usable direction"):
        MemoryBank(rows).snippets([0, 1, 2])
    with pytest.raises(ValueError, match="no usable direction"):
        MemoryBank(rows[[0]]).add(rows[[1]])


def test_a_boolean_mask_selects_the_rows_it_marks(tiny_bank):
    mask = tiny_bank.labels == 1
    assert torch.equal(tiny_bank.snippets(mask), tiny_bank.snippets(mask.nonzero().flatten()))
    tiny_bank.remove(mask)
    assert len(tiny_bank) == 13 and not bool((tiny_bank.labels == 1).any())
