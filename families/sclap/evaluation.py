"""sCLAP evaluation on a whole split.

Retrieval both ways over the positive clips (gallery = one clip per item, one
positive caption each); temporal / spatial discrimination: the share of items
whose positive caption is closer to the positive clip than to the neg_t /
neg_s clip (and, *_text, the positive clip closer to its caption than to the
neg_t / neg_s caption); DOA error (learned head and the classical intensity
vector baseline, on the same clips); modality-classifier accuracy on held-out
embeddings plus a fresh logistic probe; zero-shot direction classification of
single-event clips with "The sound is coming from the {dir}.".
"""
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from data.sclap.dataset import VARIANTS, collate, load_foa
from models.sclap.classical_doa import angular_error_deg, estimate_two_doas
from training.data import to_device
from training.logger import emit_figure
from training.metrics import retrieval_metrics


@torch.no_grad()
def embed_split(model, dataset, cfg, device):
    keys = ("audio", "text", "doa", "mod_audio", "mod_text")
    out = {k: [] for k in keys}
    bs = cfg["eval"]["batch_size"]
    for i in range(0, len(dataset), bs):
        batch = to_device(collate([dataset[j] for j in range(i, min(i + bs, len(dataset)))]), device)
        f = model(batch)
        for k in keys:
            if k in f:
                out[k].append(f[k].float().cpu())
    return {k: torch.cat(v) for k, v in out.items() if v}


def logistic_probe_acc(audio, text, steps=200):
    """Modality probe trained on the first half of the items, tested on the second. [N, D] each."""
    n = audio.shape[0] // 2
    x_tr, x_te = torch.cat([audio[:n], text[:n]]), torch.cat([audio[n:], text[n:]])
    y_tr = torch.cat([torch.zeros(n), torch.ones(n)])
    y_te = torch.cat([torch.zeros(len(audio) - n), torch.ones(len(text) - n)])
    lin = torch.nn.Linear(x_tr.shape[1], 1)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(lin(x_tr).squeeze(-1), y_tr) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    return float(((lin(x_te).squeeze(-1) > 0).float() == y_te).float().mean())


def classical_doa(dataset, cfg):
    """Intensity-vector baseline on every clip of the split, from the WAVs. -> [N, 3, 2, 3]."""
    sr = cfg["data"]["sample_rate"]
    n = int(sr * cfg["data"]["clip_seconds"])
    est = [estimate_two_doas(load_foa(os.path.join(dataset.root, it[v]["file_name"]), sr, n), sr)
           for it in dataset.items for v in VARIANTS]
    return np.stack(est).reshape(len(dataset.items), 3, 2, 3)


@torch.no_grad()
def zeroshot_direction(model, dataset, cfg, device):
    ec = cfg["eval"]
    prompts = [ec["zeroshot_prompt"].format(dir=d) for d in ec["directions"]]
    text = F.normalize(model.encode_text(prompts).float(), dim=-1)              # [8, D]
    feats = torch.from_numpy(np.array(dataset.single_feats, dtype=np.float32))
    audio = torch.cat([model.encode_audio(feats[i:i + 64].to(device))["audio"].float()
                       for i in range(0, len(feats), 64)])
    pred = (F.normalize(audio, dim=-1) @ text.T).argmax(1).cpu().numpy()
    return float((pred == dataset.single_sector).mean())


