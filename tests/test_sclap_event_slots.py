"""sCLAP event slots (issue 13: model.event_slots, loss.event_weight).

Off: the model, loss and gradients of the code before the slots, to the bit
(that code, exported from git, is the reference), and the generated audio,
template and diverse captions unchanged byte for byte. On: shapes, the
slot-structured dot product is the mean of the three cosines, L_evt is a
hand-computed InfoNCE, every trainable parameter gets a gradient (DDP needs
it), the event captions come in each clip's time order from the generator,
the manifest and T-SALM's stClotho JSONs, and data without them are refused
by name."""
import copy
import csv
import hashlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval as eval_script
import families.sclap as fam
import train_stage1
from data.cache import UserDataError
from data.sclap import captions as C
from data.sclap.dataset import STClothoDataset, collate
from data.sclap.generate import EVENT_COLUMNS, MANIFEST, generate
from data.sclap.manifest import read_split as read_manifest_split
from data.sclap.spatial import sector_of
from data.sclap.stclotho import read_split as read_stclotho_split
from families.sclap.evaluation import slot_order_metrics
from losses.clip_loss import ClipLoss
from losses.sclap_loss import SCLAPLoss, event_loss
from models.sclap.model import SCLAP
from models.sclap.slots import slot_structured
from tests.test_sclap_layouts import FE, make_manifest, make_stclotho
from training.config import REPO_ROOT, ConfigError, load_config

BEFORE = "b6f5b6e"   # the last commit before the event slots
GEN = dict(num_train=2, num_val=1, num_test=2, num_zeroshot=1, gen_seed=3, sample_rate=8000,
           clip_seconds=4.0, event_seconds=[0.6, 1.0], max_elevation=45.0, max_order=1, snr_db=[20, 30])
TINY = dict(embed_dim=32, channels=(8, 8, 16), temporal_heads=4)
CAPS = ["A dog barks on the left, and then a bell rings behind.",
        "Before a dog barks on the left, a bell rings behind.",
        "A dog barks on the right, and then a bell rings in front.",
        "Rain falls ahead, followed by someone clapping on the right.",
        "Someone claps on the right; shortly afterwards rain falls ahead.",
        "Rain falls behind, followed by someone clapping on the left."]

# run by the code at BEFORE (in a subprocess, from its exported tree) and by today's
REFERENCE = '''
import torch
import torch.nn.functional as F
from data.sclap.generate import generate
from losses.sclap_loss import SCLAPLoss
from models.sclap.model import SCLAP


def reference_run(caps, tiny, gen, out_dir):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SCLAP(**tiny)                         # train mode: dropout draws from the seeded RNG
    crit = SCLAPLoss([1.0, 0.5, 0.2, 0.2])
    g = torch.Generator().manual_seed(1)
    batch = {"feats": torch.randn(2, 3, 7, 24, 16, generator=g), "captions": caps,
             "plain_captions": [c.split(",")[0] + "." for c in caps],
             "doa": F.normalize(torch.randn(2, 3, 2, 3, generator=g), dim=-1),
             "caption_ids": torch.arange(6).view(2, 3), "plain_ids": torch.tensor([[0, 1, 0], [2, 3, 2]])}
    torch.manual_seed(2)
    feats = model(batch)
    loss, logs = crit(feats, batch, 4)
    loss.backward()
    for grammar in ("template", "diverse"):
        generate(dict(gen, captions=grammar, dir=f"{out_dir}/{grammar}"))
    return {"features": {k: v.detach() for k, v in feats.items()}, "loss": loss.detach(),
            "logs": {k: torch.as_tensor(v) for k, v in logs.items()},
            "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None}}
'''


def _run_reference(out_dir):
    ns = {}
    exec(REFERENCE, ns)
    return ns["reference_run"](CAPS, TINY, GEN, out_dir)


