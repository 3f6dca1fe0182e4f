"""Step time and memory of a ViT-B-sized pretrained tower per modality, with
and without activation checkpointing, side by side (issue 11 item 3).

    python benchmarks/bench_towers.py                    # every tower, batch 2
    python benchmarks/bench_towers.py --towers vision,audio --batch-size 4 --steps 3

Towers (random weights built from the checkpoint's config, nothing loaded):
  vision  CLIP ViT-B/16 at 224 px (grounding images, TimesCLIP charts)
  radar   ViT-B/16 on the Doppler-time map 128 x 496 (mmExpert), 8 x 31 patches
  audio   LAION-CLAP HTS-AT (ClapAudioConfig defaults) on 10 s of 48 kHz mel
  text    CLIP ViT-B/16's text transformer (512 wide, 12 layers), 77 tokens

Step time: forward + backward + AdamW step, every tower fully trainable,
median over ``--steps`` after one warm-up step, plain and checkpointed steps
interleaved in one process (the machine's noise hits both alike). ``saved``
is the exact size of the activations autograd keeps for backward (a
saved_tensors_hooks count, each storage once, parameters left out): what
checkpointing trades for recomputation. Peak RSS (``ru_maxrss``: weights,
gradients, AdamW state, activations, the libraries) comes from fresh
processes: the interleaved one (its peak is the plain run's) and one that
takes checkpointed steps only.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models.towers import AudioTower, RadarTower, VisionTower  # noqa: E402
from models.towers.trainable import Tower  # noqa: E402
from transformers import (ClapAudioConfig, ClapAudioModel, CLIPTextConfig, CLIPTextModel,  # noqa: E402
                          CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel)

TOWERS = ("vision", "radar", "audio", "text")


class TextBody(Tower):
    """CLIP's text transformer on token ids (the tokenizer is not the cost)."""

    def forward(self, ids):
        return self.backbone(input_ids=ids).pooler_output


def build(name, batch):
    """(tower, inputs tuple) for one modality."""
    if name == "vision":
        tower = VisionTower({}, backbone=CLIPVisionModel(CLIPVisionConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            image_size=224, patch_size=16)))
        return tower, (torch.rand(batch, 3, 224, 224),)
    if name == "radar":
        tower = RadarTower({}, backbone=ViTModel(ViTConfig(image_size=224, patch_size=16)),
                           radar_views="doppler", max_sequence_length=496)
        return tower, ({"doppler_time": torch.randn(batch, 128, 496)},
                       torch.ones(batch, 496, dtype=torch.bool))
    if name == "audio":
        tower = AudioTower({}, backbone=ClapAudioModel(ClapAudioConfig(enable_fusion=False)),
                           preprocess={"truncation": "rand_trunc"})
        return tower, (torch.randn(batch, 1, 64, 1001),)     # [B, 1, mels, frames] of 10 s
    if name == "text":
        tower = TextBody(CLIPTextModel(CLIPTextConfig(hidden_size=512, intermediate_size=2048,
                                                      num_hidden_layers=12, num_attention_heads=8)))
        ids = torch.randint(0, 49000, (batch, 77))
        ids[:, -1] = 49407                                   # end-of-text token, pooled
        return tower, (ids,)
    raise ValueError(f"unknown tower {name!r}; expected one of {TOWERS}")


def pooled(out):
    return out if torch.is_tensor(out) else out.features


def saved_bytes(tower, inputs):
    """Bytes autograd saves for backward in one forward: each storage once,
    the parameters left out (a linear layer saves its weight; that is not
    activation memory)."""
    params = {p.untyped_storage().data_ptr() for p in tower.parameters()}
    seen = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            if s.data_ptr() not in params:
                seen[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # a tensor without storage (e.g. a view of
            # a functional/meta tensor) holds no activation memory of its own: nothing to count
            pass
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = pooled(tower(*inputs)).float().pow(2).mean()
    loss.backward()
    tower.zero_grad(set_to_none=True)
    return sum(seen.values())


def step(tower, opt, inputs):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    pooled(tower(*inputs)).float().pow(2).mean().backward()
    opt.step()
    return time.perf_counter() - t0


def run_one(name, ckpt_only, batch, steps):
    """ckpt_only: checkpointed steps only (this process's peak memory is the
    checkpointed run's). Else both modes, interleaved step by step so the
    machine's noise hits both alike; the peak is then the plain run's (the
    larger of the two)."""
    torch.manual_seed(0)
    tower, inputs = build(name, batch)
    tower.train()
    opt = torch.optim.AdamW([p for p in tower.parameters() if p.requires_grad], lr=1e-5)
    modes = (True,) if ckpt_only else (False, True)
    times = {m: [] for m in modes}
    tower.set_grad_checkpointing(modes[0])
    step(tower, opt, inputs)                              # allocates AdamW's state
    for _ in range(steps):
        for m in modes:
            tower.set_grad_checkpointing(m)
            times[m].append(step(tower, opt, inputs))
    saved = {}
    for m in modes:
        tower.set_grad_checkpointing(m)
        saved[m] = saved_bytes(tower, inputs) / 2**20
    return {"tower": name, "params_m": sum(p.numel() for p in tower.parameters()) / 1e6,
            "step_s": {int(m): statistics.median(t) for m, t in times.items()},
            "saved_mb": {int(m): v for m, v in saved.items()},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--towers", default=",".join(TOWERS))
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)   # tower:ckpt, run in this process
    args = ap.parse_args()
    if args.one:
        name, ckpt_only = args.one.split(":")
        print(json.dumps(run_one(name, ckpt_only == "1", args.batch_size, args.steps)))
        return
    rows = []
    for name in args.towers.split(","):
        pair = []
        for ckpt_only in (0, 1):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one",
                                  f"{name}:{ckpt_only}", "--batch-size", str(args.batch_size),
                                  "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            pair.append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows.append(pair)
    print(f"batch {args.batch_size}, {rows[0][0]['threads']} thread(s), "
          f"median of {args.steps} interleaved steps; x = checkpointed / plain")
    print(f"{'tower':8} {'params':>8} | {'step s':>7} {'ckpt':>7} {'x':>5} | {'saved MB':>9} "
          f"{'ckpt':>7} {'x':>5} | {'peak RSS MB':>11} {'ckpt':>7} {'x':>5}")
    for a, b in rows:
        t, sv = a["step_s"], a["saved_mb"]
        print(f"{a['tower']:8} {a['params_m']:7.1f}M | {t['0']:7.2f} {t['1']:7.2f} "
              f"{t['1'] / t['0']:5.2f} | {sv['0']:9.0f} {sv['1']:7.0f} {sv['1'] / sv['0']:5.2f} | "
              f"{a['peak_rss_mb']:11.0f} {b['peak_rss_mb']:7.0f} "
              f"{b['peak_rss_mb'] / a['peak_rss_mb']:5.2f}")

if __name__ == "__main__":
    main()