def evaluate_sclap(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    was_training = model.training
    model.eval()
    e = embed_split(model, dataset, cfg, device)
    audio, text = F.normalize(e["audio"], dim=-1), F.normalize(e["text"], dim=-1)  # [N, 3, D]
    N = audio.shape[0]
    m = retrieval_metrics(text[:, 0], audio[:, 0], torch.arange(N))
    metrics = {k.replace("t2i_", "t2a_").replace("i2t_", "a2t_"): v for k, v in m.items()}
    metrics["gallery_size"] = N
    sim_t = torch.einsum("nd,nkd->nk", text[:, 0], audio)       # [N, 3] pos caption vs 3 clips
    sim_a = torch.einsum("nd,nkd->nk", audio[:, 0], text)       # [N, 3] pos clip vs 3 captions
    metrics["temporal_acc"] = float((sim_t[:, 0] > sim_t[:, 1]).float().mean())
    metrics["spatial_acc"] = float((sim_t[:, 0] > sim_t[:, 2]).float().mean())
    metrics["temporal_acc_text"] = float((sim_a[:, 0] > sim_a[:, 1]).float().mean())
    metrics["spatial_acc_text"] = float((sim_a[:, 0] > sim_a[:, 2]).float().mean())
    metrics["threeway_acc"] = float((sim_t.argmax(1) == 0).float().mean())

    target = dataset.doa.reshape(-1, 2, 3)
    err = angular_error_deg(e["doa"].numpy().reshape(-1, 2, 3), target)
    metrics["doa_error_deg"] = float(err.mean())
    if getattr(dataset, "classical_doa", None) is None:  # not learned: once per dataset
        dataset.classical_doa = classical_doa(dataset, cfg)
    base = dataset.classical_doa
    metrics["doa_error_deg_baseline"] = float(angular_error_deg(base.reshape(-1, 2, 3), target).mean())

    if "mod_audio" in e:
        logits = torch.cat([e["mod_audio"].flatten(), e["mod_text"].flatten()])
        labels = torch.cat([torch.zeros(e["mod_audio"].numel()), torch.ones(e["mod_text"].numel())])
        metrics["modality_acc"] = float(((logits > 0).float() == labels).float().mean())
    else:
        metrics["modality_acc"] = float("nan")  # no classifier in this model: see modality_probe_acc
    metrics["modality_probe_acc"] = logistic_probe_acc(audio.flatten(0, 1), text.flatten(0, 1))

    if dataset.single_feats is not None:
        metrics["zeroshot_direction_acc"] = zeroshot_direction(model, dataset, cfg, device)

    if (out_dir is not None or writer is not None) and cfg["eval"]["figures"]:
        make_figures(dataset, e, base, out_dir, writer, step)
    model.train(was_training)
    return metrics


def make_figures(dataset, e, base, out_dir=None, writer=None, step=0):
    """Front-end panels of one clip, DOA polar plot, text-audio similarity matrix."""
    figs = {}
    x = np.array(dataset.feats[0], dtype=np.float32)                    # [7, T, M] of item 0, pos
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
    figs["frontend"] = fig

    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="polar")
    n = min(20, len(dataset))
    az = lambda v: np.arctan2(v[..., 1], v[..., 0])                   # noqa: E731
    t, p = dataset.doa[:n, 0].reshape(-1, 3), e["doa"][:n, 0].numpy().reshape(-1, 3)
    ax.scatter(az(t), np.ones(len(t)), marker="o", label="true")
    ax.scatter(az(p), 0.8 * np.ones(len(p)), marker="x", label="learned head")
    if base is not None:
        ax.scatter(az(base[:n, 0].reshape(-1, 3)), 0.6 * np.ones(2 * n), marker="+", label="intensity baseline")
    ax.set_theta_zero_location("N")                                     # front up, left to the left
    ax.set_yticks([])
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("DOA azimuth (pos clips)")
    figs["doa_polar"] = fig

    n = min(32, len(dataset))
    sim = (F.normalize(e["text"][:n, 0], dim=-1) @ F.normalize(e["audio"][:n, 0], dim=-1).T).numpy()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    im = ax.imshow(sim, cmap="viridis")
    ax.set_xlabel("audio (pos clip)")
    ax.set_ylabel("caption")
    ax.set_title("cosine similarity")
    fig.colorbar(im, ax=ax)
    figs["similarity"] = fig

    for name, fig in figs.items():
        emit_figure(fig, f"sclap_{name}", out_dir, writer, step, tag=f"sclap/{name}", bbox_inches="tight")
