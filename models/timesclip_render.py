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


def _column_segments(px, cols, reach):
    """Per pixel column: the first segment whose x-range comes within ``reach``
    of the column's centre, and how many do. px [T], cols [W] -> [W], [W]."""
    first = torch.searchsorted(px[1:].contiguous(), cols - reach, right=True)
    end = torch.searchsorted(px[:-1].contiguous(), cols + reach)
    return first, end - first


def _segment(px, py, j, cx, reach):
    """Segment j [C] seen from column centres cx [C]: the rows it can ink, [N, C]
    each. Its capsule (the points within ``reach``) lies in the strip |y - yl|
    <= reach * sqrt(1 + slope^2) around its line, and in its bounding box grown
    by reach."""
    x0, ex = px[j], px[j + 1] - px[j]                             # [C]
    y0, y1 = py[:, j], py[:, j + 1]                               # [N, C]
    slope = (y1 - y0) / ex
    yl = y0 + slope * (cx - x0)                                   # line's height at cx
    h = reach * torch.sqrt(1 + slope * slope)
    lo = torch.maximum(yl - h, torch.minimum(y0, y1) - reach)
    hi = torch.minimum(yl + h, torch.maximum(y0, y1) + reach)
    return dict(rx=cx - x0, ex=ex, y0=y0, ey=y1 - y0, slope=slope, yl=yl, lo=lo, hi=hi)


class _Columns:
    """A set of pixel columns c [C] drawn the same way, for all N charts:
    ``straight`` columns are at least ``reach`` from every knot, so one segment
    inks them and its distance is the distance to its line; the others (joints,
    the line's ends) take the exact distance to each of their n_seg segments.
    Per entry (chart, column) [N, C]: its first inked row r0, tiles n_tile, and
    the per-tile features drawing needs."""

    def __init__(self, px, py, c, first, n_seg, straight, reach, size, tile):
        n = py.shape[0]
        cx = c.float() + 0.5
        last = first[c] + n_seg[c] - 1                            # joints: pad to n_seg.max()
        segs = [_segment(px, py, torch.minimum(first[c] + k, last), cx, reach)
                for k in range(int(n_seg[c].max()))]
        lo, hi = segs[0]["lo"], segs[0]["hi"]                    # [N, C]
        for sg in segs[1:]:
            lo, hi = torch.minimum(lo, sg["lo"]), torch.maximum(hi, sg["hi"])
        self.r0 = torch.ceil(lo - 0.5).clamp_(0, size - 1)        # first and last pixel
        r1 = torch.floor(hi - 0.5).clamp_(max=size - 1)           # centre inside the band
        self.n_tile = torch.ceil((r1 - self.r0 + 1).clamp_(min=0) / tile).long()   # [N, C]
        if straight:
            g = torch.rsqrt(1 + segs[0]["slope"] ** 2)            # vertical offset -> distance
            self.feats = [segs[0]["yl"], g]
        else:
            self.feats = []
            for sg in segs:
                inv = 1 / (sg["ex"] ** 2 + sg["ey"] ** 2)
                self.feats += [(sg["rx"] * sg["ex"] * inv).expand(n, -1), sg["ey"] * inv,
                               sg["rx"].expand(n, -1), sg["ex"].expand(n, -1), sg["y0"], sg["ey"]]
        self.c, self.straight, self.n_seg = c, straight, len(segs)

    def draw(self, a, b, ink, white, reach, size, tile, dtype):
        """Ink of charts a..b-1, in tiles of ``tile`` rows: top pixel of each tile
        pos [Nt] in their [b - a, 3, H, W] canvas, its values vals [3, tile, Nt] in
        ``dtype``, and where each chart's tiles start ([b - a + 1] list)."""
        dev = ink.device
        n_tile = self.n_tile[a:b].reshape(-1)                     # [M] entries of this block
        te = torch.repeat_interleave(n_tile)                      # [Nt] entry of each tile
        # Tile k of an entry starts k * tile rows below r0 (kept inside the canvas).
        shift = self.r0[a:b].reshape(-1) - (n_tile.cumsum(0) - n_tile) * tile
        feats = [shift] + [f[a:b].reshape(-1) for f in self.feats]
        feats += [ink[a:b, k:k + 1].expand(-1, len(self.c)).reshape(-1) for k in range(3)]
        f = torch.stack(feats).index_select(1, te)                # [F, Nt]
        row0 = torch.arange(len(te), device=dev, dtype=torch.float32).mul_(tile).add_(f[0])
        row0 = row0.clamp_(max=size - tile)                       # [Nt]
        rows = torch.arange(tile, device=dev, dtype=torch.float32)[:, None]   # [tile, 1]
        if self.straight:
            yl, g = f[1], f[2]
            z = torch.addcmul(((row0 + 0.5 - yl) * g)[None], rows, g[None])  # [tile, Nt]
            cover = z.abs_().neg_().add_(reach).clamp_(0, 1)
        else:
            y = rows + (row0 + 0.5)[None]                         # [tile, Nt] pixel centres
            d2 = None
            for k in range(self.n_seg):
                a0, b0, rx, ex, y0, ey = (v[None] for v in f[1 + 6 * k:7 + 6 * k])
                ry = y - y0
                u = torch.addcmul(a0, ry, b0).clamp_(0, 1)         # nearest point on the segment
                dx, dy = torch.addcmul(rx, u, -ex), torch.addcmul(ry, u, -ey)
                dk = dx.mul_(dx).addcmul_(dy, dy)
                d2 = dk if d2 is None else torch.minimum(d2, dk)
            cover = d2.sqrt_().neg_().add_(reach).clamp_(0, 1)    # [tile, Nt]
        vals = torch.addcmul(torch.tensor(white, device=dev), cover[None], f[-3:, None])  # [3, tile, Nt]
        if dtype == torch.uint8:                          # +0.5 then truncation: rounding
            vals = vals.add_(0.5).to(torch.int32).to(torch.uint8)
        c = torch.arange(b - a, device=dev)[:, None] * (3 * size * size) + self.c    # [b - a, C]
        pos = c.view(-1).index_select(0, te).add_(row0.long() * size)    # [Nt] top pixel of each tile
        starts = torch.cat([n_tile.new_zeros(1), self.n_tile[a:b].sum(1).cumsum(0)])  # [b - a + 1]
        return pos, vals, starts.tolist()


