"""The frozen held-out phrasing of sCLAP (issue 13): kept apart from both
training grammars by construction (checked over their whole inventories),
order-swapped captions swap the TIME order also in reversed-surface frames,
and evaluate reports heldout_ keys equal to a hand computation."""
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import families.sclap as fam
from data.sclap import captions as C
from data.sclap import heldout as H
from data.sclap.dataset import collate
from data.sclap.generate import PLAIN_TEMPLATES, SINGLE_TEMPLATE, SPATIAL_TEMPLATES
from data.sclap.sounds import CLASS_NAMES, SOUND_CLASSES
from data.sclap.spatial import SECTOR_CENTRES_DEG, SECTOR_WORDS
from families.sclap.evaluation import heldout_metrics
from training.config import load_config

SLOTS = re.compile(r"\{[A-Za-z]+\}")


def norm(s):
    """Lower case, punctuation to spaces, single spaces, padded: ' a b '."""
    return " " + " ".join(re.sub(r"[^a-z'\- ]", " ", s.lower()).split()) + " "


def pieces(frame):
    """The literal connector text between a frame's slots (non-empty, normalised)."""
    return [norm(p) for p in SLOTS.split(frame) if norm(p).strip()]


def training_inventory():
    """Every frame, sound wording and direction wording of both training
    grammars (diverse and template) and of the config's zero-shot prompts."""
    cfg = load_config(["--family", "sclap"])
    frames = C.FRAMES + C.SINGLE_FRAMES + SPATIAL_TEMPLATES + PLAIN_TEMPLATES + [SINGLE_TEMPLATE,
                                                                              cfg["eval"]["zeroshot_prompt"]]
    sounds = {n: C.clauses(n) + C.SOUNDS[n]["nominals"] + SOUND_CLASSES[n][1] for n in CLASS_NAMES}
    dirs = [C.DIRECTIONS[s] + [f"from the {w}", f"to the {w}", w, cfg["eval"]["directions"][s]]
            for s, w in enumerate(SECTOR_WORDS)]
    return frames, sounds, dirs


def vocabulary(frames, sounds, dirs):
    text = " ".join(frames + [w for ws in sounds.values() for w in ws] + [w for ws in dirs for w in ws])
    return set(norm(SLOTS.sub(" ", text)).split())


def test_heldout_shares_no_frame_or_connector_with_training():
    frames, sounds, dirs = training_inventory()
    vocab = vocabulary(frames, sounds, dirs)
    train_pieces = {p for f in frames for p in pieces(f)}
    held = H.FRAMES + [H.ZEROSHOT_FRAME]
    assert not set(held) & set(frames)
    for f in held:
        for h in pieces(f):
            for t in train_pieces:                   # neither connector contains the other
                assert h not in t and t not in h, (f, h, t)
            assert set(h.split()) - vocab, (f, h)    # and each has a word training never writes


def test_every_sound_and_direction_has_wordings_training_never_produces():
    frames, sounds, dirs = training_inventory()
    vocab = vocabulary(frames, sounds, dirs)
    train_sound = [norm(w) for ws in sounds.values() for w in ws]
    train_dir = [norm(w) for ws in dirs for w in ws]
    assert set(H.SOUNDS) == set(CLASS_NAMES) and len(H.DIRECTIONS) == len(SECTOR_WORDS)
    for name, s in H.SOUNDS.items():
        for w in s["clauses"] + s["nominals"]:
            assert not any(norm(w) in t for t in train_sound), (name, w)
            assert set(norm(w).split()) - vocab, (name, w)
    for sector, ws in enumerate(H.DIRECTIONS):
        for w in ws:
            assert not any(norm(w) in t for t in train_dir + train_sound), (sector, w)
            assert set(norm(w).split()) - vocab, (sector, w)
    # and no training caption can contain one: every training caption is a frame
    # filled with wordings + directions, and each held-out wording has a word none of them has


def _rows(classes, sectors):
    """Manifest-like rows of one item: event1 plays first."""
    def row(c, s):
        return dict(item_id="test_00007", event1_class=c[0], event2_class=c[1],
                    event1_azimuth=SECTOR_CENTRES_DEG[s[0]] + 10.0,
                    event2_azimuth=(SECTOR_CENTRES_DEG[s[1]] - 10.0) % 360)
    (a, b), (sa, sb), (sa2, sb2) = classes, sectors["pos"], sectors["neg_s"]
    return {"pos": row((a, b), (sa, sb)), "neg_t": row((b, a), (sb, sa)), "neg_s": row((a, b), (sa2, sb2))}


def _slots(caption, frame):
    """The texts of the events first and second in TIME, read back through the frame."""
    parts = re.split(r"(\{[ABab]\})", frame)
    rx = "".join(f"(?P<{p[1]}>.+)" if C.SLOT.fullmatch(p) else re.escape(p) for p in parts)
    m = re.fullmatch(rx, caption[0].lower() + caption[1:-1])
    assert m, (frame, caption)
    return [m.groupdict().get(k) or m.groupdict()[k.lower()] for k in "AB"]


