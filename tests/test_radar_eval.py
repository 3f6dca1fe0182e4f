"""Radar evaluation: metrics equal to hand computations on a constructed case,
evaluation under the run's precision, the disk text-feature cache."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import families.radar as fam
from data.radar.temporal import TemporalNegatives
from families.radar.evaluation import encode_clips, encode_texts, evaluate_radar, score_matrix
from families.radar.text_cache import all_captions
from training.text_cache import (PACKED, build_text_cache, load_text_cache, pack, text_cache_enabled,
                                 text_cache_path, unpack)
from losses.radar_loss import RadarContrastiveLoss
from models.text_encoder import TextEncoder
from tests.radar_tiny import tiny_cfg

E = torch.eye(4)
# clip id -> (captions, order-swapped captions, actions); radar feature e_k for clip k
CLIPS = {
    "A": (["a walks then jumps", "a walks and then jumps"],
          ["a jumps then walks", "a jumps and then walks"], ["walk", "jump"]),
    "B": (["b sits then waves"], ["b waves then sits"], ["sit", "wave"]),
    "C": (["c walks"], [], ["walk"]),
    "D": (["d jumps"], [], ["jump"]),
}
RADAR = {"A": E[0], "B": E[1], "C": E[2], "D": E[3]}
TEXT = {
    "a walks then jumps": E[0] + 0.1 * E[1],      # true beats swapped (cos .995 vs .894)
    "a jumps then walks": E[0] + 0.5 * E[1],
    "a walks and then jumps": 0.6 * E[0] + E[1],  # closer to B than to A: a retrieval miss
    "a jumps and then walks": E[0] + E[1],        # swapped beats true (.707 vs .514)
    "b sits then waves": E[1] + 0.3 * E[0],       # true beats swapped (.958 vs .781)
    "b waves then sits": E[1] + 0.8 * E[0],
    "c walks": E[2], "d jumps": E[3],
    # zero-shot prompts: C (walk) is recognised, D (jump) is taken for "sit"
    "walking": E[2], "jumping": E[2] + E[3], "sitting": E[3], "waving": E[0],
}
ACTIONS = ["walk", "jump", "sit", "wave"]
PROMPTS = {"walk": "walking", "jump": "jumping", "sit": "sitting", "wave": "waving"}


class ConstructedClips:
    """RadarTextDataset stand-in holding CLIPS (evaluation mode: first caption)."""

    def __init__(self):
        self.ids = list(CLIPS)
        self.items = [{"captions": CLIPS[c][0], "meta": f"{c}.json", "actions": CLIPS[c][2]}
                      for c in self.ids]
        self.action_names, self.action_prompts, self.root = ACTIONS, PROMPTS, "constructed"

    def __len__(self):
        return len(self.ids)

    def clip_meta(self, i):
        return {"order_swapped_captions": CLIPS[self.ids[i]][1]}

    def __getitem__(self, i):
        caps, _, actions = CLIPS[self.ids[i]]
        return {"radar_mask": torch.ones(4, dtype=torch.bool), "caption": caps[0],
                "captions": list(caps), "clip_id": self.ids[i], "actions": list(actions),
                "label": ACTIONS.index(actions[0]), "num_actions": len(actions)}


class LookupModel(nn.Module):
    """Features from the tables above; records the autocast state it ran under."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def radar_views(self, batch):
        return {"clip_id": batch["clip_id"]}

    def encode_radar(self, views, mask):
        f = torch.stack([RADAR[c] for c in views["clip_id"]]) * self.weight  # [B, 4]
        return {"radar_features": f, "radar_seq": f[:, None], "radar_mask": mask[:, :1]}

    def encode_text(self, captions):
        f = torch.stack([TEXT[c] for c in captions]) * self.weight
        return {"text_features": f, "text_tokens": f[:, None],
                "text_mask": torch.ones(len(captions), 1, dtype=torch.bool)}


def cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


