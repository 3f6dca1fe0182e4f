"""Evaluation helpers every family shares: encode a split, retrieve, draw.

- ``encode_split``: a model's forward over a whole split, in order, under the
  run's precision, in eval mode (every module's flag restored afterwards).
- ``retrieval`` / ``retrieval_scores``: full-gallery retrieval metrics
  (``training.metrics``) with the family's direction names, e.g. ``t2r_R@10``
  and ``r2t_R@10`` for ``item="r"``.
- ``similarity_figure``: the caption x item similarity heat map.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from training.data import to_device  # noqa: E402
from training.metrics import retrieval_from_scores, retrieval_metrics  # noqa: E402
from training.precision import autocast as make_autocast  # noqa: E402


def pad_cat(chunks):
    """Concatenate [n_i, L_i, ...] chunks along 0, zero-padding dim 1 to the
    longest (sequence features of batches with different lengths)."""
    if chunks[0].dim() < 2 or len({c.shape[1] for c in chunks}) == 1:
        return torch.cat(chunks)
    L = max(c.shape[1] for c in chunks)
    return torch.cat([F.pad(c, [0, 0] * (c.dim() - 2) + [0, L - c.shape[1]]) for c in chunks])


class eval_mode:
    """``with eval_mode(model):`` eval mode and no grad; every module's own
    train/eval flag is restored afterwards (frozen towers stay in eval)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.grad = torch.is_grad_enabled()
        self.model.eval()
        torch.set_grad_enabled(False)
        return self.model

    def __exit__(self, *exc):
        for m, training in self.modes:
            m.training = training
        torch.set_grad_enabled(self.grad)


def encode_split(model, dataset, collate, cfg, device, keys=None, forward=None,
                 batch_size=None, collect=()):
    """Run ``forward(model, batch)`` (default ``model(batch)``) over ``dataset``
    in order and return ``{key: [N, ...] CPU tensor}`` for the output keys in
    ``keys`` (all tensor outputs when None; floats as float32, bool masks kept)
    plus, for each name in ``collect``, the batch's field as a flat list."""
    forward = forward or (lambda m, b: m(b))
    bs = batch_size or (cfg.get("eval") or {}).get("batch_size") or cfg.get("batch_size") or 64
    autocast = make_autocast(cfg["precision"], device, cfg.get("attention", "auto"))
    out, extra = {}, {name: [] for name in collect}
    with eval_mode(model):
        # its own generator: iterating a DataLoader draws a seed from the global
        # RNG otherwise, and evaluation must not shift the training stream
        for batch in DataLoader(dataset, batch_size=int(bs), shuffle=False, collate_fn=collate,
                                num_workers=0, generator=torch.Generator()):
            for name in collect:
                v = batch[name]
                extra[name] += v.tolist() if torch.is_tensor(v) else list(v)
            batch = to_device(batch, device)
            with autocast():
                res = forward(model, batch)
            for k, v in res.items():
                if torch.is_tensor(v) and (keys is None or k in keys):
                    out.setdefault(k, []).append(
                        (v if v.dtype == torch.bool or not v.is_floating_point() else v.float()).cpu())
    return {**{k: pad_cat(v) for k, v in out.items()}, **extra}


def _rename(metrics, item, text="t"):
    return {k.replace("t2i_", f"{text}2{item}_").replace("i2t_", f"{item}2{text}_"): v
            for k, v in metrics.items()}


def retrieval(text_emb, item_emb, text_to_item, item, text="t", chunk_size=1024):
    """Dot-product retrieval (L2-normalised embeddings) with direction names:
    ``item="a"`` gives ``t2a_R@1``, ``a2t_mAP@10``, ..."""
    t2i = torch.as_tensor(text_to_item, dtype=torch.long)
    return _rename(retrieval_metrics(text_emb, item_emb, t2i, chunk_size), item, text)


def retrieval_scores(scores, text_to_item, item, text="t", chunk_size=1024):
    """The same from a [Nt, Ni] score matrix (similarities that are not a dot
    product)."""
    t2i = torch.as_tensor(text_to_item, dtype=torch.long)
    return _rename(retrieval_from_scores(scores, t2i, chunk_size), item, text)


def similarity_figure(sim, xlabel, ylabel, title="similarity", cmap="viridis"):
    """Heat map of a [n captions, n items] similarity block (row i's caption
    describes item i, so a good model lights up the diagonal)."""
    sim = sim.float().cpu().numpy() if torch.is_tensor(sim) else sim
    fig, ax = plt.subplots(figsize=(5.5, 5))
    im = ax.imshow(sim, cmap=cmap)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
