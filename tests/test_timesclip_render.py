"""Torch rasteriser against the seed's matplotlib drawing."""
import pytest
import torch

from models.timesclip_render import VARIATE_COLOURS, chart_points, line_iou, render_matplotlib, \
    render_variates


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _walks(b, t, v, seed=0):
    return torch.randn(b, t, v, generator=torch.Generator().manual_seed(seed)).cumsum(1)


def test_torch_matches_matplotlib_224():
    x = _walks(2, 18, 7)
    imgs = render_variates(x, 224, 2.0)                       # [B, V, 3, 224, 224]
    assert imgs.shape == (2, 7, 3, 224, 224)
    ref = torch.stack([render_matplotlib(x[b, :, v], VARIATE_COLOURS[v], 224, 2.0)
                       for b in range(2) for v in range(7)]).view(2, 7, 3, 224, 224)
    assert line_iou(imgs, ref) > 0.95
    assert (imgs - ref).abs().mean() < 0.005


def test_torch_matches_matplotlib_small_and_long():
    x = _walks(2, 36, 3, seed=1)
    imgs = render_variates(x, 64, 1.5)
    ref = torch.stack([render_matplotlib(x[b, :, v], VARIATE_COLOURS[v], 64, 1.5)
                       for b in range(2) for v in range(3)]).view(2, 3, 3, 64, 64)
    assert line_iou(imgs, ref) > 0.9


def test_points_are_inked_in_the_variate_colour_and_background_white():
    x = _walks(1, 18, 7, seed=2)
    imgs = render_variates(x, 96, 2.0)
    px, py = chart_points(x[0].T, 96)                         # [T], [V, T]
    for v in range(7):
        c, r = int(px[9]), int(py[v, 9])
        assert torch.allclose(imgs[0, v, :, r, c], torch.tensor(VARIATE_COLOURS[v]), atol=0.05)
        assert torch.all(imgs[0, v, :, 0, :] == 1.0)          # top margin row stays white


def test_constant_series_and_buffer_reuse():
    x = torch.zeros(3, 18, 2)
    buf = torch.empty(3 * 2 * 3 * 32 * 32)
    a = render_variates(x, 32, 1.0, out=buf).clone()
    assert torch.isfinite(a).all() and (a < 1).any()          # a flat line is still drawn
    b = render_variates(_walks(3, 18, 2), 32, 1.0, out=buf)
    assert b.data_ptr() == buf.data_ptr() and not torch.equal(a, b)
