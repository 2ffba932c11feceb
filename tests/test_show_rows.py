"""Image grids keep captions over their images: rows of different lengths stay column-aligned."""
import matplotlib

matplotlib.use("Agg")
import pytest
import torch

from smoothlib.viz import show_rows


def _rows():
    g = torch.Generator().manual_seed(0)
    return {"inputs": torch.rand(2, 1, 16, 16, generator=g), "walk": torch.rand(5, 1, 16, 16, generator=g)}


def test_a_short_row_goes_where_columns_puts_it_and_cells_stay_aligned():
    rows = _rows()
    fig = show_rows(rows, captions=[f"eta={e}" for e in range(5)], columns={"inputs": [0, -1]})
    axes = fig.axes
    top, bottom = axes[:5], axes[5:]
    shown = [ax.images[0].get_array() for ax in top]
    assert torch.allclose(torch.as_tensor(shown[0].data), rows["inputs"][0, 0])
    assert torch.allclose(torch.as_tensor(shown[4].data), rows["inputs"][1, 0])
    assert all(ax.images[0].get_alpha() == 0.0 for ax in top[1:4])   # empty cells: invisible placeholders
    fig.canvas.draw()
    for a, b in zip(top, bottom):   # every column has one width and centre, so each caption sits over its images
        pa, pb = a.get_position(), b.get_position()
        assert abs(pa.x0 - pb.x0) < 1e-6 and abs(pa.width - pb.width) < 1e-6
    heights = {round(ax.get_position().height, 6) for ax in top}
    assert len(heights) == 1   # empty cells keep an image's shape: the captions sit on one line


def test_bad_columns_are_refused():
    with pytest.raises(ValueError, match="2 images but columns gives 1 places"):
        show_rows(_rows(), columns={"inputs": [0]})
    with pytest.raises(ValueError, match="not there"):
        show_rows(_rows(), columns={"input": [0, 1]})


def test_long_labels_and_a_title_fit_without_a_layout_warning(recwarn):
    fig = show_rows({"input": _rows()["inputs"][:1], "smooth, guidance 4": _rows()["inputs"][1:]},
                    title="DDIM inversion, reconstructed without and with guidance")
    assert not [w for w in recwarn if "ight layout" in str(w.message)]
    assert fig._suptitle.get_text().startswith("DDIM inversion")
