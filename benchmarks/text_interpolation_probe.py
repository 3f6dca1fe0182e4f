"""Weight-space interpolation of a trained text tower with its pretrained
weights (WiSE-FT, Wortsman et al. 2022), scored by eval.py's metrics.

    python benchmarks/text_interpolation_probe.py --checkpoint logs/r0/checkpoints/latest.pt --alphas 1.0,0.75,0.5

Every floating-point weight of the text backbone becomes
``alpha * trained + (1 - alpha) * pretrained`` (the bundled MiniLM, or the
checkpoint's ``model.text.pretrained`` folder); the frozen layers are equal in
both, so only the trained ones move. The projection, the other towers and the
criterion stay as trained. alpha 1 is the checkpoint itself. The test split's
text-side metrics, also on the held-out phrasing, are printed per alpha: a
trained tower that forgot what it knew about words the training captions never
use should gain on ``heldout_`` keys as alpha falls.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from eval import load_stage1  # noqa: E402
from models.text_encoder import resolve_model_path  # noqa: E402
from training.precision import resolve_precision  # noqa: E402
from training.resources import apply_thread_budget  # noqa: E402

KEYS = ("temporal_order_acc", "t2r_R@10", "t2r_R@1", "temporal_acc", "spatial_acc", "t2a_R@1",
        "entity_object_acc", "t2i_R@10")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--alphas", default="1.0,0.75,0.5")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    from transformers import AutoModel
    family, cfg, model, criterion, _ = load_stage1(args.checkpoint)
    cfg["precision"], _ = resolve_precision(cfg.get("precision", "auto"), "cpu")
    print(apply_thread_budget(cfg))
    family.prepare_data(cfg)
    dataset = family.build_datasets(cfg)[args.split]
    backbone = model.text_encoder.backbone
    text = cfg["model"]["text"]
    pretrained = AutoModel.from_pretrained(resolve_model_path(text.get("pretrained") or text.get("model_name")),
                                           add_pooling_layer=False).state_dict()
    trained = {k: v.clone() for k, v in backbone.state_dict().items()}
    moved = [k for k in trained if k in pretrained and trained[k].is_floating_point()
             and not torch.equal(trained[k], pretrained[k])]
    print(f"{len(moved)} of {len(trained)} text-backbone tensors differ from the pretrained ones")
    for alpha in (float(a) for a in args.alphas.split(",")):
        backbone.load_state_dict({k: alpha * v + (1 - alpha) * pretrained[k] if k in moved else v
                                  for k, v in trained.items()})
        with torch.no_grad():
            m = family.evaluate(model, criterion, dataset, cfg, torch.device("cpu"))
        row = {p + k: round(float(m[p + k]), 3) for k in KEYS for p in ("", "heldout_") if p + k in m}
        print(f"alpha {alpha:.2f}: " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
