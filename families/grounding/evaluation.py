"""Evaluation of the grounding family on a whole split.

Retrieval: every caption of the split against every image (full gallery,
LAION-CLAP convention: t2i averaged over captions, i2t by the best caption).

Entity -> object matching: for each phrase that has a box, the candidates are
ALL annotated boxes of its own image (every <bndbox> in Annotations/<id>.xml:
the objects any caption names, none added, none left out). The candidate
whose object feature is most similar to the phrase's entity feature is the
prediction; it is correct if its IoU with a gold box of the phrase's chain is
>= eval.iou_threshold (R@1 at IoU >= 0.5). `entity_object_chance` is the
expected accuracy of picking a candidate uniformly at random.
"""
import os

import matplotlib
matplotlib.use("Agg")  # figures are files and TensorBoard images, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from torchvision.ops import box_iou

from training.logger import emit_figure
from training.metrics import retrieval_metrics


def _pad(rows, width, fill=0.0):
    out = torch.full((len(rows), max(width, 1), *rows[0].shape[1:]), fill, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _image_boxes(dataset, i):
    ann = dataset.records[i]["ann"]
    scale = torch.tensor([dataset.S / ann.width, dataset.S / ann.height] * 2)
    return torch.tensor(ann.boxes, dtype=torch.float32).reshape(-1, 4) * scale   # [n, 4]


@torch.no_grad()
def encode_split(model, dataset, device, batch_size=128):
    """Image features [Ni, D], patches [Ni, P, C], per-image candidate object
    features (list of [n_i, D]) and boxes (list of [n_i, 4])."""
    img_f, patches, obj_f, boxes = [], [], [], []
    for s in range(0, len(dataset), batch_size):
        idx = list(range(s, min(s + batch_size, len(dataset))))
        image = torch.stack([dataset.get(i, 0)["image"] for i in idx]).to(device)
        bx = [_image_boxes(dataset, i) for i in idx]
        f, p = model.encode_image(image)
        o = model.encode_objects(image, p, _pad(bx, max(len(b) for b in bx)).to(device))
        img_f.append(F.normalize(f.float(), dim=-1).cpu())
        patches.append(p.float().cpu())
        obj_f += [F.normalize(o[k, :len(b)].float(), dim=-1).cpu() for k, b in enumerate(bx)]
        boxes += bx
    return torch.cat(img_f), torch.cat(patches), obj_f, boxes


@torch.no_grad()
def encode_captions(model, dataset, patches, device, batch_size=128):
    """Caption features [Nt, D], text->image [Nt], and for each caption its
    entities: (features [e, D], gold chain boxes as candidate masks)."""
    txt_f, t2i, entities = [], [], []
    pairs = dataset.pairs
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        caps, spans, golds = [], [], []
        for i, c in chunk:
            cap, ann = dataset.records[i]["captions"][c], dataset.records[i]["ann"]
            ph = [(p.start, p.end, ann.chain_boxes(p.chain)) for p in cap.phrases if ann.chain_boxes(p.chain)]
            caps.append(cap.text)
            spans.append(torch.tensor([(a, b) for a, b, _ in ph], dtype=torch.long).reshape(-1, 2))
            golds.append([g for _, _, g in ph])
        E = max(len(g) for g in golds)
        sp = _pad(spans, E).to(device)
        valid = (torch.arange(max(E, 1))[None] < torch.tensor([len(g) for g in golds])[:, None]).to(device)
        tf, ent, ent_valid, _, _ = model.encode_text(caps, sp, valid)
        img_idx = torch.tensor([i for i, _ in chunk])
        ent = model.entity_features(ent, patches[img_idx].to(device))
        txt_f.append(F.normalize(tf.float(), dim=-1).cpu())
        t2i.append(img_idx)
        ent = F.normalize(ent.float(), dim=-1).cpu()
        for k, g in enumerate(golds):
            ok = ent_valid[k, :len(g)].cpu()
            entities.append((ent[k, :len(g)], g, ok))
    return torch.cat(txt_f), torch.cat(t2i), entities


def entity_object_accuracy(entities, t2i, obj_f, boxes, iou_threshold=0.5):
    correct, chance, n = 0.0, 0.0, 0
    for (ent, golds, ok), i in zip(entities, t2i.tolist()):
        if len(golds) == 0:
            continue
        iou = box_iou(boxes[i], boxes[i])                          # [n, n] candidates x candidates
        sims = ent @ obj_f[i].t()                                  # [e, n]
        for e, g in enumerate(golds):
            hit = (iou[:, g] >= iou_threshold).any(1)              # [n] candidates that count as right
            n += 1
            chance += hit.float().mean().item()
            # a phrase whose tokens were truncated away has no feature: it counts as a miss
            correct += float(ok[e] and hit[sims[e].argmax()].item())
    return {"entity_object_acc": correct / max(n, 1), "entity_object_chance": chance / max(n, 1),
            "num_entities": n}


def similarity_matrix(txt_f, img_f, t2i, n):
    """Caption x image similarities for the first n images' first captions."""
    first = [int((t2i == i).nonzero()[0]) for i in range(min(n, len(img_f))) if (t2i == i).any()]
    sim = (txt_f[first] @ img_f[: len(first)].t()).numpy()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    im = ax.imshow(sim, cmap="viridis")
    ax.set_xlabel("image")
    ax.set_ylabel("caption (of image with the same index)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


@torch.no_grad()
def entity_heatmaps(model, dataset, patches, device, n, max_entities=3):
    """Per entity: cosine similarity of its feature to every patch's object
    feature, over the image, with the gold box drawn."""
    n = min(n, len(dataset))
    fig, axes = plt.subplots(n, max_entities + 1, figsize=(2.4 * (max_entities + 1), 2.6 * n), squeeze=False)
    g = dataset.grid
    for r in range(n):
        item = dataset.get(r, 0)
        cap = dataset.records[r]["captions"][0]
        ann = dataset.records[r]["ann"]
        img = ((item["image"].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(cap.text[:40], fontsize=6)
        p = patches[r:r + 1].to(device)                                     # [1, P, C]
        _, ent, valid, _, _ = model.encode_text([cap.text], item["entity_spans"][None].to(device),
                                                item["entity_valid"][None].to(device))
        ent = F.normalize(model.entity_features(ent, p).float(), dim=-1)[0]    # [E, D]
        pf = F.normalize(model.object_proj(p).float(), dim=-1)[0]           # [P, D]
        heat = (ent @ pf.t()).reshape(-1, g, g).cpu().numpy()
        phrases = [ph for ph in cap.phrases if ann.chain_boxes(ph.chain)]
        for e in range(max_entities):
            ax = axes[r, e + 1]
            ax.axis("off")
            if e >= len(phrases) or not valid[0, e]:
                continue
            ax.imshow(img)
            ax.imshow(heat[e], cmap="jet", alpha=0.5, extent=(0, dataset.S, dataset.S, 0))
            for b in ann.chain_boxes(phrases[e].chain):
                x0, y0, x1, y1 = (np.array(ann.boxes[b]) * dataset.S / ann.width).tolist()
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="white", lw=1.5))
            ax.set_title(phrases[e].text[:30], fontsize=6)
        axes[r, 0].axis("off")
    fig.tight_layout()
    return fig


def evaluate(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    was_training = model.training
    model.eval()
    bs = cfg["eval"]["batch_size"]
    img_f, patches, obj_f, boxes = encode_split(model, dataset, device, bs)
    txt_f, t2i, entities = encode_captions(model, dataset, patches, device, bs)
    metrics = retrieval_metrics(txt_f, img_f, t2i)
    metrics.update(entity_object_accuracy(entities, t2i, obj_f, boxes, cfg["eval"]["iou_threshold"]))
    metrics["gallery_size"] = len(dataset)
    metrics["num_captions"] = len(t2i)
    if out_dir is not None or writer is not None:
        figs = {"similarity_matrix": similarity_matrix(txt_f, img_f, t2i, cfg["eval"]["num_matrix"]),
                "entity_heatmaps": entity_heatmaps(model, dataset, patches, device, cfg["eval"]["num_heatmaps"])}
        for name, fig in figs.items():
            emit_figure(fig, name, out_dir, writer, step, tag=f"grounding/{name}")
    model.train(was_training)
    return metrics