def test_metrics_equal_hand_computation_on_a_constructed_case():
    model, criterion = LookupModel().train(), RadarContrastiveLoss(4).train()
    cfg = {"precision": "fp32", "eval": {"batch_size": 3}}
    m = evaluate_radar(model, criterion, TemporalNegatives(ConstructedClips()), cfg, torch.device("cpu"))
    # temporal order: every (caption, swapped caption) pair of a multi-action clip
    pairs = [(c, t, s) for c in ("A", "B") for t, s in zip(CLIPS[c][0], CLIPS[c][1])]
    hand = sum(cos(RADAR[c], TEXT[t]) > cos(RADAR[c], TEXT[s]) for c, t, s in pairs) / len(pairs)
    assert m["temporal_order_pairs"] == 3 and m["temporal_order_acc"] == pytest.approx(hand)
    assert hand == pytest.approx(2 / 3) and m["temporal_order_acc_global"] == pytest.approx(2 / 3)
    # zero-shot: argmax over the action prompts, single-action clips (C, D) only
    hits = [max(ACTIONS, key=lambda a: cos(RADAR[c], TEXT[PROMPTS[a]])) == CLIPS[c][2][0]
            for c in ("C", "D")]
    assert hits == [True, False]
    assert m["zeroshot_action_acc"] == pytest.approx(0.5) and m["zeroshot_clips"] == 2
    assert m["zeroshot_chance"] == pytest.approx(1 / 4)
    # text -> radar R@1: one of the five captions ranks another clip first
    top1 = [max(RADAR, key=lambda c: cos(RADAR[c], TEXT[t])) == c for c in CLIPS for t in CLIPS[c][0]]
    assert m["t2r_R@1"] == pytest.approx(sum(top1) / len(top1)) == pytest.approx(0.8)
    assert model.training and criterion.training            # modes restored


# ------------------------------------------------------------------ precision
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_cfg(tmp_path_factory.mktemp("radar_eval") / "data")
    fam.prepare_data(cfg)
    torch.manual_seed(0)
    return cfg, fam.build_model(cfg), fam.build_criterion(cfg), fam.build_datasets(cfg)["test"]


def _scores(model, criterion, dataset, cfg):
    """The [captions, clips] score matrix evaluation ranks by."""
    with torch.no_grad():
        radar, info = encode_clips(model, dataset, cfg, torch.device("cpu"))
        caps = [c for cs in info["captions"] for c in cs]
        return score_matrix(criterion, radar, encode_texts(model, caps, cfg, torch.device("cpu")))


@pytest.mark.parametrize("precision, dtype, atol", [("amp", torch.float16, 2e-3),
                                                    ("amp_bf16", torch.bfloat16, 1e-2)])
def test_evaluation_runs_under_the_runs_autocast(tiny, precision, dtype, atol):
    """--precision amp used to be ignored (only amp_bf16 autocast): the encoders
    must run under the run's autocast, and scores and metrics stay close to fp32."""
    cfg, model, criterion, test = tiny
    seen = []
    hook = model.radar_encoder.register_forward_hook(
        lambda *_: seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                               else None))
    fp32, low_cfg = dict(cfg, precision="fp32"), dict(cfg, precision=precision)
    try:
        ref = fam.evaluate(model, criterion, test, fp32, torch.device("cpu"))
        assert seen and set(seen) == {None}
        seen.clear()
        low = fam.evaluate(model, criterion, test, low_cfg, torch.device("cpu"))
        assert seen and set(seen) == {dtype}
    finally:
        hook.remove()
    ref_scores, low_scores = _scores(model, criterion, test, fp32), _scores(model, criterion, test, low_cfg)
    assert ref_scores.std() > 0.05                              # scores are spread, not all equal
    assert torch.allclose(low_scores, ref_scores, atol=atol)
    assert set(low) == set(ref)
    # a rank can swap where two scores are within rounding: at most a couple of queries move
    for k in ("t2r_mean_rank", "r2t_mean_rank"):
        assert low[k] == pytest.approx(ref[k], abs=0.5), k
    for k in ("t2r_R@1", "t2r_R@5", "r2t_R@1", "temporal_order_acc", "zeroshot_action_acc"):
        assert low[k] == pytest.approx(ref[k], abs=0.15), k


