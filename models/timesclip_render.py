"""Time series -> line-chart images, batched in torch (CPU or GPU), with the
seed's matplotlib drawing kept as the reference.

Both draw the same chart: white background, one polyline in the variate's
fixed colour, the series min-max normalised in its window (TimesCLIP draws
each variate in its own window scale), a margin of ``margin`` pixels
(default size / 28: 8 px at 224). Pixel
(r, c) has its centre at (c + 0.5, r + 0.5); point t sits at
x = margin + t * (W - 2 margin) / (T - 1), y = H - margin - v * (H - 2 margin).

The torch rasteriser needs no per-segment loop: with evenly spaced points the
segment under a pixel column is known (floor of its x), so each pixel only
measures its distance to that segment and its two neighbours (which covers
joints and the line's width), and the coverage is the anti-aliased
``clamp(width / 2 + 0.5 - distance, 0, 1)``.
"""
import numpy as np
import torch

# One fixed colour per variate (matplotlib's tab10), in BANDS order.
VARIATE_COLOURS = (
    (0.122, 0.467, 0.706),  # NIR     blue
    (1.000, 0.498, 0.055),  # RVI     orange
    (0.173, 0.627, 0.173),  # SWIR1   green
    (0.839, 0.153, 0.157),  # blue    red
    (0.580, 0.404, 0.741),  # EVI     purple
    (0.549, 0.337, 0.294),  # NDVI    brown
    (0.890, 0.467, 0.761),  # red     pink
)


def chart_points(series, size=224, margin=None):
    """series [N, T] -> pixel coordinates px [T], py [N, T] (float)."""
    n, t = series.shape
    margin = size / 28 if margin is None else margin
    lo = series.min(1, keepdim=True).values
    hi = series.max(1, keepdim=True).values
    v = (series - lo) / (hi - lo).clamp_min(1e-6)             # [N, T] in [0, 1]
    px = margin + torch.arange(t, device=series.device, dtype=series.dtype) * (size - 2 * margin) / (t - 1)
    py = size - margin - v * (size - 2 * margin)
    return px, py


def _seg_d2(px, py, j, cols, rows):
    """Squared distance of pixel centres to segment j (per column).
    px [T], py [N, T], j [W'] segment index per column, cols [W'] column
    centres, rows [N, Hb, W'] row centres -> [N, Hb, W']."""
    x0, x1 = px[j], px[j + 1]                                   # [W']
    y0, y1 = py[:, j].unsqueeze(1), py[:, j + 1].unsqueeze(1)   # [N, 1, W']
    ex, ey = x1 - x0, y1 - y0
    rx, ry = cols - x0, rows - y0
    u = ((rx * ex + ry * ey) / (ex * ex + ey * ey)).clamp(0, 1)
    return (rx - u * ex) ** 2 + (ry - u * ey) ** 2


def _y_range(px, py, j, cols, reach):
    """Min/max y of segment j over x in [col - reach, col + reach], [N, W']."""
    x0, x1 = px[j], px[j + 1]
    y0, y1 = py[:, j], py[:, j + 1]
    xa = torch.minimum(torch.maximum(cols - reach, x0), x1)
    xb = torch.minimum(torch.maximum(cols + reach, x0), x1)
    ya = y0 + (y1 - y0) * (xa - x0) / (x1 - x0)
    yb = y0 + (y1 - y0) * (xb - x0) / (x1 - x0)
    return torch.minimum(ya, yb), torch.maximum(ya, yb)