def _parse(caption, frame):
    """((class, sector) first in TIME, second), read back through the frame."""
    out = []
    for text in _slots(caption, frame):
        found = {(n, s) for n, lex in H.SOUNDS.items() for w in lex["clauses"] + lex["nominals"]
                 if text.startswith(w + " ") for s, d in enumerate(H.DIRECTIONS) if text[len(w) + 1:] in d}
        assert len(found) == 1, (caption, text, found)
        out.append(found.pop())
    return tuple(out)


@pytest.mark.parametrize("frame", H.FRAMES)
def test_heldout_negatives_swap_time_order_in_every_frame(frame, monkeypatch):
    monkeypatch.setattr(H, "FRAMES", [frame])
    sectors = {"pos": (1, 5), "neg_s": (6, 3)}
    caps = H.item_captions("test_00007", _rows(("siren", "rain"), sectors))
    assert _parse(caps["pos"], frame) == (("siren", 1), ("rain", 5))
    assert _parse(caps["neg_t"], frame) == (("rain", 5), ("siren", 1))
    assert _parse(caps["neg_s"], frame) == (("siren", 6), ("rain", 3))
    assert _slots(caps["neg_t"], frame) == _slots(caps["pos"], frame)[::-1]   # the same phrases, swapped
    # the surface order follows the frame: reversed frames name the later event first
    low = caps["neg_t"].lower()
    pos_of = {n: min(low.find(w) for w in H.SOUNDS[n]["clauses"] + H.SOUNDS[n]["nominals"] if w in low)
              for n in ("siren", "rain")}
    assert (pos_of["siren"] < pos_of["rain"]) == C.is_reversed(frame)


def test_heldout_is_deterministic_per_item_and_uses_every_frame():
    rows = _rows(("dog", "bell"), {"pos": (0, 4), "neg_s": (2, 6)})
    first = [H.item_captions(f"test_{i:05d}", rows)["pos"] for i in range(300)]
    assert [H.item_captions(f"test_{i:05d}", rows)["pos"] for i in reversed(range(300))][::-1] == first
    used = {f for f in H.FRAMES for c in first if _matches(c, f)}
    assert used == set(H.FRAMES) and sum(map(C.is_reversed, H.FRAMES)) >= 3
    assert len(H.zeroshot_prompts()) == 8 and len(set(H.zeroshot_prompts())) == 8


def _matches(caption, frame):
    try:
        _parse(caption, frame)
        return True
    except AssertionError:
        return False


def test_data_without_event_classes_get_no_heldout_keys(capsys):
    rows = _rows(("dog", "bell"), {"pos": (0, 4), "neg_s": (2, 6)})
    for r in rows.values():
        r["event1_class"] = r["event2_class"] = ""          # T-SALM's stClotho has none
    ds = SimpleNamespace(items=[rows], root="/nowhere/stclotho", split="test", layout="stclotho")
    assert heldout_metrics(None, ds, None, None, None) == {}
    assert heldout_metrics(None, ds, None, None, None) == {}
    assert capsys.readouterr().out.count("heldout_ metrics skipped") == 1    # said once


TINY = ["--family", "sclap", "--data.num_train", "2", "--data.num_val", "2", "--data.num_test", "5",
        "--data.num_zeroshot", "3", "--data.gen_workers", "1", "--data.max_order", "1",
        "--model.channels", "[8,8,16]", "--model.embed_dim", "32", "--model.temporal_heads", "4",
        "--precision", "fp32", "--workers", "0", "--eval.figures", "false"]


def test_evaluate_reports_heldout_keys_equal_to_a_hand_computation(tmp_path):
    cfg = load_config(TINY + ["--data.root", str(tmp_path / "data")])
    assert cfg["data"]["captions"] == "diverse"
    fam.prepare_data(cfg)
    torch.manual_seed(0)
    test = fam.build_datasets(cfg)["test"]
    model, crit = fam.build_model(cfg), fam.build_criterion(cfg)
    m = fam.evaluate(model, crit, test, cfg, torch.device("cpu"))
    for k in ("t2a_R@1", "t2a_R@5", "t2a_R@10", "a2t_R@1", "a2t_R@10", "temporal_acc", "spatial_acc",
              "temporal_acc_text", "spatial_acc_text", "zeroshot_direction_acc"):
        assert f"heldout_{k}" in m, k
    model.eval()
    temporal, spatial, texts, audios = [], [], [], []
    with torch.no_grad():
        for i in range(len(test)):
            a = F.normalize(model(collate([test[i]]))["audio"][0], dim=-1)               # [3, D]
            caps = H.item_captions(test.items[i]["pos"]["item_id"], test.items[i])
            t = F.normalize(model.encode_text([caps[v] for v in ("pos", "neg_t", "neg_s")]), dim=-1)
            temporal.append(float(t[0] @ a[0] > t[0] @ a[1]))
            spatial.append(float(t[0] @ a[0] > t[0] @ a[2]))
            texts.append(t[0])
            audios.append(a[0])
    sim = torch.stack(texts) @ torch.stack(audios).T                                    # [N, N]
    r1 = float((sim.argmax(1) == torch.arange(len(test))).float().mean())
    assert m["heldout_temporal_acc"] == pytest.approx(np.mean(temporal))
    assert m["heldout_spatial_acc"] == pytest.approx(np.mean(spatial))
    assert m["heldout_t2a_R@1"] == pytest.approx(r1)
