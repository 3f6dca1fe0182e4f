"""Evaluation of the grounding family on a whole split.

Retrieval: every caption of the split against every image (full gallery,
LAION-CLAP convention: t2i averaged over captions, i2t by the best caption).

Entity -> object matching: for each phrase that has a box, the candidates are
ALL annotated boxes of its own image (every non-empty <bndbox> in Annotations/<id>.xml:
the objects any caption names, none added, none left out). The candidate
whose object feature is most similar to the phrase's entity feature is the
prediction; it is correct if its IoU with a gold box of the phrase's chain is
>= eval.iou_threshold (R@1 at IoU >= 0.5). `entity_object_chance` is the
expected accuracy of picking a candidate uniformly at random.

Held-out phrasing (issue 13): every text-side metric again, keys prefixed
``heldout_``, on captions of the frozen held-out grammar
(data/grounding/heldout.py) written for the same images from the
generator's ``scene_objects.json``; the images' encodings are shared. A data
folder without that file (real data, data generated before issue 13) gets
no heldout_ keys, and the log says so once.
"""
import copy
import os

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from torchvision.ops import box_iou

from data.grounding.format import parse_caption
from data.grounding.heldout import SCENE_OBJECTS, heldout_captions, load_scenes
from data.grounding.views import (CaptionEntities, ImageBoxes, collate_caption_entities,
                                  collate_image_boxes, image_boxes)
from training.evaluation import encode_split, eval_mode, retrieval, similarity_figure
from training.logger import emit_figure
from training.precision import autocast as make_autocast


def _encode_images(model, batch):
    image_features, patches = model.encode_image(batch["image"])
    return {"image_features": image_features,                               # [B, D]
            "patches": patches,                                             # [B, P, C]
            # [B, n, D]; slots past an image's n_i boxes are padding, never read
            "object_features": model.encode_objects(batch["image"], patches, batch["boxes"])}


def _caption_encoder(patches):
    """Caption forward; its entities attend to their own image's patches [Ni, P, C]."""
    def forward(model, batch):
        text_features, ent, ok, _, _ = model.encode_text(batch["caption"], batch["entity_spans"],
                                                         batch["entity_valid"])
        p = patches[batch["image_index"].cpu()].to(ent.device)              # [B, P, C]
        return {"text_features": text_features,                             # [B, D]
                "entity_features": model.entity_features(ent, p),           # [B, E, D]
                "entity_ok": ok,                                            # [B, E] span kept its tokens
                "image_index": batch["image_index"]}
    return forward


def entity_object_accuracy(ent, ent_ok, golds, t2i, obj, boxes, iou_threshold=0.5):
    """ent [Nt, E, D] and obj [Ni, n, D] L2-normalised; ent_ok [Nt, E] bool;
    golds[t][e] the gold box indices of caption t's entity e; t2i [Nt] the
    image of each caption; boxes[i] [n_i, 4] the candidates of image i."""
    correct, chance, n = 0.0, 0.0, 0
    for t, (g_t, i) in enumerate(zip(golds, t2i.tolist())):
        if not g_t:
            continue
        k = len(boxes[i])
        iou = box_iou(boxes[i], boxes[i])                                  # [k, k] candidates x candidates
        sims = ent[t, :len(g_t)] @ obj[i, :k].t()                          # [e, k]
        for e, g in enumerate(g_t):
            hit = (iou[:, g] >= iou_threshold).any(1)                      # [k] candidates that count as right
            n += 1
            chance += hit.float().mean().item()
            # a phrase whose tokens were truncated away has no feature: it counts as a miss
            correct += float(ent_ok[t, e] and hit[sims[e].argmax()].item())
    return {"entity_object_acc": correct / max(n, 1), "entity_object_chance": chance / max(n, 1),
            "num_entities": n}


def first_caption_block(txt_f, img_f, t2i, n):
    """[m, m] similarities of the first m <= n images' first captions to those images."""
    first = [int((t2i == i).nonzero()[0]) for i in range(min(n, len(img_f))) if (t2i == i).any()]
    return txt_f[first] @ img_f[: len(first)].t()