def render_lines(series, colours, size=224, line_width=2.0, margin=None, out=None):
    """series [N, T] float, colours [N, 3] in [0, 1] -> images [N, 3, size, size]
    in [0, 1] (white background). ``out``: a buffer to draw into (reusing it
    spares the page faults of a fresh allocation, which cost as much as the
    drawing on CPU)."""
    series = series.float()
    n, t = series.shape
    dev = series.device
    margin = size / 28 if margin is None else margin
    px, py = chart_points(series, size, margin)                 # [T], [N, T]
    reach = line_width / 2 + 0.5                                # coverage > 0 within this distance
    dx = (size - 2 * margin) / (t - 1)
    cols = torch.arange(size, device=dev, dtype=torch.float32) + 0.5
    k = ((cols - margin) / dx).floor().clamp(0, t - 2).long()  # [W] segment under each column
    # Neighbouring segments matter only for columns near a knot (joints, the
    # line's width); the same columns for every chart since x is shared.
    near = [(k - 1, (cols - px[k] < reach + 0.5) & (k > 0)),
            (k + 1, (px[k + 1] - cols < reach + 0.5) & (k < t - 2))]
    # Rows that can be inked: a band per column around the line.
    lo, hi = _y_range(px, py, k, cols, reach + 0.5)            # [N, W]
    for j, m in near:
        jl, jh = _y_range(px, py, j.clamp(0, t - 2), cols, reach + 0.5)
        lo = torch.where(m, torch.minimum(lo, jl), lo)
        hi = torch.where(m, torch.maximum(hi, jh), hi)
    band = min(size, int((hi - lo).max().item() + 2 * reach + 3))
    start = (lo - reach - 1).floor().clamp(0, size - band).long()      # [N, W]
    ridx = start.unsqueeze(1) + torch.arange(band, device=dev).view(1, band, 1)  # [N, Hb, W]
    rows = ridx.float() + 0.5
    d2 = _seg_d2(px, py, k, cols, rows)                         # [N, Hb, W]
    for j, m in near:
        c = m.nonzero().squeeze(1)
        if len(c):
            d2[:, :, c] = torch.minimum(d2[:, :, c], _seg_d2(px, py, j[c], cols[c], rows[:, :, c]))
    cover_band = (line_width / 2 + 0.5 - d2.sqrt()).clamp(0, 1)   # [N, Hb, W]
    # Only the band was computed; the rest of the canvas has no ink.
    cover = torch.zeros(n, size, size, device=dev).scatter_(1, ridx, cover_band)  # [N, H, W]
    ink = colours.to(dev, torch.float32) - 1                      # [N, 3], <= 0
    if out is None:
        out = torch.empty(n, 3, size, size, device=dev)
    # White minus ink, in one pass over the 3-channel canvas.
    return torch.addcmul(torch.ones((), device=dev), cover.unsqueeze(1), ink.view(n, 3, 1, 1), out=out)


def render_variates(x, size=224, line_width=2.0, margin=None, chunk=64, out=None):
    """x [B, T, V] -> images [B, V, 3, size, size], variate v in colour v.
    ``out``: optional buffer with at least B*V*3*size*size elements."""
    b, t, v = x.shape
    series = x.permute(0, 2, 1).reshape(b * v, t)                    # [B*V, T]
    colours = torch.tensor(VARIATE_COLOURS, device=x.device)[torch.arange(v, device=x.device) % 7]
    colours = colours.repeat(b, 1)                                   # [B*V, 3]
    n = b * v
    if out is None or out.numel() < n * 3 * size * size or out.device != x.device:
        out = torch.empty(n * 3 * size * size, device=x.device)
    imgs = out.view(-1)[: n * 3 * size * size].view(n, 3, size, size)
    for i in range(0, n, chunk):
        render_lines(series[i:i + chunk], colours[i:i + chunk], size, line_width, margin,
                     out=imgs[i:i + chunk])
    return imgs.view(b, v, 3, size, size)


def render_matplotlib(series, colour, size=224, line_width=2.0, margin=None, dpi=100, via_png=False):
    """The seed's drawing: one matplotlib figure per chart, rendered to an
    array (``via_png``: saved as PNG and read back, as the seed's pipeline
    does). series [T] (numpy or tensor) -> [3, size, size] float in [0, 1]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = torch.as_tensor(np.asarray(series, np.float32)).view(1, -1)
    px, py = chart_points(s, size, margin)
    fig = plt.figure(figsize=(size / dpi, size / dpi), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)          # pixel rows grow downwards, like the torch canvas
    ax.axis("off")
    ax.plot(px.numpy(), py[0].numpy(), color=colour, linewidth=line_width * 72.0 / dpi,
            antialiased=True, solid_capstyle="round", solid_joinstyle="round")
    if via_png:
        import io
        f = io.BytesIO()
        fig.savefig(f, format="png", dpi=dpi)
        f.seek(0)
        img = plt.imread(f)[..., :3].astype(np.float32)
    else:
        fig.canvas.draw()
        img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    plt.close(fig)
    return torch.from_numpy(img.copy()).permute(2, 0, 1)


def line_iou(a, b, threshold=0.3):
    """IoU of line pixels (some channel darker than white by more than
    ``threshold``) of two image batches [..., 3, H, W]."""
    ia = (1 - a).max(-3).values > threshold
    ib = (1 - b).max(-3).values > threshold
    inter = (ia & ib).sum().item()
    union = (ia | ib).sum().item()
    return inter / max(union, 1)
