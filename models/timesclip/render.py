"""Time series -> line-chart images, batched in torch (CPU or GPU), with the
seed's matplotlib drawing kept as the reference.

Both draw the same chart: white background, one polyline in the variate's
fixed colour, the series min-max normalised in its window (TimesCLIP draws
each variate in its own window scale), a margin of ``margin`` pixels
(default size / 28: 8 px at 224). Pixel
(r, c) has its centre at (c + 0.5, r + 0.5); point t sits at
x = margin + t * (W - 2 margin) / (T - 1), y = H - margin - v * (H - 2 margin).

The torch rasteriser computes each pixel's anti-aliased coverage
``clamp(reach - distance, 0, 1)`` (distance to the polyline, reach = width / 2
+ 0.5) only where it can be non-zero, about 4 % of the canvas at 224 px:

1. Columns. With evenly spaced points, the segments within reach of a pixel
   column follow from x alone, the same for every chart. A column at least
   reach from every knot is "straight": one segment inks it and the distance
   is the distance to its line, |y - yl| * g (yl: the line's height there,
   g = 1 / sqrt(1 + slope^2)). The other columns (joints, the line's ends)
   take the exact distance to each segment in reach.
2. Rows. For each (chart, column) entry the rows that can be inked form one
   interval: the strip |y - yl| < reach / g around the line, cut to the
   segment's bounding box grown by reach (a union over segments at joints).
3. Ragged tiles. Each entry gets ceil(rows / 4) tiles of 4 rows
   (``repeat_interleave`` over the counts); coverage and the three channel
   values are computed for all tiles at once, [3, 4, tiles], and one scatter
   into a strided view of the canvas (element [k, r, p] = pixel p + r rows
   down in channel k) writes every channel and row of a tile from its top
   pixel alone.
4. The canvas is whitened and inked a few charts at a time, so the scatter
   writes into cache rather than memory.

``dtype=torch.uint8`` gives 0..255 images (as image files and matplotlib's
own buffer hold them; a quarter of the memory to write); float [0, 1] is what
the model consumes. Both equal a brute-force distance field over every pixel
and segment (tests/test_timesclip_render.py).
"""
import io
import sys