def entity_heatmaps(model, dataset, patches, cfg, device, n, max_entities=3):
    """Per entity: cosine similarity of its feature to every patch's object
    feature, over the image, with the gold box drawn."""
    n = min(n, len(dataset))
    fig, axes = plt.subplots(n, max_entities + 1, figsize=(2.4 * (max_entities + 1), 2.6 * n), squeeze=False)
    gh, gw = model.patch_grid   # the tower's grid (a pretrained one's differs from the data's)
    autocast = make_autocast(cfg["precision"], device, cfg.get("attention", "auto"))
    for r in range(n):
        item = dataset.get(r, 0)
        cap = dataset.records[r]["captions"][0]
        ann = dataset.records[r]["ann"]
        boxes = image_boxes(dataset, r)                                     # [n, 4] in S x S
        img = ((item["image"].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(cap.text[:40], fontsize=6)
        with eval_mode(model), autocast():
            p = patches[r:r + 1].to(device)                                 # [1, P, C]
            _, ent, valid, _, _ = model.encode_text([cap.text], item["entity_spans"][None].to(device),
                                                    item["entity_valid"][None].to(device))
            ent = F.normalize(model.entity_features(ent, p).float(), dim=-1)[0]    # [E, D]
            pf = F.normalize(model.object_proj(p).float(), dim=-1)[0]       # [P, D]
        heat = (ent @ pf.t()).reshape(-1, gh, gw).cpu().numpy()
        phrases = [ph for ph in cap.phrases if ann.chain_boxes(ph.chain)]
        for e in range(max_entities):
            ax = axes[r, e + 1]
            ax.axis("off")
            if e >= min(len(phrases), valid.shape[1]) or not valid[0, e]:
                continue
            ax.imshow(img)
            ax.imshow(heat[e], cmap="jet", alpha=0.5, extent=(0, dataset.S, dataset.S, 0))
            for b in ann.chain_boxes(phrases[e].chain):
                x0, y0, x1, y1 = boxes[b].tolist()  # x and y scale apart: photographs are not square
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="white", lw=1.5))
            ax.set_title(phrases[e].text[:30], fontsize=6)
        axes[r, 0].axis("off")
    fig.tight_layout()
    return fig


_told = set()   # data folders whose missing scene objects the log has mentioned


def heldout_dataset(dataset):
    """A shallow copy of ``dataset`` whose captions are the held-out grammar's
    (same images, boxes and order), or None when its folder has no scene objects."""
    scenes = load_scenes(dataset.root)
    if scenes is None:
        if dataset.root not in _told:
            _told.add(dataset.root)
            print(f"grounding: {os.path.join(dataset.root, SCENE_OBJECTS)} not found (real data, or data "
                  f"generated before issue 13): no heldout_ metrics")
        return None
    held = copy.copy(dataset)
    held.records = []
    for rec in dataset.records:
        where = f"{os.path.join(dataset.root, SCENE_OBJECTS)} image {rec['id']}"
        if rec["id"] not in scenes:
            raise ValueError(f"{where}: missing (the file does not describe this split's images)")
        scene = scenes[rec["id"]]
        boxed = {c for cs in rec["ann"].box_chains for c in cs}
        if not {o["chain"] for o in scene["objects"]} <= boxed:
            raise ValueError(f"{where}: object chains {[o['chain'] for o in scene['objects']]} are not the "
                             f"boxes of Annotations/{rec['id']}.xml")
        lines = heldout_captions(rec["id"], scene)
        held.records.append(dict(rec, captions=[parse_caption(ln, f"{where} held-out caption {k}")
                                                for k, ln in enumerate(lines)]))
    held.pairs = [(i, c) for i, r in enumerate(held.records) for c in range(len(r["captions"]))]
    return held


def text_metrics(model, dataset, im, cfg, device):
    """Every metric that reads the captions: retrieval both ways and entity -> object,
    against the split's encoded images ``im``."""
    norm = lambda x: F.normalize(x, dim=-1)
    captions = CaptionEntities(dataset)
    cap = encode_split(model, captions, collate_caption_entities, cfg, device,
                       forward=_caption_encoder(im["patches"]))
    img_f, txt_f, t2i = norm(im["image_features"]), norm(cap["text_features"]), cap["image_index"]
    metrics = retrieval(txt_f, img_f, t2i, item="i")
    boxes = [image_boxes(dataset, i) for i in range(len(dataset))]
    metrics.update(entity_object_accuracy(norm(cap["entity_features"]), cap["entity_ok"], captions.golds(),
                                          t2i, norm(im["object_features"]), boxes, cfg["eval"]["iou_threshold"]))
    metrics["num_captions"] = len(t2i)
    return metrics, txt_f, img_f, t2i


def evaluate(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    device = torch.device(device)
    images = ImageBoxes(dataset)
    im = encode_split(model, images, collate_image_boxes, cfg, device, forward=_encode_images)
    metrics, txt_f, img_f, t2i = text_metrics(model, dataset, im, cfg, device)
    metrics["gallery_size"] = len(dataset)
    held = heldout_dataset(dataset)
    if held is not None:
        metrics.update({f"heldout_{k}": v for k, v in text_metrics(model, held, im, cfg, device)[0].items()})
    if out_dir is not None or writer is not None:
        block = first_caption_block(txt_f, img_f, t2i, cfg["eval"]["num_matrix"])
        figs = {"similarity_matrix": similarity_figure(block, "image", "caption (of image with the same index)"),
                "entity_heatmaps": entity_heatmaps(model, dataset, im["patches"], cfg, device,
                                                   cfg["eval"]["num_heatmaps"])}
        for name, fig in figs.items():
            emit_figure(fig, name, out_dir, writer, step, tag=f"grounding/{name}")
    return metrics
