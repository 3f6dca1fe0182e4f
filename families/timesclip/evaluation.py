"""TimesCLIP metrics and figures.

Stage 1 (completion, on a split): ``completion_rmse`` and ``completion_mae``
in standardised units (each variate divided by its training std, so the
bands weigh alike), ``completion_rmse_pct_range``: per-variate RMSE in the
band's own units as a % of that band's range over the split's targets,
averaged over variates (the seed's "RMSE / data range"); the same RMSE of
persistence and of the training years' mean continuation; and, when both views
exist, retrieval between the chart and token embeddings (``v2l_`` / ``l2v_``).

Stage 2 (yield on a split, t/ha): ``yield_rmse``, ``yield_mae``, ``yield_r2``
and the honest baselines fitted on the training years only: the training mean
(``yield_r2_mean``), ridge regression on peak and integrated NDVI
(``yield_r2_ridge``, when NDVI is among ``data.bands``) and ridge on the whole standardised series
(``yield_r2_ridge_full``, alpha chosen on the validation years).
"""

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from data.timesclip.dataset import collate
from training.evaluation import encode_split, retrieval
from training.logger import emit_figure


def ndvi_index(bands):
    """The NDVI variate's index in ``data.bands`` (any case), or None when
    NDVI was not chosen (its metric, figure line and ridge baseline then fall
    back or are left out)."""
    lower = [b.lower() for b in bands]
    return lower.index("ndvi") if "ndvi" in lower else None


def completion_metrics(model, dataset, cfg, device, out_dir=None, writer=None, step=0):
    res = encode_split(model, dataset, collate, cfg, device, keys=("forecast", "vision", "language"))
    h, p = dataset.input_len, dataset.pred_len
    x, y, pred = dataset.x[:, :h], dataset.x[:, h:h + p], res["forecast"]   # [N, H|P, V]
    err = pred - y
    std = torch.as_tensor(dataset.table.std)                            # [V]
    raw_rmse = (err * std).pow(2).mean((0, 1)).sqrt()                   # [V] band units
    raw_y = y * std
    rng = (raw_y.amax((0, 1)) - raw_y.amin((0, 1))).clamp_min(1e-12)
    m = {"completion_rmse": err.pow(2).mean().sqrt().item(),
         "completion_mae": err.abs().mean().item(),
         "completion_rmse_pct_range": (100 * raw_rmse / rng).mean().item()}
    ndvi = ndvi_index(dataset.table.bands)
    if ndvi is not None:
        m["completion_rmse_ndvi"] = raw_rmse[ndvi].item()
    # Honest references: the last observation held (persistence) and the
    # training years' mean continuation (climatology).
    clim = torch.from_numpy(dataset.table.norm_series("train")[:, h:h + p]).mean(0)   # [P, V]
    m["completion_rmse_persistence"] = (x[:, -1:] - y).pow(2).mean().sqrt().item()
    m["completion_rmse_climatology"] = (clim - y).pow(2).mean().sqrt().item()
    if "vision" in res and "language" in res:
        # A sample's view embedding is the mean over its variates, as the
        # sample-level alignment loss sees it.
        a = F.normalize(res["vision"].mean(1), dim=-1)                  # [N, E]
        b = F.normalize(res["language"].mean(1), dim=-1)
        r = retrieval(b, a, torch.arange(len(a)), item="v", text="l")   # l2v_*, v2l_*
        m.update({k: v for k, v in r.items() if k.endswith(("R@1", "R@5", "mean_rank"))})
    if out_dir is not None or writer is not None:
        n_plot = cfg["eval"]["plot_samples"]
        v, name = (ndvi, "NDVI") if ndvi is not None else (0, dataset.table.bands[0])
        emit_figure(forecast_figure(x, y, pred, n_plot, v, name), "forecasts", out_dir, writer, step,
                    tag="val/forecasts")
    return m