# ------------------------------------------------------------- text cache
def _count_backbone_calls(enc):
    calls = []
    enc.backbone.register_forward_hook(lambda mod, args, kw, out: calls.append(kw["input_ids"].shape[0]),
                                       with_kwargs=True)
    return calls


def test_disk_text_cache_hits_and_misses(tmp_path):
    texts = {"cap one", "another caption", "a jumps then walks", "walking"}

    class Split:  # what all_captions reads of a TemporalNegatives split
        base = type("B", (), {"items": [{"captions": ["cap one", "another caption"]}],
                              "action_prompts": {"walk": "walking"}})()

        def swapped(self, i):
            return ["a jumps then walks"]

    t = {"pretrained": None, "max_length": 16, "pooling_strategy": "mean", "freeze": True,
         "unfreeze_last_n": 0, "cache_features": True, "disk_cache": True, "cache_max_mb": 512}
    build_text_cache(str(tmp_path), t, all_captions({"train": Split()}))
    packed = torch.load(text_cache_path(str(tmp_path), t))
    assert packed["format"] == PACKED and packed["hidden"].dtype == torch.float16
    cache = unpack(packed)
    assert set(cache) == texts
    # a checkpoint's config from before the tower sections names the same file
    old = {k: v for k, v in t.items() if k not in ("pretrained", "freeze")}
    old.update(model_name=None, freeze_backbone=True)
    assert text_cache_enabled(old) and text_cache_path(str(tmp_path), old) == text_cache_path(str(tmp_path), t)

    torch.manual_seed(0)
    fresh = TextEncoder(max_length=16, embed_dim=8).eval()
    torch.manual_seed(0)
    cached = TextEncoder(max_length=16, embed_dim=8).eval()
    load_text_cache(cached, str(tmp_path), t)
    calls = _count_backbone_calls(cached)
    with torch.no_grad():
        ref, hit = fresh(["cap one", "walking"]), cached(["cap one", "walking"])
        again = cached(["cap one", "walking"])
    assert calls == []                                          # a hit: no backbone pass
    assert torch.equal(hit.features, again.features)
    assert torch.allclose(hit.features, ref.features, atol=2e-3)  # stored as fp16
    with torch.no_grad():
        new = cached(["cap one", "a caption not in the file"])
    assert calls == [1]                                         # only the new caption is encoded
    assert torch.allclose(new.features[0], ref.features[0], atol=2e-3)

    # another model / max_length / pooling: another file, nothing loaded
    for change in ({"max_length": 32}, {"pooling_strategy": "cls"}, {"pretrained": "other/model"}):
        other = dict(t, **change)
        assert text_cache_path(str(tmp_path), other) != text_cache_path(str(tmp_path), t)
        enc = TextEncoder(max_length=other["max_length"], embed_dim=8)
        load_text_cache(enc, str(tmp_path), other)
        assert enc.cache_state() == {}
    # a file larger than the model's in-memory bound: the most recent part, with a warning
    small = TextEncoder(max_length=16, embed_dim=8, cache_max_mb=0.008)
    with pytest.warns(UserWarning, match=r"4 captions, but model.text.cache_max_mb=0.008 keeps only \d"):
        load_text_cache(small, str(tmp_path), dict(t, cache_max_mb=0.008))
    assert 0 < small.cache_info()["captions"] < 4
    # a file written before packing (one tensor per caption) loads the same
    os.makedirs(tmp_path / "old" / "text_cache")
    torch.save(cache, text_cache_path(str(tmp_path / "old"), t))
    old_format = TextEncoder(max_length=16, embed_dim=8)
    load_text_cache(old_format, str(tmp_path / "old"), t)
    loaded = TextEncoder(max_length=16, embed_dim=8)
    load_text_cache(loaded, str(tmp_path), t)
    assert old_format._cache.keys() == loaded._cache.keys() == texts
    for c in texts:
        assert torch.equal(old_format._cache[c][0], loaded._cache[c][0])
    # a trainable backbone never uses it
    build_text_cache(str(tmp_path / "trainable"), dict(t, freeze=False), all_captions({"train": Split()}))
    assert not (tmp_path / "trainable").exists()


