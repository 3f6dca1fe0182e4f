"""How recognisable are the actions in the simulated radar? A linear probe.

Features: per range/Doppler/azimuth bin, the mean, spread and maximum of the
log maps over the whole clip (time-pooled, so no order information) [1536].
A logistic regression on the train split predicts each clip's first action
(``label``); accuracy on the test split, on all clips and on one-action
clips. This calibrates the learned models: a radar encoder whose zero-shot
or linear-probe accuracy is below this baseline has not learned much.

    python -m data.radar.probe --root data_cache/radar/quick
"""
import argparse
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from data.radar.dataset import VIEWS, RadarTextDataset


def pooled_features(ds):
    """[N, 3 * 512] time-pooled log-map statistics, [N] labels, [N] action counts."""
    feats = []
    for item in ds.items:
        with np.load(item["npz"]) as z:
            f = []
            for key in VIEWS:
                x = np.log1p(np.abs(z[key]))                       # [bins, T]
                f += [x.mean(1), x.std(1), x.max(1)]
            feats.append(np.concatenate(f))
    labels = [ds.action_names.index(it["actions"][0]) for it in ds.items]
    counts = [len(it["actions"]) for it in ds.items]
    return torch.tensor(np.stack(feats), dtype=torch.float32), torch.tensor(labels), torch.tensor(counts)


def linear_probe(x_tr, y_tr, x_te, num_classes, steps=300, wd=1e-3):
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    w = torch.zeros(x_tr.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(x_tr @ w + b, y_tr) + wd * (w ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (x_te @ w + b).argmax(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    args = ap.parse_args()
    t0 = time.time()
    with threadpool_limits(limits=1):
        train = RadarTextDataset(args.root, "train", train=False)
        test = RadarTextDataset(args.root, "test", train=False)
        if not train.action_names:
            raise SystemExit(f"{args.root}: no data_info.json action list; the probe needs action labels")
        x_tr, y_tr, _ = pooled_features(train)
        x_te, y_te, n_te = pooled_features(test)
        pred = linear_probe(x_tr, y_tr, x_te, len(train.action_names))
    ok = (pred == y_te).float()
    single = n_te == 1
    print(f"train {len(y_tr)} clips, test {len(y_te)} clips ({int(single.sum())} with one action), "
          f"{len(train.action_names)} actions")
    print(f"first-action accuracy: all {ok.mean():.3f}, one-action clips {ok[single].mean():.3f}; "
          f"chance {1 / len(train.action_names):.3f}, majority {torch.bincount(y_te).max().item() / len(y_te):.3f}"
          f"  ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