def render_lines(series, colours, size=224, line_width=2.0, margin=None, out=None,
                 dtype=torch.float32, tile=4, block=64, cache_bytes=1 << 19):
    """series [N, T] float, colours [N, 3] in [0, 1] -> images [N, 3, size, size]
    on white: float in [0, 1], or ``dtype=torch.uint8`` in 0..255 (as image
    files hold them; a quarter of the memory to write). ``out``: a contiguous
    buffer to draw into (reusing it spares the page faults of a fresh
    allocation). Charts are computed ``block`` at a time (bounds the scratch
    memory) and written ``cache_bytes`` of canvas at a time."""
    series = series.float()
    n, t = series.shape
    dev = series.device
    margin = size / 28 if margin is None else margin
    px, py = chart_points(series, size, margin)                 # [T], [N, T]
    reach = line_width / 2 + 0.5                                # coverage > 0 within this distance
    tile = min(tile, size)
    cols = torch.arange(size, device=dev, dtype=torch.float32) + 0.5
    first, n_seg = _column_segments(px, cols, reach)            # [W], [W]
    j = first.clamp(max=t - 2)
    straight = (n_seg == 1) & (cols >= px[j] + reach) & (cols <= px[j + 1] - reach)
    groups = [_Columns(px, py, c, first, n_seg, s, reach, size, tile)
              for c, s in ((straight.nonzero().squeeze(1), True),
                           ((~straight & (n_seg > 0)).nonzero().squeeze(1), False)) if len(c)]
    white = 255.0 if dtype == torch.uint8 else 1.0
    ink = (colours.to(dev, torch.float32) - 1) * white          # [N, 3], <= 0
    if out is None:
        out = torch.empty(n, 3, size, size, device=dev, dtype=dtype)
    hw = size * size
    step = max(1, cache_bytes // (3 * hw * out.element_size()))
    for a in range(0, n, block):
        b = min(a + block, n)
        parts = [g.draw(a, b, ink, white, reach, size, tile, dtype) for g in groups]
        # A view of the canvas whose [k, r, p] is pixel p + r rows down in channel k: one
        # scatter writes every channel and row of a tile from its top pixel alone.
        canvas = out[a:b].view(-1)
        tiles = canvas.as_strided((3, tile, canvas.numel() - 2 * hw - (tile - 1) * size),
                                  (hw, size, 1))
        # Whiten and ink a few charts at a time, so the scatter hits a canvas in cache.
        for i in range(0, b - a, step):
            out[a + i:a + i + step].fill_(white)
            for pos, vals, starts in parts:
                t0, t1 = starts[i], starts[min(i + step, b - a)]
                tiles.scatter_(2, pos[t0:t1].expand(3, tile, -1), vals[..., t0:t1])
    return out


def render_variates(x, size=224, line_width=2.0, margin=None, chunk=512, out=None,
                    dtype=torch.float32):
    """x [B, T, V] -> images [B, V, 3, size, size] (float in [0, 1] or uint8),
    variate v in colour v. ``out``: optional buffer of ``dtype`` with at least
    B*V*3*size*size elements. ``chunk`` charts per call bounds the scratch memory."""
    b, t, v = x.shape
    series = x.permute(0, 2, 1).reshape(b * v, t)                    # [B*V, T]
    colours = torch.tensor(VARIATE_COLOURS, device=x.device)[torch.arange(v, device=x.device) % 7]
    colours = colours.repeat(b, 1)                                   # [B*V, 3]
    n = b * v
    if (out is None or out.numel() < n * 3 * size * size or out.device != x.device
            or out.dtype != dtype):
        out = torch.empty(n * 3 * size * size, device=x.device, dtype=dtype)
    imgs = out.view(-1)[: n * 3 * size * size].view(n, 3, size, size)
    for i in range(0, n, chunk):
        render_lines(series[i:i + chunk], colours[i:i + chunk], size, line_width, margin,
                     out=imgs[i:i + chunk], dtype=dtype)
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