import matplotlib.image
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# One fixed colour per variate, in data.bands order (the default bands named):
# matplotlib's tab10, then tab20's light shades, so that all 14 bands of the
# crop-yield port's files get colours of their own.
VARIATE_COLOURS = (
    (0.122, 0.467, 0.706),  # NIR     blue
    (1.000, 0.498, 0.055),  # RVI     orange
    (0.173, 0.627, 0.173),  # SWIR1   green
    (0.839, 0.153, 0.157),  # blue    red
    (0.580, 0.404, 0.741),  # EVI     purple
    (0.549, 0.337, 0.294),  # NDVI    brown
    (0.890, 0.467, 0.761),  # red     pink
    (0.498, 0.498, 0.498),  # grey
    (0.737, 0.741, 0.133),  # olive
    (0.090, 0.745, 0.812),  # cyan
    (0.682, 0.780, 0.910),  # light blue
    (1.000, 0.733, 0.471),  # light orange
    (0.596, 0.875, 0.541),  # light green
    (1.000, 0.596, 0.588),  # light red
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


def _segment(px, py, j, cx, reach, straight):
    """Segment j [C] seen from column centres cx [C], and the rows it can ink
    there, [N, C] each. Its capsule (the points within ``reach``) lies in the
    strip |y - yl| <= reach * sqrt(1 + slope^2) = reach / g around its line
    (exactly so in a ``straight`` column), and in its bounding box grown by
    reach."""
    x0, ex = px[j], px[j + 1] - px[j]                             # [C]
    y0, y1 = py[:, j], py[:, j + 1]                               # [N, C]
    slope = (y1 - y0) / ex
    yl = y0 + slope * (cx - x0)                                   # line's height at cx
    g = torch.rsqrt(1 + slope * slope)                            # vertical offset -> distance
    h = reach / g
    lo, hi = yl - h, yl + h
    if not straight:
        lo = torch.maximum(lo, torch.minimum(y0, y1) - reach)
        hi = torch.minimum(hi, torch.maximum(y0, y1) + reach)
    return dict(rx=cx - x0, ex=ex, y0=y0, ey=y1 - y0, g=g, yl=yl, lo=lo, hi=hi)


class _Columns:
    """A set of pixel columns c [C], drawn the same way for all N charts, in
    tiles of ``tile`` rows. ``straight`` columns are at least ``reach`` from
    every knot: one segment inks them and its distance is the distance to its
    line. The others (joints, the line's ends) take the exact distance to each
    segment in reach. Everything per entry (chart, column) is computed here
    once; ``draw`` expands one block of charts into tiles."""

    def __init__(self, px, py, c, first, n_seg, straight, reach, size, tile, ink, block):
        n = py.shape[0]
        cx = c.float() + 0.5
        last = first[c] + n_seg[c] - 1                            # joints: pad to n_seg.max()
        segs = [_segment(px, py, torch.minimum(first[c] + k, last), cx, reach, straight)
                for k in range(int(n_seg[c].max()))]
        lo, hi = segs[0]["lo"], segs[0]["hi"]                    # [N, C]
        for sg in segs[1:]:
            lo, hi = torch.minimum(lo, sg["lo"]), torch.maximum(hi, sg["hi"])
        r0 = torch.ceil(lo - 0.5).clamp_(0, size - 1)             # first and last pixel
        r1 = torch.floor(hi - 0.5).clamp_(max=size - 1)           # centre inside the band
        n_tile = torch.ceil((r1 - r0 + 1).clamp_(min=0) / tile).long()   # [N, C]
        # Tile k of its block starts at row k * tile + shift (k counts the block's tiles).
        before = n_tile.view(-1).cumsum(0).view(n, -1) - n_tile   # tiles before each entry
        block_first = before[torch.arange(n, device=c.device) // block * block, :1]
        shift = r0 - (before - block_first) * tile
        if straight:
            feats = [segs[0]["yl"] - 0.5, segs[0]["g"]]           # (pixel centres at row + 0.5)
        else:
            feats = []
            for sg in segs:
                inv = 1 / (sg["ex"] ** 2 + sg["ey"] ** 2)
                feats += [sg["rx"] * sg["ex"] * inv, sg["ey"] * inv, sg["rx"], sg["ex"],
                          sg["y0"] - 0.5, sg["ey"]]
        feats = [shift] + feats + list(ink.T[:, :, None])         # ink [3, N, 1] last
        self.feats = torch.stack(torch.broadcast_tensors(*feats)).view(len(feats), -1)  # [F, N*C]
        self.n_tile = n_tile.view(-1)                             # [N*C]
        chart = torch.arange(n, device=c.device)[:, None] % block  # chart within its block
        self.top = (chart * (3 * size * size) + c).view(-1)      # [N*C] its (row 0) pixel
        self.tiles_before = [0] + n_tile.sum(1).cumsum(0).tolist()   # per chart, [N + 1]
        self.c, self.straight, self.n_seg = c, straight, len(segs)

    def draw(self, a, b, reach, size, tile, white, dtype):
        """Charts a..b-1 (one block) as tiles: top pixel of each, pos [Nt], in
        the block's [b - a, 3, H, W] canvas, and its values vals [3, tile, Nt]."""
        dev = self.feats.device
        e = slice(a * len(self.c), b * len(self.c))
        nt = self.tiles_before[b] - self.tiles_before[a]
        te = torch.repeat_interleave(self.n_tile[e], output_size=nt)   # [Nt] entry of each tile
        f = self.feats[:, e].index_select(1, te)                  # [F, Nt]
        row0 = torch.arange(len(te), device=dev, dtype=torch.float32).mul_(tile).add_(f[0])
        row0 = row0.clamp_(max=size - tile)                       # [Nt] (kept inside the canvas)
        rows = torch.arange(tile, device=dev, dtype=torch.float32)[:, None]   # [tile, 1]
        if self.straight:
            yl, g = f[1], f[2]
            z = torch.addcmul(((row0 - yl) * g)[None], rows, g[None])   # [tile, Nt]
            cover = torch.rsub(z.abs_(), reach).clamp_(0, 1)
        else:
            y = rows + row0[None]                                 # [tile, Nt]
            d2 = None
            for k in range(self.n_seg):
                a0, b0, rx, ex, y0, ey = (v[None] for v in f[1 + 6 * k:7 + 6 * k])
                ry = y - y0
                u = torch.addcmul(a0, ry, b0).clamp_(0, 1)         # nearest point on the segment
                dx, dy = torch.addcmul(rx, u, -ex), torch.addcmul(ry, u, -ey)
                dk = dx.mul_(dx).addcmul_(dy, dy)
                d2 = dk if d2 is None else torch.minimum(d2, dk)
            cover = torch.rsub(d2.sqrt_(), reach).clamp_(0, 1)    # [tile, Nt]
        if dtype == torch.uint8:
            # Adding 2^23 rounds to an integer, which float32 then holds in its low
            # mantissa bits: the low byte of each float is the rounded 0..255 value,
            # read in place instead of converted.
            vals = torch.addcmul(torch.tensor(2.0 ** 23 + white, device=dev), cover[None], f[-3:, None])
            low = 0 if sys.byteorder == "little" else 3
            vals = vals.view(torch.uint8)[..., low::4]            # [3, tile, Nt]
        else:
            vals = torch.addcmul(torch.tensor(white, device=dev), cover[None], f[-3:, None])
        pos = self.top[e].index_select(0, te).add_(row0.long().mul_(size))   # [Nt]
        return pos, vals


def render_lines(series, colours, size=224, line_width=2.0, margin=None, out=None,
                 dtype=torch.float32, tile=4, block=64, cache_bytes=4 << 20):
    """series [N, T] float, colours [N, 3] in [0, 1] -> images [N, 3, size, size]
    on white: float in [0, 1], or ``dtype=torch.uint8`` in 0..255 (as image
    files hold them; a quarter of the memory to write). ``out``: a contiguous
    buffer to draw into (reusing it spares the page faults of a fresh
    allocation). Charts are expanded into tiles ``block`` at a time (bounds the
    scratch memory) and written ``cache_bytes`` of canvas at a time."""
    if dtype not in (torch.float32, torch.uint8):
        raise ValueError(f"render_lines: dtype must be torch.float32 or torch.uint8, not {dtype}")
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
    white = 255.0 if dtype == torch.uint8 else 1.0
    ink = (colours.to(dev, torch.float32) - 1) * white          # [N, 3], <= 0
    groups = [_Columns(px, py, c, first, n_seg, s, reach, size, tile, ink, block)
              for c, s in ((straight.nonzero().squeeze(1), True),
                           ((~straight & (n_seg > 0)).nonzero().squeeze(1), False)) if len(c)]
    if out is None:
        out = torch.empty(n, 3, size, size, device=dev, dtype=dtype)
    hw = size * size
    step = max(1, cache_bytes // (3 * hw * out.element_size()))
    for a in range(0, n, block):
        b = min(a + block, n)
        parts = [(g.draw(a, b, reach, size, tile, white, dtype), g.tiles_before) for g in groups]
        # A view of the canvas whose [k, r, p] is pixel p + r rows down in channel k: one
        # scatter writes every channel and row of a tile from its top pixel alone.
        canvas = out[a:b].view(-1)
        tiles = canvas.as_strided((3, tile, canvas.numel() - 2 * hw - (tile - 1) * size),
                                  (hw, size, 1))
        # Whiten and ink a few charts at a time, so the scatter hits a canvas in cache.
        for s0 in range(a, b, step):
            s1 = min(s0 + step, b)
            out[s0:s1].fill_(white)
            for (pos, vals), before in parts:
                t0, t1 = before[s0] - before[a], before[s1] - before[a]
                tiles.scatter_(2, pos[t0:t1].expand(3, tile, -1), vals[..., t0:t1])
    return out


def render_variates(x, size=224, line_width=2.0, margin=None, chunk=512, out=None,
                    dtype=torch.float32):
    """x [B, T, V] -> images [B, V, 3, size, size] (float in [0, 1] or uint8),
    variate v in colour v. ``out``: optional buffer of ``dtype`` with at least
    B*V*3*size*size elements. ``chunk`` charts per call bounds the scratch memory."""
    b, t, v = x.shape
    series = x.permute(0, 2, 1).reshape(b * v, t)                    # [B*V, T]
    colours = torch.tensor(VARIATE_COLOURS, device=x.device)[torch.arange(v, device=x.device) % len(VARIATE_COLOURS)]
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


def render_matplotlib(series, colour, size=224, line_width=2.0, margin=None, dpi=100, via_png=False,
                      raw=False):
    """The seed's drawing: one matplotlib figure per chart, rendered to an
    array (``via_png``: saved as PNG and read back, as the seed's pipeline
    does). series [T] (numpy or tensor) -> [3, size, size] float in [0, 1];
    ``raw``: Agg's own RGBA buffer as drawn, numpy [size, size, 4] uint8 (its
    cheapest output: no conversion)."""
    # Figure + Agg canvas directly: the same renderer as pyplot's Agg backend,
    # without touching the user's pyplot backend or figure registry.
    s = torch.as_tensor(np.asarray(series, np.float32)).view(1, -1)
    px, py = chart_points(s, size, margin)
    fig = Figure(figsize=(size / dpi, size / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)          # pixel rows grow downwards, like the torch canvas
    ax.axis("off")
    ax.plot(px.numpy(), py[0].numpy(), color=colour, linewidth=line_width * 72.0 / dpi,
            antialiased=True, solid_capstyle="round", solid_joinstyle="round")
    if via_png:
        f = io.BytesIO()
        fig.savefig(f, format="png", dpi=dpi)
        f.seek(0)
        img = matplotlib.image.imread(f)[..., :3].astype(np.float32)
    else:
        canvas.draw()
        img = np.asarray(canvas.buffer_rgba())
        if raw:
            return img
        img = img[..., :3].astype(np.float32) / 255.0
    return torch.from_numpy(img.copy()).permute(2, 0, 1)


def line_iou(a, b, threshold=0.3):
    """IoU of line pixels (some channel darker than white by more than
    ``threshold``) of two image batches [..., 3, H, W]."""
    ia = (1 - a).max(-3).values > threshold
    ib = (1 - b).max(-3).values > threshold
    inter = (ia & ib).sum().item()
    union = (ia | ib).sum().item()
    return inter / max(union, 1)
