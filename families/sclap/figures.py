"""sCLAP evaluation figures: the front end of one clip, DOA azimuths, the
caption x clip similarity matrix."""
import matplotlib.pyplot as plt
import numpy as np
import torch.nn.functional as F

from training.evaluation import similarity_figure
from training.logger import emit_figure


def frontend_figure(dataset):
    """Log-mel W and the three intensity channels of item 0's positive clip."""
    x = np.array(dataset.feats[0], dtype=np.float32)                    # [7, T, M]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3))
    for ax, c, title in zip(axes, (0, 4, 5, 6), ("log-mel W", "intensity x (front)",
                                                  "intensity y (left)", "intensity z (up)")):
        im = ax.imshow(x[c].T, origin="lower", aspect="auto", cmap="magma" if c == 0 else "coolwarm",
                       vmin=None if c == 0 else -1, vmax=None if c == 0 else 1)
        ax.set_title(title)
        ax.set_xlabel("frame")
        fig.colorbar(im, ax=ax)
    axes[0].set_ylabel("mel band")
    fig.suptitle(dataset.items[0]["pos"]["caption"], fontsize=9)
    return fig


def _azimuth(v):
    return np.arctan2(v[..., 1], v[..., 0])


def doa_polar_figure(true, learned, baseline=None):
    """Azimuths of the positive clips' events [n, 2, 3]: labels, head, baseline."""
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="polar")
    rings = [(true, 1.0, "o", "true"), (learned, 0.8, "x", "learned head")]
    if baseline is not None:
        rings.append((baseline, 0.6, "+", "intensity baseline"))
    for v, r, marker, label in rings:
        az = _azimuth(v.reshape(-1, 3))
        ax.scatter(az, r * np.ones(len(az)), marker=marker, label=label)
    ax.set_theta_zero_location("N")                                     # front up, left to the left
    ax.set_yticks([])
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("DOA azimuth (pos clips)")
    return fig


def make_figures(dataset, e, base, out_dir=None, writer=None, step=0):
    """e: encode_split's outputs (audio, text, doa [N, 3, ...]); base: classical DOA [N, 3, 2, 3]."""
    n = min(20, len(dataset))
    figs = {"frontend": frontend_figure(dataset),
            "doa_polar": doa_polar_figure(dataset.doa[:n, 0], e["doa"][:n, 0].numpy(),
                                          None if base is None else base[:n, 0])}
    n = min(32, len(dataset))
    sim = F.normalize(e["text"][:n, 0], dim=-1) @ F.normalize(e["audio"][:n, 0], dim=-1).T
    figs["similarity"] = similarity_figure(sim, "audio (pos clip)", "caption", "cosine similarity")
    for name, fig in figs.items():
        emit_figure(fig, f"sclap_{name}", out_dir, writer, step, tag=f"sclap/{name}", bbox_inches="tight")