@pytest.mark.parametrize("pooled", [False, True])
def test_text_cache_pack_round_trip(pooled):
    g = torch.Generator().manual_seed(0)
    state = {f"caption {i}": (torch.randn(n, 4, generator=g).half(),
                              torch.randn(4, generator=g).half() if pooled else None)
             for i, n in enumerate([3, 7, 1, 5])}
    for copy in (False, True):
        back = unpack(pack(state), copy=copy)
        assert list(back) == list(state)
        for c, (h, p) in state.items():
            assert torch.equal(back[c][0], h)
            assert (back[c][1] is None) if p is None else torch.equal(back[c][1], p)
    storage = lambda d, c: d[c][0].untyped_storage().data_ptr()   # noqa: E731
    views, copies = unpack(pack(state)), unpack(pack(state), copy=True)
    assert storage(views, "caption 0") == storage(views, "caption 1")      # one tensor's views
    assert storage(copies, "caption 0") != storage(copies, "caption 1")


def test_disk_text_cache_under_bf16_is_its_own_file_and_close_to_fp32(tmp_path):
    class Split:
        base = type("B", (), {"items": [{"captions": ["a person walks", "someone jumps twice then claps"]}],
                              "action_prompts": {"walk": "a person walks"}})()

        def swapped(self, i):
            return ["someone claps then jumps twice"]

    t = {"pretrained": None, "max_length": 16, "pooling_strategy": "mean", "freeze": True,
         "unfreeze_last_n": 0, "cache_features": True, "disk_cache": True, "cache_max_mb": 512}
    build_text_cache(str(tmp_path), t, all_captions({"train": Split()}))
    build_text_cache(str(tmp_path), t, all_captions({"train": Split()}), precision="amp_bf16")
    fp32 = unpack(torch.load(text_cache_path(str(tmp_path), t)))
    bf16 = unpack(torch.load(text_cache_path(str(tmp_path), t, "amp_bf16")))
    assert text_cache_path(str(tmp_path), t, "amp_bf16") != text_cache_path(str(tmp_path), t)
    assert set(fp32) == set(bf16) == {"a person walks", "someone jumps twice then claps",
                                      "someone claps then jumps twice"}
    for c in fp32:                                   # the same hidden states, to bf16's precision
        h32, h16 = fp32[c][0].float(), bf16[c][0].float()
        assert h32.shape == h16.shape
        assert torch.nn.functional.cosine_similarity(h32, h16, dim=-1).min() > 0.99
        assert not torch.equal(h32, h16)


@pytest.mark.parametrize("kind", ["temporal", "attention", "local", "combined"])
def test_score_matrix_in_length_chunks_equals_one_pass(kind):
    from models.radar.sequence_similarity import SequenceSimilarity
    g = torch.Generator().manual_seed(1)
    Nr, Nt, T, L, D = 5, 11, 12, 9, 8
    radar = {"radar_features": torch.randn(Nr, D, generator=g), "radar_seq": torch.randn(Nr, T, D, generator=g),
             "radar_mask": torch.arange(T).expand(Nr, T) < torch.tensor([[12], [7], [12], [3], [9]])}
    lengths = torch.tensor([9, 2, 5, 9, 1, 3, 7, 4, 8, 2, 6])
    text = {"text_features": torch.randn(Nt, D, generator=g), "text_tokens": torch.randn(Nt, L, D, generator=g),
            "text_mask": torch.arange(L).expand(Nt, L) < lengths[:, None]}
    seq = SequenceSimilarity(D, kind, window_size=2)
    torch.nn.init.normal_(seq.fuse.weight, std=0.1)

    class Criterion:
        def global_scores(self, t, r):
            return t @ r.t()
    crit = Criterion()
    crit.seq = seq
    with torch.no_grad():
        want = text["text_features"] @ radar["radar_features"].t() + seq(
            radar["radar_seq"], radar["radar_mask"], text["text_tokens"], text["text_mask"]).t()
    for chunk in (1, 3, 32):
        torch.testing.assert_close(score_matrix(crit, radar, text, chunk=chunk), want, atol=1e-5, rtol=1e-5)
