"""Torch rasteriser against the seed's matplotlib drawing and against a
brute-force distance field (every pixel to every segment)."""
import pytest
import torch

from models.timesclip.render import VARIATE_COLOURS, chart_points, line_iou, render_lines, \
    render_matplotlib, render_variates


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _walks(b, t, v, seed=0):
    return torch.randn(b, t, v, generator=torch.Generator().manual_seed(seed)).cumsum(1)


def _dense_reference(x, size, line_width):
    """The same charts drawn the slow, obvious way: each pixel's coverage from
    its distance to the nearest point of any segment. [B, V, 3, size, size]."""
    b, t, v = x.shape
    px, py = chart_points(x.permute(0, 2, 1).reshape(b * v, t).float(), size)   # [T], [N, T]
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    cx, cy = centres.view(1, 1, -1), centres.view(1, -1, 1)
    d2 = torch.full((b * v, size, size), float("inf"))
    for j in range(t - 1):
        ex, ey = px[j + 1] - px[j], (py[:, j + 1] - py[:, j]).view(-1, 1, 1)
        rx, ry = cx - px[j], cy - py[:, j].view(-1, 1, 1)
        u = ((rx * ex + ry * ey) / (ex * ex + ey * ey)).clamp(0, 1)
        d2 = torch.minimum(d2, (rx - u * ex) ** 2 + (ry - u * ey) ** 2)
    cover = (line_width / 2 + 0.5 - d2.sqrt()).clamp(0, 1)
    colours = torch.tensor(VARIATE_COLOURS)[torch.arange(v) % len(VARIATE_COLOURS)].repeat(b, 1)
    return (1 + cover[:, None] * (colours - 1)[:, :, None, None]).view(b, v, 3, size, size)


def test_torch_matches_matplotlib_224():
    x = _walks(2, 18, 7)
    imgs = render_variates(x, 224, 2.0)                       # [B, V, 3, 224, 224]
    assert imgs.shape == (2, 7, 3, 224, 224)
    ref = torch.stack([render_matplotlib(x[b, :, v], VARIATE_COLOURS[v], 224, 2.0)
                       for b in range(2) for v in range(7)]).view(2, 7, 3, 224, 224)
    assert line_iou(imgs, ref) > 0.98
    assert (imgs - ref).abs().mean() < 0.005
    raw = render_matplotlib(x[0, :, 0], VARIATE_COLOURS[0], 224, 2.0, raw=True)   # Agg's RGBA
    assert raw.shape == (224, 224, 4) and raw.dtype.name == "uint8"
    assert torch.equal(torch.from_numpy(raw[..., :3].copy()).permute(2, 0, 1).float() / 255, ref[0, 0])


def test_torch_matches_matplotlib_small_and_long():
    x = _walks(2, 36, 3, seed=1)
    imgs = render_variates(x, 64, 1.5)
    ref = torch.stack([render_matplotlib(x[b, :, v], VARIATE_COLOURS[v], 64, 1.5)
                       for b in range(2) for v in range(3)]).view(2, 3, 3, 64, 64)
    assert line_iou(imgs, ref) > 0.9


@pytest.mark.parametrize("size,t,width", [(224, 18, 2.0), (64, 18, 2.0), (32, 18, 1.0),
                                          (96, 36, 1.5), (61, 50, 3.0), (48, 2, 2.0)])
def test_ragged_tiles_equal_the_dense_distance_field(size, t, width):
    x = _walks(3, t, 7, seed=size + t)
    x[0, t // 2:, 0] += 50                                    # a cliff: one near-vertical segment
    x[1, :, 1] = 3.0                                          # a flat line
    imgs = render_variates(x, size, width)
    ref = _dense_reference(x, size, width)
    assert (imgs - ref).abs().max() < 1e-4


def test_blocks_and_cache_chunks_do_not_change_the_drawing():
    x = _walks(5, 18, 7, seed=3)                              # 35 charts
    series = x.permute(0, 2, 1).reshape(35, 18)
    colours = torch.tensor(VARIATE_COLOURS[:7]).repeat(5, 1)
    whole = render_lines(series, colours, 64, 2.0)
    for block, cache_bytes in ((8, 1), (6, 3 * 64 * 64 * 4 * 4), (35, 1 << 30)):
        assert torch.equal(render_lines(series, colours, 64, 2.0, block=block,
                                        cache_bytes=cache_bytes), whole)


def test_uint8_output_is_the_float_image_rounded():
    x = _walks(2, 18, 7, seed=4)
    f = render_variates(x, 96, 2.0)
    u = render_variates(x, 96, 2.0, dtype=torch.uint8)
    assert u.dtype == torch.uint8 and u.shape == f.shape
    assert (u.float() - 255 * f).abs().max() <= 0.5 + 1e-3
    assert torch.all(u[:, :, :, 0, :] == 255)                 # top margin row stays white
    buf = torch.empty(2 * 7 * 3 * 96 * 96, dtype=torch.uint8)
    again = render_variates(x, 96, 2.0, out=buf, dtype=torch.uint8)
    assert again.data_ptr() == buf.data_ptr() and torch.equal(again, u)


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
