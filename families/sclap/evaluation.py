"""sCLAP evaluation on a whole split.

Retrieval both ways over the positive clips (gallery = one clip per item,
every positive caption a query: 5 an item on stClotho, LAION-CLAP's
convention); temporal / spatial discrimination: the share of (item, caption)
pairs whose positive caption is closer to the positive clip than to the neg_t /
neg_s clip (and, *_text, the positive clip closer to its caption than to the
neg_t / neg_s caption with the same index); DOA error (learned head and the classical intensity
vector baseline, on the same clips); modality-classifier accuracy on held-out
embeddings plus a fresh logistic probe; zero-shot direction classification of
single-event clips with "The sound is coming from the {dir}." (skipped, with a
note, when the split has none: T-SALM's layout has no single-event clips).
Everything is encoded under the run's precision (training.evaluation).

Held-out phrasing (issue 13): every text-side metric again, keys prefixed
heldout_, on captions of data/sclap/heldout.py written from the split's
event classes, azimuths and order (one caption an item and variant) and on
its direction prompts for zero-shot. Data without event classes (T-SALM's
stClotho, a user's manifest without them) get no heldout_ keys.

Event slots (model.event_slots): every metric above uses the model's
slot-structured embeddings (encode_audio / encode_text give them); with the
event captions in the data (loss.event_weight > 0) also slot_order_acc_audio
/ _text: the share of clips whose two slots match their own two event
captions better in time order than swapped.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from data.sclap import heldout
from data.sclap.dataset import VARIANTS, cached_array, clips_key, collate
from families.sclap.figures import make_figures
from models.sclap.classical_doa import VERSION as CLASSICAL_DOA_VERSION
from models.sclap.classical_doa import angular_error_deg, estimate_two_doas
from training.evaluation import encode_split, retrieval

ENCODE_KEYS = ("audio", "text", "doa", "mod_audio", "mod_text", "audio_slots", "text_slots", "event")


def triplet_metrics(audio, text):
    """Order and direction discrimination from L2-normalised [N, 3, D]
    embeddings of (pos, neg_t, neg_s) clips and captions."""
    sim_t = torch.einsum("nd,nkd->nk", text[:, 0], audio)       # [N, 3] pos caption vs 3 clips
    sim_a = torch.einsum("nd,nkd->nk", audio[:, 0], text)       # [N, 3] pos clip vs 3 captions
    return {"temporal_acc": float((sim_t[:, 0] > sim_t[:, 1]).float().mean()),
            "spatial_acc": float((sim_t[:, 0] > sim_t[:, 2]).float().mean()),
            "temporal_acc_text": float((sim_a[:, 0] > sim_a[:, 1]).float().mean()),
            "spatial_acc_text": float((sim_a[:, 0] > sim_a[:, 2]).float().mean()),
            "threeway_acc": float((sim_t.argmax(1) == 0).float().mean())}


def slot_order_metrics(e):
    """Do the slots hold the events in time order? audio_slots, text_slots,
    event [N, 3, 2, D]: clip i's slots k against its event captions c_k,
    cos(s1, c1) + cos(s2, c2) > cos(s1, c2) + cos(s2, c1), over all 3N clips."""
    c = F.normalize(e["event"].flatten(0, 1), dim=-1)                      # [3N, 2, D]
    out = {}
    for side in ("audio", "text"):
        s = F.normalize(e[f"{side}_slots"].flatten(0, 1), dim=-1)         # [3N, 2, D]
        sim = torch.einsum("nkd,njd->nkj", s, c)                           # [3N, 2, 2]
        in_order = sim[:, 0, 0] + sim[:, 1, 1]
        out[f"slot_order_acc_{side}"] = float((in_order > sim[:, 0, 1] + sim[:, 1, 0]).float().mean())
    return out


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
    with torch.no_grad():
        return float(((lin(x_te).squeeze(-1) > 0).float() == y_te).float().mean())


def classical_doa(dataset, cfg):
    """Intensity-vector baseline on every clip of the split, from the audio
    files (the samples the front end sees). -> [N, 3, 2, 3].
    Not learned, so computed once per set of clips and cached beside their
    features (keyed by the files and the estimator); the dataset is only read."""
    sr = dataset.sample_rate
    n = int(sr * dataset.clip_seconds)
    key = clips_key(dataset.root, dataset.rows, {"classical_doa": CLASSICAL_DOA_VERSION, "sr": sr, "n": n,
                                                 **dataset.audio_extra})
    path = os.path.join(dataset.cache_dir, f"classical_doa_{dataset.split}_{key}.npy")
    est = cached_array(path, lambda: np.stack(
        [estimate_two_doas(dataset.read_clip(r), sr) for r in dataset.rows]).astype(np.float32))
    return np.asarray(est).reshape(len(dataset), 3, 2, 3)


def caption_embeddings(model, dataset, first, cfg, device):
    """Every caption of every variant, L2-normalised: {(item, variant index, k): [D]}.
    Caption 0 comes from the model's forward (``first`` [N, 3, D]), the others
    are encoded here; one-caption data encode nothing more."""
    out = {(i, j, 0): first[i, j] for i in range(len(dataset)) for j in range(3)}
    rest = [(i, j, k, c) for i, it in enumerate(dataset.items) for j, v in enumerate(VARIANTS)
            for k, c in enumerate(it[v]["captions"]) if k > 0]
    if rest:
        emb = encode_split(model, [c for *_, c in rest], list, cfg, device,
                           forward=lambda m, b: {"text": m.encode_text(b)})["text"]
        emb = F.normalize(emb, dim=-1)
        out.update({(i, j, k): e for (i, j, k, _), e in zip(rest, emb)})
    return out


def all_caption_metrics(audio, text, dataset, model, cfg, device):
    """Retrieval with every positive caption a query, and the triplet metrics
    over every (item, caption index) that all three variants have."""
    caps = caption_embeddings(model, dataset, text, cfg, device)
    pos = sorted(key for key in caps if key[1] == 0)                     # (item, 0, k), item-major
    metrics = retrieval(torch.stack([caps[key] for key in pos]), audio[:, 0],
                        torch.tensor([i for i, _, _ in pos]), item="a")
    pairs = [(i, k) for i in range(len(dataset)) for k in range(dataset.num_captions(i))]
    t = torch.stack([torch.stack([caps[(i, j, k)] for j in range(3)]) for i, k in pairs])  # [P, 3, D]
    a = audio[torch.tensor([i for i, _ in pairs])]                                          # [P, 3, D]
    metrics.update(triplet_metrics(a, t))
    return metrics


def _encode_texts(model, texts, cfg, device):
    """L2-normalised text embeddings [len(texts), D]."""
    emb = encode_split(model, texts, list, cfg, device, forward=lambda m, b: {"text": m.encode_text(b)})
    return F.normalize(emb["text"], dim=-1)


_NOTED = set()


def heldout_captions(dataset):
    """[N][3] held-out captions (pos, neg_t, neg_s) of the split's items, or
    None when some row has no event classes to describe."""
    if not all(heldout.describes(it[v]) for it in dataset.items for v in VARIANTS):
        return None
    out = []
    for it in dataset.items:
        caps = heldout.item_captions(it["pos"]["item_id"], it)
        out.append([caps[v] for v in VARIANTS])
    return out


def heldout_metrics(model, dataset, audio, cfg, device):
    """Retrieval and triplet metrics on the held-out captions, heldout_ keys
    ({} with a log line when the data have no event classes). audio [N, 3, D]."""
    caps = heldout_captions(dataset)
    if caps is None:
        if (dataset.root, dataset.split) in _NOTED:
            return {}
        _NOTED.add((dataset.root, dataset.split))   # said once, not at every validation
        print(f"sclap: heldout_ metrics skipped: split {dataset.split} ({dataset.layout} layout) has "
              f"no event classes (event1_class, event2_class) to write held-out captions from")
        return {}
    text = _encode_texts(model, [c for three in caps for c in three], cfg, device).view(len(caps), 3, -1)
    m = retrieval(text[:, 0], audio[:, 0], torch.arange(len(caps)), item="a")   # [N, D] each
    m.update(triplet_metrics(audio, text))
    return {f"heldout_{k}": v for k, v in m.items()}


def zeroshot_direction(model, dataset, cfg, device, prompts=None):
    """Share of single-event clips whose nearest direction prompt names their
    sector; prompts: 8 strings in sector order (default: the config's)."""
    ec = cfg["eval"]
    prompts = prompts or [ec["zeroshot_prompt"].format(dir=d) for d in ec["directions"]]
    text = encode_split(model, prompts, list, cfg, device, forward=lambda m, b: {"text": m.encode_text(b)})
    clips = [{"feats": torch.from_numpy(np.asarray(f, dtype=np.float32))} for f in dataset.single_feats]
    if dataset.single_wave is not None:   # a pretrained audio tower reads the W waveform
        for c, w in zip(clips, dataset.single_wave):
            c["wave"] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    audio = encode_split(model, clips, default_collate, cfg, device, keys=("audio",),
                         forward=lambda m, b: m.encode_audio(b["feats"], b.get("wave")))
    sim = F.normalize(audio["audio"], dim=-1) @ F.normalize(text["text"], dim=-1).T   # [S, 8]
    return float((sim.argmax(1).numpy() == dataset.single_sector).mean())


def evaluate_sclap(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    e = encode_split(model, dataset, collate, cfg, device, keys=ENCODE_KEYS)
    audio, text = F.normalize(e["audio"], dim=-1), F.normalize(e["text"], dim=-1)  # [N, 3, D]
    metrics = all_caption_metrics(audio, text, dataset, model, cfg, device)
    metrics.update(heldout_metrics(model, dataset, audio, cfg, device))
    metrics["gallery_size"] = audio.shape[0]
    if "event" in e:
        metrics.update(slot_order_metrics(e))

    target = dataset.doa.reshape(-1, 2, 3)
    metrics["doa_error_deg"] = float(angular_error_deg(e["doa"].numpy().reshape(-1, 2, 3), target).mean())
    base = classical_doa(dataset, cfg)
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
        # the held-out prompts name directions only: every single-event clip has one
        metrics["heldout_zeroshot_direction_acc"] = zeroshot_direction(
            model, dataset, cfg, device, heldout.zeroshot_prompts())
    elif dataset.split == "test":
        print(f"sclap: zeroshot_direction_acc skipped: split {dataset.split} has no single-event "
              f"clips ({dataset.layout} layout); it is not estimated from two-event clips")

    if (out_dir is not None or writer is not None) and cfg["eval"]["figures"]:
        make_figures(dataset, e, base, out_dir, writer, step)
    return metrics