@pytest.fixture(scope="module")
def before(tmp_path_factory):
    """The code at BEFORE exported from git, run on the fixed batch and generator config."""
    tmp = tmp_path_factory.mktemp("before")
    tree = tmp / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", BEFORE, "models", "losses", "data", "training"],
                             cwd=REPO_ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    script = (REFERENCE + "\nimport sys\nres = reference_run(*__import__('json').loads(sys.argv[1]), sys.argv[2])"
              "\ntorch.save(res, sys.argv[2] + '/ref.pt')\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tree))
    res = subprocess.run([sys.executable, "-c", script, json.dumps([CAPS, TINY, GEN]), str(tmp)],
                         cwd=tree, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp, torch.load(tmp / "ref.pt", weights_only=False)


def test_off_is_the_code_before_to_the_bit(before, tmp_path, one_torch_thread):
    ref_dir, ref = before
    now = _run_reference(str(tmp_path))
    assert now["features"].keys() == ref["features"].keys()
    for k, v in ref["features"].items():
        assert torch.equal(now["features"][k], v), k
    assert torch.equal(now["loss"], ref["loss"]) and now["logs"].keys() == ref["logs"].keys()
    assert now["grads"].keys() == ref["grads"].keys()
    for k, v in ref["grads"].items():
        assert torch.equal(now["grads"][k], v), k


def _digests(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".wav"):
                with open(os.path.join(d, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(d, f), root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _rows(root):
    with open(os.path.join(root, MANIFEST)) as f:
        return list(csv.DictReader(f))


def test_generated_audio_and_captions_unchanged_event_captions_added(before, tmp_path, one_torch_thread):
    ref_dir, _ = before
    for grammar in ("template", "diverse"):
        generate(dict(GEN, captions=grammar, dir=str(tmp_path / grammar)))
        old, new = ref_dir / grammar, tmp_path / grammar
        assert _digests(new) == _digests(old) and len(_digests(new)) == 3 * 5 + 1, grammar
        old_rows, new_rows = _rows(old), _rows(new)
        assert [{k: r[k] for k in o} for r, o in zip(new_rows, old_rows)] == old_rows, grammar
        added = set(new_rows[0]) - set(old_rows[0])
        assert added == (set(EVENT_COLUMNS) if grammar == "diverse" else set()), grammar


def test_generated_event_captions_follow_each_variants_time_order(tmp_path):
    generate(dict(GEN, captions="diverse", dir=str(tmp_path)))
    items, _ = read_manifest_split(str(tmp_path), "train")
    for it in items:
        pos, neg_t, neg_s = (it[v]["event_captions"] for v in ("pos", "neg_t", "neg_s"))
        assert [len(c) for c in pos] == [C.CAPTIONS_PER_ITEM] * 2
        assert neg_t == pos[::-1]                        # B first, word for word pos's second
        for v in ("pos", "neg_t", "neg_s"):
            row = it[v]
            for e in (1, 2):
                words = C.clauses(row[f"event{e}_class"]) + C.SOUNDS[row[f"event{e}_class"]]["nominals"]
                dirs = C.DIRECTIONS[sector_of(row[f"event{e}_azimuth"])]
                for cap in row["event_captions"][e - 1]:
                    low = cap.lower()
                    assert any(w in low for w in words) and any(f" {d}" in low for d in dirs), (v, e, cap)
        # neg_s: the same words from other directions
        assert all(a != b for a, b in zip(pos[0], neg_s[0]))


def test_the_diverse_folder_is_renamed_the_template_one_kept():
    old = _old_family()
    cfg = load_config(["--family", "sclap"])
    assert fam.data_dir(cfg) != old.data_dir(cfg)                 # diverse: a new manifest, a new folder
    assert fam.gen_params(cfg)["diverse_grammar"] == C.VERSION == 2
    tmpl = load_config(["--family", "sclap", "--data.captions", "template"])
    assert fam.data_dir(tmpl) == old.data_dir(tmpl) and fam.gen_params(tmpl) == old.gen_params(tmpl)


def _old_family():
    src = subprocess.run(["git", "show", f"{BEFORE}:families/sclap/__init__.py"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "old_sclap_family_slots.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("old_sclap_family_slots", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _slot_batch(B=2, with_events=True):
    g = torch.Generator().manual_seed(1)
    batch = {"feats": torch.randn(B, 3, 7, 24, 16, generator=g), "captions": CAPS[:3 * B],
             "plain_captions": [c.split(",")[0] + "." for c in CAPS[:3 * B]],
             "doa": F.normalize(torch.randn(B, 3, 2, 3, generator=g), dim=-1),
             "caption_ids": torch.arange(3 * B).view(B, 3), "plain_ids": torch.arange(3 * B).view(B, 3)}
    if with_events:
        ev = []
        for i in range(B):   # pos (x, y), neg_t (y, x), neg_s (x', y')
            x, y, x2, y2 = (f"Item {i} sound {s}." for s in ("x", "y", "x2", "y2"))
            ev += [x, y, y, x, x2, y2]
        batch["event_captions"] = ev
        ids = {c: n for n, c in enumerate(dict.fromkeys(ev))}
        batch["event_ids"] = torch.tensor([ids[c] for c in ev]).view(B, 3, 2)
    return batch


def test_slot_shapes_and_the_structured_dot_is_the_mean_of_three_cosines(one_torch_thread):
    torch.manual_seed(0)
    model = SCLAP(**TINY, event_slots=True).eval()
    with torch.no_grad():
        out = model(_slot_batch())
    D = 32
    assert out["audio"].shape == out["text"].shape == (2, 3, 3 * D)
    for k in ("audio_slots", "text_slots", "event"):
        assert out[k].shape == (2, 3, 2, D), k
    assert out["plain"].shape == (2, 3, D) and out["mod_audio"].shape == (2, 3)
    # the embedding is the three unit parts, each scaled by 1/sqrt(3)
    for side in ("audio", "text"):
        for k in range(2):
            part = out[side][..., (k + 1) * D:(k + 2) * D] * math.sqrt(3)
            torch.testing.assert_close(part, F.normalize(out[f"{side}_slots"][:, :, k], dim=-1))
    torch.testing.assert_close(out["audio"].norm(dim=-1), torch.ones(2, 3))
    # encode_text / encode_audio (what evaluation and zero-shot use) give the same embeddings
    torch.testing.assert_close(model.encode_text(CAPS).view(2, 3, -1), out["text"])
    # hand computation on random parts
    g = torch.Generator().manual_seed(3)
    a, t = torch.randn(5, D, generator=g), torch.randn(5, D, generator=g)
    sa, st = torch.randn(5, 2, D, generator=g), torch.randn(5, 2, D, generator=g)
    dot = (slot_structured(a, sa) * slot_structured(t, st)).sum(-1)
    cos = F.cosine_similarity
    expect = (cos(a, t, dim=-1) + cos(sa[:, 0], st[:, 0], dim=-1) + cos(sa[:, 1], st[:, 1], dim=-1)) / 3
    torch.testing.assert_close(dot, expect)
    # pos and neg_t audio with the same main vector and swapped slots differ only through the slots
    swapped = slot_structured(a, sa.flip(1))
    diff = (slot_structured(a, sa) * slot_structured(t, st)).sum(-1) - (swapped * slot_structured(t, st)).sum(-1)
    torch.testing.assert_close(diff, (cos(sa[:, 0], st[:, 0], dim=-1) + cos(sa[:, 1], st[:, 1], dim=-1)
                                      - cos(sa[:, 1], st[:, 0], dim=-1) - cos(sa[:, 0], st[:, 1], dim=-1)) / 3)


def _infonce(x, y, ids, s):
    """Symmetric InfoNCE with targets uniform over same-id items, written out with loops."""
    n = len(x)
    total = 0.0
    for a, b in ((x, y), (y, x)):
        for i in range(n):
            logits = [s * float(a[i] @ b[j]) for j in range(n)]
            lse = math.log(sum(math.exp(v) for v in logits))
            pos = [j for j in range(n) if ids[j] == ids[i]]
            total += -sum(logits[j] - lse for j in pos) / len(pos) / n
    return total / 2


def test_event_loss_is_the_hand_computed_infonce():
    g = torch.Generator().manual_seed(4)
    B, D, s = 2, 4, 3.0
    audio_slots, text_slots, event = (torch.randn(B, 3, 2, D, generator=g) for _ in range(3))
    ids = _slot_batch(B)["event_ids"]
    # duplicates: neg_t's first event caption is pos's second (same id)
    assert ids[0, 1, 0] == ids[0, 0, 1] and ids[0, 1, 1] == ids[0, 0, 0]
    got = event_loss(ClipLoss(), audio_slots, text_slots, event, ids, torch.tensor(s))
    expect = 0.0
    for k in range(2):
        c = F.normalize(event[:, :, k], dim=-1).flatten(0, 1)
        i = ids[:, :, k].flatten().tolist()
        for side in (audio_slots, text_slots):
            expect += _infonce(F.normalize(side[:, :, k], dim=-1).flatten(0, 1), c, i, s) / 4
    assert got.item() == pytest.approx(expect, rel=1e-5)
    # and in the criterion: total = today's total + w_evt * L_evt
    f = {k: torch.randn(B, 3, D, generator=g) for k in ("audio", "text", "sed", "plain")}
    f.update(doa=torch.randn(B, 3, 2, 3, generator=g), audio_slots=audio_slots, text_slots=text_slots,
             event=event)
    batch = dict(_slot_batch(B), doa=F.normalize(torch.randn(B, 3, 2, 3, generator=g), dim=-1))
    base, logs0 = SCLAPLoss()(f, batch, 5)
    on, logs = SCLAPLoss(event_weight=0.5)(f, batch, 5)
    scale = logs["logit_scale"]
    assert logs["loss_evt"].item() == pytest.approx(float(event_loss(ClipLoss(), audio_slots, text_slots,
                                                                      event, ids, scale)), rel=1e-6)
    assert on.item() == pytest.approx(base.item() + 0.5 * logs["loss_evt"].item(), rel=1e-6)
    assert "loss_evt" not in logs0
    with pytest.raises(ValueError, match="model.event_slots true"):
        SCLAPLoss(event_weight=0.5)({k: v for k, v in f.items() if k != "event"}, batch, 5)


@pytest.mark.parametrize("w_evt, with_events", [(0.5, True), (0.0, False)])
def test_every_trainable_parameter_gets_a_gradient(w_evt, with_events, one_torch_thread):
    """DDP (find_unused_parameters false) needs a gradient for every parameter
    at every step: with L_evt, and with the slots trained by the triplet losses alone."""
    torch.manual_seed(0)
    model = SCLAP(**TINY, event_slots=True)
    crit = SCLAPLoss(event_weight=w_evt)
    batch = _slot_batch(with_events=with_events)
    loss, logs = crit(model(batch), batch, 4)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    for head in (model.audio_slots, model.text_slots):
        assert all(p.grad.abs().sum() > 0 for p in head.parameters())
    assert ("loss_evt" in logs) == with_events


def test_slot_order_metrics_count_clips_whose_slots_hold_the_events_in_order():
    g = torch.Generator().manual_seed(5)
    event = torch.randn(4, 3, 2, 16, generator=g)
    audio = event.clone()
    audio[:3] = audio[:3].flip(2)                        # 3 of 4 items: every clip's slots swapped
    text = event + 0.01 * torch.randn(4, 3, 2, 16, generator=g)
    m = slot_order_metrics({"event": event, "audio_slots": audio, "text_slots": text})
    assert m["slot_order_acc_audio"] == pytest.approx(3 / 12) and m["slot_order_acc_text"] == 1.0


def test_stclotho_event_captions_come_from_the_segments_in_time_order(tmp_path):
    numbers = make_stclotho(str(tmp_path), splits=(("train", 2),), sr=8000, seg_s=(1.0, 1.0))
    items, _ = read_stclotho_split(str(tmp_path), "train")
    for it, num in zip(items, numbers["train"]):
        noise = [f"noise n{num} c{k}." for k in range(5)]
        tone = [f"a tone n{num} c{k}." for k in range(5)]
        assert it["pos"]["event_captions"] == [noise, tone]
        assert it["neg_t"]["event_captions"] == [tone, noise]       # its JSON's segments: tone first
        assert it["neg_s"]["event_captions"] == [noise, tone]
    # one JSON without the field: refused by file and field when the event slots ask for it
    meta = os.path.join(str(tmp_path), "temporal_spatial_audio_text", "stClotho_negative", "metadata", "train",
                        "temporal", f"temporal_negative_{numbers['train'][1]}.json")
    with open(meta) as f:
        d = json.load(f)
    del d["audio_segments"][1]["metadata"]["spatialized_caption"]
    with open(meta, "w") as f:
        json.dump(d, f)
    with pytest.raises(UserDataError, match=r"temporal_negative_\d+\.json: field "
                                            r"'audio_segments\[1\]\.metadata\.spatialized_caption'"):
        STClothoDataset(str(tmp_path), "train", FE, cache_dir=str(tmp_path / "cache"), layout="stclotho",
                        event_captions=True, log=lambda *a: None)


def test_a_manifest_without_event_captions_is_refused_by_file_and_field(tmp_path):
    root = tmp_path / "user"
    make_manifest(str(root), counts=(("train", 2), ("valid", 1), ("test", 1)), sr=8000)
    manifest = os.path.join(str(root), "stclotho_manifest.csv")
    with pytest.raises(UserDataError, match=f"{manifest}: column 'event1_caption'"):
        STClothoDataset(str(root), "train", FE, cache_dir=str(tmp_path / "cache"), event_captions=True)
    cfg = load_config(["--family", "sclap", "--data.root", str(root), "--data.generate", "false",
                       "--data.cache_dir", str(tmp_path / "cache"), "--model.event_slots", "true",
                       "--loss.event_weight", "0.5"])
    with pytest.raises(UserDataError, match="column 'event1_caption'.*loss.event_weight"):
        fam.build_datasets(cfg)
    # the columns there, one field empty: its line is named
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["event1_caption"], r["event2_caption"] = "a noise.", "a tone."
    rows[2]["event2_caption"] = ""
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(UserDataError, match=f"{manifest}, line 4: field 'event2_caption'"):
        STClothoDataset(str(root), "train", FE, cache_dir=str(tmp_path / "cache"), event_captions=True)
    # event_weight > 0 without the slots is refused too
    with pytest.raises(ConfigError, match="model.event_slots true"):
        fam.build_criterion(load_config(["--family", "sclap", "--loss.event_weight", "0.5"]))


def test_the_dataset_hands_caption_k_of_each_event_in_order(tmp_path):
    generate(dict(GEN, captions="diverse", dir=str(tmp_path)))
    fe = dict(FE, sample_rate=8000, f_max=4000.0)
    ds = STClothoDataset(str(tmp_path), "train", fe, event_captions=True)
    plain = STClothoDataset(str(tmp_path), "train", fe)
    ds.set_epoch(3)
    plain.set_epoch(3)
    for i in range(len(ds)):
        item, old = ds[i], plain[i]
        k = ds.items[i]["pos"]["captions"].index(item["captions"][0])
        assert item["captions"] == old["captions"] and "event_captions" not in old
        assert item["event_captions"] == [[ds.items[i][v]["event_captions"][e][k] for e in (0, 1)]
                                          for v in ("pos", "neg_t", "neg_s")]
    batch = collate([ds[0], ds[1]])
    assert len(batch["event_captions"]) == 12 and batch["event_ids"].shape == (2, 3, 2)
    assert batch["event_ids"][0, 1, 0] == batch["event_ids"][0, 0, 1]     # neg_t's first = pos's second
    assert batch["event_captions"][:2] == ds[0]["event_captions"][0]


def test_a_config_without_the_keys_builds_todays_model(one_torch_thread):
    cfg = load_config(["--family", "sclap"])
    old = copy.deepcopy(cfg)
    del old["model"]["event_slots"], old["loss"]["event_weight"]
    model, crit = fam.build_model(old), fam.build_criterion(old)
    assert not model.event_slots and crit.event_weight == 0.0
    assert not any("slots" in n for n, _ in model.named_parameters())
    assert model.state_dict().keys() == fam.build_model(cfg).state_dict().keys()


RUN = ["--family", "sclap", "--data.num_train", "8", "--data.num_val", "2", "--data.num_test", "2",
       "--data.num_zeroshot", "2", "--data.gen_workers", "1", "--data.max_order", "2",
       "--model.channels", "[8,8,16]", "--model.embed_dim", "32", "--model.temporal_heads", "4",
       "--model.dropout", "0.0", "--precision", "fp32", "--workers", "0", "--batch-size", "4",
       "--val-every", "2", "--save-every", "0", "--eval.figures", "false",
       "--model.event_slots", "true", "--loss.event_weight", "0.5"]


def test_slots_train_resume_and_evaluate_from_the_command_line(tmp_path, one_torch_thread):
    """train_stage1 with the two keys: 4 steps straight = 2 steps, resume, 2 more
    (validation at step 2 and 4 included); eval.py reports the slot keys."""
    args = RUN + ["--data.root", str(tmp_path / "data"), "--logs", str(tmp_path / "logs")]
    train_stage1.main(args + ["--name", "straight", "--max-steps", "4"])
    train_stage1.main(args + ["--name", "halves", "--max-steps", "2"])
    train_stage1.main(args + ["--name", "halves", "--max-steps", "4", "--resume", "latest"])
    val = [json.loads(line) for line in open(tmp_path / "logs" / "halves" / "results.jsonl")]
    assert [r["step"] for r in val] == [2, 4] and all("val/slot_order_acc_audio" in r for r in val)
    ck = {n: torch.load(tmp_path / "logs" / n / "checkpoints" / "latest.pt", weights_only=False)
          for n in ("straight", "halves")}
    assert ck["halves"]["train_state"]["step"] == 4
    assert any(k.startswith("audio_slots.") for k in ck["straight"]["model"])
    for part in ("model", "criterion"):
        for k, v in ck["straight"][part].items():
            torch.testing.assert_close(ck["halves"][part][k], v, atol=1e-6, rtol=1e-5, msg=k)
    out = tmp_path / "eval"
    eval_script.main(["--checkpoint", str(tmp_path / "logs" / "straight" / "checkpoints" / "latest.pt"),
                      "--out", str(out), "--device", "cpu"])
    written = json.loads((out / "metrics.json").read_text())
    for k in ("slot_order_acc_audio", "slot_order_acc_text", "temporal_acc", "heldout_temporal_acc",
              "zeroshot_direction_acc"):
        assert np.isfinite(written[k]), k
