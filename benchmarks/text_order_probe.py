"""Does a text side read time order? A text-only probe, minutes on a CPU.

The families' temporal metrics ask whether a caption scores higher than its
order-swapped version against the right clip. The text side must encode
which action (radar) or sound (sCLAP) comes first, whatever the sentence
frame: "before X, Y" puts Y first. This probe isolates that: a text side
(the bundled MiniLM with one of the model.text options) and a linear
read-out per time position are trained to score a caption against its own
label sequence; order accuracy = share of (caption, swapped caption) pairs
in which the caption scores its sequence higher, on the test split's
training-grammar captions and on the frozen held-out phrasing.

    python benchmarks/text_order_probe.py --family radar --root data_cache/radar/quick
    python benchmarks/text_order_probe.py --family sclap --root data_cache/sclap/<folder>

The labels are read from the generated data (radar meta/{id}.json actions;
the sCLAP manifest's event classes); the training-grammar captions are made
from them with --captions (diverse | template) for radar; sCLAP's are the
manifest's own (the folder's data.captions). Configurations run one after the other on
the same captions, seeds and steps.
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.radar import heldout as radar_heldout  # noqa: E402
from data.radar.captions import clip_captions  # noqa: E402
from data.radar.text import clean_caption  # noqa: E402
from data.sclap import heldout as sclap_heldout  # noqa: E402
from models.text_encoder import TextEncoder  # noqa: E402

CONFIGS = {
    "frozen": {},
    "head1x128": {"head_layers": 1, "head_dim": 128},
    "head2x128": {"head_layers": 2, "head_dim": 128},
    "head1x384": {"head_layers": 1},
    "last1": {"unfreeze_last_n": 1},
    "last2": {"unfreeze_last_n": 2},
    # noise on the cached prefix states in training (model.text.state_noise)
    "last2_noise0.3": {"unfreeze_last_n": 2, "state_noise": 0.3},
    "last2_noise0.6": {"unfreeze_last_n": 2, "state_noise": 0.6},
    "last2_noise1.0": {"unfreeze_last_n": 2, "state_noise": 1.0},
}


# ---------------------------------------------------------------- examples
# An example: (caption, swapped caption, label sequence); the swapped caption
# describes the sequence in another time order (None: nothing to swap).

def radar_examples(root, split, grammar, num=4):
    ids = json.load(open(os.path.join(root, "_split", f"{split}.json")))
    train, held = [], []
    for index, cid in enumerate(sorted(ids)):
        meta = json.load(open(os.path.join(root, "meta", f"{cid}.json")))
        actions = meta["actions"]
        if len(actions) < 2:
            continue
        labels = [a["name"] for a in actions]
        params = {"captions": grammar, "num_captions": num, "max_words": 20, "seed": 0}
        caps, swapped = clip_captions(actions, params, index, np.random.default_rng(index))
        train += [(clean_caption(c), clean_caption(s), labels) for c, s in zip(caps, swapped)]
        caps, swapped = radar_heldout.heldout_captions(actions, cid)
        held += list(zip(caps, swapped, [labels] * len(caps)))
    return train, held


def sclap_examples(root, split):
    """The manifest's own captions (pos caption k vs neg_t caption k: the grammar
    the folder was generated with) and the held-out phrasing."""
    rows = {}
    for r in csv.DictReader(open(os.path.join(root, "stclotho_manifest.csv"))):
        if r["split"] == split and r["variant"] in ("pos", "neg_t", "neg_s"):
            rows.setdefault(r["item_id"], {})[r["variant"]] = r
    train, held = [], []
    for item_id, it in sorted(rows.items()):
        pos, neg = it["pos"], it["neg_t"]
        labels = [pos["event1_class"], pos["event2_class"]]
        keys = ["caption"] + sorted(k for k in pos if k.startswith("caption_"))
        train += [(pos[k], neg[k], labels) for k in keys if pos.get(k)]
        h = sclap_heldout.item_captions(item_id, it)
        held.append((h["pos"], h["neg_t"], labels))
    return train, held


# ---------------------------------------------------------------- probe
class Probe(torch.nn.Module):
    """Text side -> features [B, D] -> per-position class logits [B, P, C]."""

    def __init__(self, options, classes, positions, dim=256):
        super().__init__()
        self.text = TextEncoder(embed_dim=dim, **options)
        self.out = torch.nn.Linear(dim, positions * len(classes))
        self.classes = {c: i for i, c in enumerate(classes)}
        self.P = positions

    def score(self, captions, labels):
        """score of each caption for its label sequence: [B]."""
        f = self.text(captions).features
        logits = self.out(F.layer_norm(f, f.shape[-1:])).view(len(captions), self.P, -1)
        s = torch.zeros(len(captions))
        for b, seq in enumerate(labels):
            for k, name in enumerate(seq):
                s[b] = s[b] + logits[b, k, self.classes[name]]
        return s


def order_acc(probe, examples, batch=128):
    probe.eval()
    hits = []
    with torch.no_grad():
        for i in range(0, len(examples), batch):
            ex = [e for e in examples[i:i + batch] if e[1]]
            if not ex:
                continue
            pos = probe.score([e[0] for e in ex], [e[2] for e in ex])
            neg = probe.score([e[1] for e in ex], [e[2] for e in ex])
            hits += (pos > neg).tolist()
    probe.train()
    return float(np.mean(hits))


def train_probe(name, options, train, tests, classes, positions, steps, batch, lr, seed):
    torch.manual_seed(seed)
    probe = Probe(options, classes, positions)
    params = [p for p in probe.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        ex = [train[j] for j in rng.choice(len(train), batch, replace=False) if train[j][1]]
        # the caption must beat its swapped version on its own labels (a margin-free
        # logistic loss: the families' temporal negatives in text-only form)
        pos = probe.score([e[0] for e in ex], [e[2] for e in ex])
        neg = probe.score([e[1] for e in ex], [e[2] for e in ex])
        loss = F.softplus(neg - pos).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    took = time.perf_counter() - t0
    accs = {k: order_acc(probe, v) for k, v in tests.items()}
    trainable = sum(p.numel() for p in params)
    return {"config": name, "train_s": took, "trainable": trainable, **accs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["radar", "sclap"], required=True)
    ap.add_argument("--root", required=True, help="a generated data folder of the family")
    ap.add_argument("--captions", default="diverse", choices=["diverse", "template"],
                    help="the training grammar the probe trains on")
    ap.add_argument("--configs", default="frozen,head1x128,head2x128,last1")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args(argv)

    if args.family == "radar":
        train, _ = radar_examples(args.root, "train", args.captions)
        test, held = radar_examples(args.root, "test", args.captions)
    else:
        train, _ = sclap_examples(args.root, "train")
        test, held = sclap_examples(args.root, "test")
    classes = sorted({n for e in train + test + held for n in e[2]})
    positions = max(len(e[2]) for e in train + test + held)
    print(f"{args.family}: {len(train)} training pairs ({args.captions}), {len(test)} test pairs, "
          f"{len(held)} held-out pairs; {len(classes)} classes, {positions} positions; "
          f"{args.steps} steps x {args.batch}, {torch.get_num_threads()} threads")
    print(f"{'config':<11} {'seed':>4} {'trainable':>10} {'train s':>8} {'test order':>11} {'held-out order':>15}")
    for name in args.configs.split(","):
        for seed in range(args.seeds):
            r = train_probe(name, CONFIGS[name], train, {"test": test, "held": held}, classes,
                            positions, args.steps, args.batch, args.lr, seed)
            print(f"{name:<11} {seed:>4} {r['trainable'] / 1e6:>9.2f}M {r['train_s']:>8.1f} "
                  f"{r['test']:>11.3f} {r['held']:>15.3f}", flush=True)


if __name__ == "__main__":
    main()
