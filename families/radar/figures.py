"""Radar CLIP figures: example radar maps, the similarity matrix and
radar-time x text-token alignment heatmaps (true vs order-swapped caption).
PNG files in out_dir and/or images in TensorBoard."""

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training.evaluation import similarity_figure  # noqa: E402
from training.logger import emit_figure  # noqa: E402

VIEWS = ("range_time", "doppler_time", "azimuth_time")


def _emit(fig, name, out_dir, writer, step):
    emit_figure(fig, name, out_dir, writer, step, tag=f"radar/{name}", dpi=90, bbox_inches="tight")


def radar_maps_figure(dataset, indices):
    fig, axes = plt.subplots(len(indices), 3, figsize=(12, 2.6 * len(indices)), squeeze=False)
    for row, i in enumerate(indices):
        item = dataset[i]
        n = int(item["radar_mask"].sum())
        for col, v in enumerate(VIEWS):
            ax = axes[row, col]
            if v in item:
                ax.imshow(item[v][:, :n].numpy(), aspect="auto", origin="lower", cmap="viridis")
            ax.set_title(f"{v}" + (f": {item['caption'][:60]}" if col == 0 else ""), fontsize=8)
            ax.set_xlabel("frame")
    fig.tight_layout()
    return fig


@torch.no_grad()
def alignment_figure(model, criterion, radar, i, captions, text, tokenizer):
    """Token cosine maps [radar time, text token] of clip i with each caption;
    text: the captions' encoded tokens and masks, in the same order."""
    r, rm = radar["radar_seq"][i:i + 1], radar["radar_mask"][i:i + 1]
    if criterion.seq is not None:
        r = criterion.seq.hierarchical(r, rm)
    n = int(rm.sum())
    r = F.normalize(r[0, :n], dim=-1)  # [T', D]
    fig, axes = plt.subplots(1, len(captions), figsize=(5 * len(captions), 4), squeeze=False)
    for k, cap in enumerate(captions):
        keep = text["text_mask"][k]
        t = F.normalize(text["text_tokens"][k][keep], dim=-1)  # [L, D]
        ids = tokenizer(cap, truncation=True, max_length=model.text_encoder.max_length)["input_ids"]
        toks = [w for w, m in zip(tokenizer.convert_ids_to_tokens(ids), keep.tolist()) if m]
        ax = axes[0, k]
        ax.imshow((r @ t.t()).cpu().numpy(), aspect="auto", origin="lower", cmap="coolwarm",
                  vmin=-1, vmax=1)
        ax.set_xticks(range(len(toks)))
        ax.set_xticklabels(toks, rotation=90, fontsize=7)
        ax.set_ylabel(f"radar token (x{model.radar_encoder.downsample} frames)")
        ax.set_title(("true: " if k == 0 else "swapped: ") + cap[:50], fontsize=8)
    fig.tight_layout()
    return fig


def write_figures(model, criterion, dataset, radar, info, scores, pairs, pair_text,
                  out_dir, writer, step):
    """pairs: (clip, caption, swapped caption) of the temporal-order metric;
    pair_text: (true, swapped) caption encodings, row k for pair k."""
    n_items = len(info["captions"])
    _emit(radar_maps_figure(dataset, list(range(min(2, n_items)))), "radar_maps",
          out_dir, writer, step)
    first, pos = [], 0  # row of each clip's first caption in `scores`
    for caps in info["captions"]:
        first.append(pos)
        pos += len(caps)
    n = 32
    sim = similarity_figure(scores[first[:n]][:, :n], "radar clip", "caption (first of each clip)",
                            "text x radar similarity", cmap="magma")  # [n captions, n clips]
    _emit(sim, "similarity_matrix", out_dir, writer, step)
    seen = set()
    for k, (i, cap, swapped) in enumerate(pairs):
        if i in seen or len(seen) >= 2:
            continue
        seen.add(i)
        text = {key: torch.stack([pair_text[0][key][k], pair_text[1][key][k]])
                for key in ("text_tokens", "text_mask")}
        fig = alignment_figure(model, criterion, radar, i, [cap, swapped], text,
                               model.text_encoder.tokenizer)
        _emit(fig, f"alignment_{len(seen)}", out_dir, writer, step)