def forecast_figure(x, y, pred, n_plot=4, v=0, name="variate 0"):
    """Input, truth and forecast of variate ``v`` for the first ``n_plot`` samples."""
    n = min(n_plot, len(x))
    fig = Figure(figsize=(3.2 * n, 2.6))
    axes = fig.subplots(1, n, squeeze=False)
    h = x.shape[1]
    for i, ax in enumerate(axes[0]):
        ax.plot(range(h), x[i, :, v], "k-", label="input")
        ax.plot(range(h, h + y.shape[1]), y[i, :, v], "k--", label="truth")
        ax.plot(range(h, h + y.shape[1]), pred[i, :, v], "r-", label="forecast")
        ax.set_title(f"sample {i}: {name} (std. units)", fontsize=8)
        ax.set_xlabel("10-day step", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def r2(pred, y):
    return float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def _ridge(xtr, ytr, alpha):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
    a = (xtr - mu) / sd
    w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (ytr - ytr.mean()))
    return lambda x: ((x - mu) / sd) @ w + ytr.mean()


def ndvi_features(table, split):
    """Peak and integrated (sum over composites) NDVI in band units, [N, 2]."""
    ndvi = table.d["series"][table.splits[split], :, ndvi_index(table.bands)]
    return np.stack([ndvi.max(1), ndvi.sum(1)], 1).astype(np.float64)


def baselines(table, split):
    """Predictions of the honest baselines on ``split``, fitted on train."""
    ytr = table.d["yield"][table.splits["train"]].astype(np.float64)
    n = len(table.splits[split])
    out = {"mean": np.full(n, ytr.mean())}
    if ndvi_index(table.bands) is not None:
        out["ridge"] = _ridge(ndvi_features(table, "train"), ytr, 1.0)(ndvi_features(table, split))
    full = {s: table.norm_series(s).reshape(len(table.splits[s]), -1).astype(np.float64)
            for s in ("train", "val", split)}
    yval = table.d["yield"][table.splits["val"]].astype(np.float64)
    best = min((r2(_ridge(full["train"], ytr, a)(full["val"]), yval) * -1, a)
               for a in (0.1, 1.0, 10.0, 100.0, 1000.0))[1]
    out["ridge_full"] = _ridge(full["train"], ytr, best)(full[split])
    return out


def yield_metrics(model, dataset, cfg, device, out_dir=None):
    t = dataset.table
    pred = encode_split(model, dataset, collate, cfg, device,
                        forward=lambda m, batch: {"yield": m(batch)})["yield"]
    pred = pred.numpy().astype(np.float64) * t.y_std + t.y_mean          # [N] t/ha
    y = dataset.y_raw.numpy().astype(np.float64)
    m = {"loss": float(np.mean(((pred - y) / t.y_std) ** 2)),
         "yield_rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
         "yield_mae": float(np.mean(np.abs(pred - y))),
         "yield_r2": r2(pred, y)}
    base = baselines(t, dataset.split)
    for k, p in base.items():
        m[f"yield_r2_{k}"] = r2(p, y)
        m[f"yield_rmse_{k}"] = float(np.sqrt(np.mean((p - y) ** 2)))
    if "ridge" in base:
        m["beats_ridge"] = float(m["yield_r2"] > m["yield_r2_ridge"])
    if out_dir is not None:
        emit_figure(yield_figure(y, pred, base.get("ridge"), m), "yield_scatter", out_dir)
    return m


def yield_figure(y, pred, ridge, m):
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    if ridge is not None:   # NDVI among data.bands
        ax.scatter(y, ridge, s=6, c="0.6", label=f"ridge NDVI (R2 {m['yield_r2_ridge']:.2f})")
    ax.scatter(y, pred, s=6, c="C3", label=f"TimesCLIP (R2 {m['yield_r2']:.2f})")
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true yield (t/ha)")
    ax.set_ylabel("predicted yield (t/ha)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
