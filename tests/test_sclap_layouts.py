"""sCLAP real layouts: small folders laid out as T-SALM's stClotho (FLAC, 24 kHz,
per-clip JSON, splits train/valid/test, negatives matched by trailing digits)
and as the project's manifest (WAV, 16 kHz), read by the one loader: layout
detection and its log line, the no-match error, FLAC read and resampled to the
model's rate, the valid split, all five captions, the long-clip policies."""
import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

import families.sclap as fam
from data.cache import UserDataError
from data.sclap import dataset as sclap_dataset
from data.sclap.audio_io import AudioFileError, read_foa
from data.sclap.dataset import STClothoDataset
from data.sclap.manifest import MANIFEST_COLUMNS
from data.sclap.spatial import foa_encode
from data.sclap.stclotho import STClothoError
from models.sclap.frontend import SpatialFrontEnd
from training.config import load_config

FE = dict(sample_rate=16000, clip_seconds=4.0, n_fft=1024, hop_length=640, n_mels=32, f_min=20.0, f_max=8000.0)
TSAT = "temporal_spatial_audio_text"


def _segment(kind, seconds, sr, azi, seed):
    """A tone (kind 'tone') or noise burst train ('noise') from azimuth azi: FOA [4, n]."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    s = 0.3 * np.sin(2 * np.pi * 500 * t) if kind == "tone" else \
        0.3 * rng.standard_normal(n) * (np.sin(2 * np.pi * 3 * t) > 0)
    return foa_encode(s, azi, 10.0)


def _json(path, tsc, caps_a, caps_b, azi, seg_s):
    meta = {"temporal_spatial_caption": tsc,
            "audio_segments": [{"metadata": {"caption": caps_a, "spatialized_caption": caps_a,
                                             "azi": azi[0], "ele": 10.0, "ori_audio_duration": seg_s[0],
                                             "direction": "The sound is coming from the east."}},
                               {"metadata": {"caption": caps_b, "spatialized_caption": caps_b,
                                             "azi": str(azi[1]), "ele": [10.0], "ori_audio_duration": seg_s[1],
                                             "direction": "The sound is coming from the north."}}]}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(meta, f)


def make_stclotho(base, splits=(("train", 4), ("valid", 2), ("test", 2)), sr=24000, seg_s=(3.0, 3.0),
                  ext=".flac"):
    """T-SALM's stClotho under base/temporal_spatial_audio_text. Item numbers are
    not contiguous (7, 10, 13, ...) and the negatives are written in reverse
    order, so only the trailing digits pair them. Captions name the number and
    the caption index: "... n<number> c<k> ...". Returns {split: [numbers]}."""
    root = os.path.join(base, TSAT)
    numbers = {}
    for s_i, (split, count) in enumerate(splits):
        numbers[split] = [f"{7 + 3 * j + 100 * s_i:06d}" for j in range(count)]
        for j, num in enumerate(numbers[split]):
            a, b = _segment("noise", seg_s[0], sr, 90.0, j), _segment("tone", seg_s[1], sr, 0.0, j)
            caps_a = [f"noise n{num} c{k}." for k in range(5)]
            caps_b = [f"a tone n{num} c{k}." for k in range(5)]
            clips = {  # (folder, stem) -> (audio, captions, directions, segment durations)
                ("pos", f"temporal_{num}"): (np.concatenate([a, b], 1), (caps_a, caps_b), (90, 0), seg_s),
                ("temporal", f"temporal_negative_{num}"): (np.concatenate([b, a], 1), (caps_b, caps_a),
                                                            (0, 90), seg_s[::-1]),
                ("spatial", f"spatial_negative_{num}"): (
                    np.concatenate([_segment("noise", seg_s[0], sr, 270.0, j),
                                    _segment("tone", seg_s[1], sr, 180.0, j)], 1), (caps_a, caps_b), (270, 180), seg_s),
            }
            for (folder, stem), (x, (ca, cb), azi, dur) in reversed(list(clips.items())):
                if folder == "pos":
                    audio_dir = os.path.join(root, "Clotho", "audio", split)
                    meta_dir = os.path.join(root, "Clotho", "metadata", split)
                else:
                    audio_dir = os.path.join(root, "stClotho_negative", "audio", split, folder)
                    meta_dir = os.path.join(root, "stClotho_negative", "metadata", split, folder)
                os.makedirs(audio_dir, exist_ok=True)
                sf.write(os.path.join(audio_dir, stem + ext), x.T.astype(np.float32), sr,
                         subtype="PCM_16")
                tsc = [f"{folder} n{num} c{k}: {ca[k][:-1]} from the {azi[0]}, then {cb[k][:-1]} from the "
                       f"{azi[1]}." for k in range(5)]
                _json(os.path.join(meta_dir, stem + ".json"), tsc, ca, cb, list(azi), list(dur))
    return numbers


def make_manifest(root, counts=(("train", 4), ("valid", 2), ("test", 2)), sr=16000, seconds=4.0, extra_captions=0):
    """The manifest layout written by hand: WAV at 16 kHz, no class or onset columns,
    the val split named 'valid'; extra_captions: caption_2 ... columns."""
    cols = [c for c in MANIFEST_COLUMNS if "class" not in c and "onset" not in c]
    cols += [f"caption_{k}" for k in range(2, 2 + extra_captions)]
    rows = []
    for split, count in counts:
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for j in range(count):
            half = seconds / 2
            a, b = _segment("noise", half, sr, 90.0, j), _segment("tone", half, sr, 0.0, j)
            for v, x, azi in (("pos", np.concatenate([a, b], 1), (90, 0)),
                              ("neg_t", np.concatenate([b, a], 1), (0, 90)),
                              ("neg_s", np.concatenate([_segment("noise", half, sr, 270.0, j),
                                                        _segment("tone", half, sr, 180.0, j)], 1), (270, 180))):
                name = f"{split}/{split}{j}_{v}.wav"
                sf.write(os.path.join(root, name), x.T.astype(np.float32), sr, subtype="PCM_16")
                rows.append(dict(split=split, item_id=f"{split}{j}", variant=v, file_name=name,
                                 caption=f"{v} {split}{j}: noise from {azi[0]}, then a tone from {azi[1]}.",
                                 plain_caption=f"noise {split}{j}, then a tone.", event1_azimuth=azi[0],
                                 event1_elevation=10, event2_azimuth=azi[1], event2_elevation=10,
                                 **{f"caption_{k}": f"{v} {split}{j} caption {k}."
                                    for k in range(2, 2 + extra_captions)}))
    with open(os.path.join(root, "stclotho_manifest.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def user_cfg(root, tmp_path, *extra):
    return load_config(["--family", "sclap", "--data.root", str(root), "--data.generate", "false",
                        "--data.cache_dir", str(tmp_path / "cache"), *extra])


@pytest.fixture(scope="module")
def stclotho(tmp_path_factory):
    base = tmp_path_factory.mktemp("datasets")
    return str(base), make_stclotho(str(base))


def test_stclotho_detected_and_named_in_the_log(stclotho, tmp_path, capsys):
    base, _ = stclotho
    for root in (base, os.path.join(base, TSAT)):      # the datasets folder or the one inside it
        fam.prepare_data(user_cfg(root, tmp_path))
        out = capsys.readouterr().out
        assert f"data.root {root}: stclotho layout (detected; --data.format manifest | stclotho" in out
    fam.prepare_data(user_cfg(base, tmp_path, "--data.format", "stclotho"))
    assert "stclotho layout (forced by --data.format)" in capsys.readouterr().out


def test_a_folder_of_no_layout_lists_what_was_looked_for(tmp_path, stclotho):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(UserDataError) as e:
        fam.prepare_data(user_cfg(tmp_path / "mine", tmp_path))
    msg = str(e.value)
    assert "matches none" in msg and "found: notes.txt" in msg
    assert "manifest: stclotho_manifest.csv" in msg
    assert "stclotho: T-SALM's stClotho: [temporal_spatial_audio_text/]Clotho/{audio,metadata}" in msg
    with pytest.raises(UserDataError, match="--data.format manifest expects stclotho_manifest.csv"):
        fam.prepare_data(user_cfg(stclotho[0], tmp_path, "--data.format", "manifest"))
    with pytest.raises(UserDataError, match="unknown sCLAP data layout; known: manifest, stclotho"):
        fam.prepare_data(user_cfg(stclotho[0], tmp_path, "--data.format", "clotho"))


def test_triplets_pair_by_trailing_digits_and_valid_is_val(stclotho, tmp_path):
    base, numbers = stclotho
    ds = fam.build_datasets(user_cfg(base, tmp_path))
    assert {s: len(d) for s, d in ds.items()} == {"train": 4, "val": 2, "test": 2}
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        for item, num in zip(ds[split].items, numbers[name]):
            for v, prefix in (("pos", "pos"), ("neg_t", "temporal"), ("neg_s", "spatial")):
                assert item[v]["caption"].startswith(f"{prefix} n{num} c0:"), (split, v, item[v]["caption"])
    item = ds["train"].items[0]
    # DOA labels per segment (numbers, numeric strings, one-element lists), order kept
    assert (item["pos"]["event1_azimuth"], item["pos"]["event2_azimuth"]) == (90.0, 0.0)
    assert (item["neg_t"]["event1_azimuth"], item["neg_t"]["event2_azimuth"]) == (0.0, 90.0)
    assert item["pos"]["event2_elevation"] == 10.0 and item["pos"]["join_s"] == 3.0
    # T-SALM's plain caption: caption k of segment 0, then caption k of segment 1
    assert item["pos"]["plain_captions"][2] == f"noise n{numbers['train'][0]} c2, then a tone n{numbers['train'][0]} c2."
    assert ds["test"].single_feats is None          # no single-event clips in this layout


def test_unmatched_files_are_left_out_with_a_warning_and_a_missing_split_named(tmp_path, capsys):
    make_stclotho(str(tmp_path / "d"), splits=(("train", 2), ("valid", 1), ("test", 1)), seg_s=(2.0, 2.0))
    neg = tmp_path / "d" / TSAT / "stClotho_negative" / "audio" / "train" / "spatial"
    os.remove(neg / "spatial_negative_000010.flac")
    ds = STClothoDataset(str(tmp_path / "d"), "train", FE, layout="stclotho", cache_dir=str(tmp_path / "c"))
    assert [it["pos"]["item_id"] for it in ds.items] == ["000007"]
    assert "split train: 1 number(s) lack a file of their triplet" in capsys.readouterr().out
    os.rename(tmp_path / "d" / TSAT / "Clotho" / "audio" / "valid", tmp_path / "d" / TSAT / "Clotho" / "audio" / "val")
    with pytest.raises(STClothoError, match="audio/valid: folder of split 'val' not found.*train, valid, test"):
        STClothoDataset(str(tmp_path / "d"), "val", FE, layout="stclotho", cache_dir=str(tmp_path / "c"))


def test_bad_json_names_file_and_field(tmp_path):
    make_stclotho(str(tmp_path / "d"), splits=(("train", 1), ("valid", 1), ("test", 1)), seg_s=(2.0, 2.0))
    meta = tmp_path / "d" / TSAT / "Clotho" / "metadata" / "train" / "temporal_000007.json"
    good = json.loads(meta.read_text())
    for edit, match in ((lambda m: m["audio_segments"][0]["metadata"].pop("azi"),
                         "temporal_000007.json: field 'audio_segments\\[0\\].metadata.azi' must be an angle"),
                        (lambda m: m.pop("temporal_spatial_caption"),
                         "temporal_000007.json: field 'temporal_spatial_caption' must be a non-empty list"),
                        (lambda m: m["audio_segments"].pop(), "field 'audio_segments' must list the clip's 2")):
        bad = json.loads(json.dumps(good))
        edit(bad)
        meta.write_text(json.dumps(bad))
        with pytest.raises(STClothoError, match=match):
            STClothoDataset(str(tmp_path / "d"), "train", FE, layout="stclotho", cache_dir=str(tmp_path / "c"))


def test_flac_at_24khz_is_resampled_and_the_front_end_runs_at_the_model_rate(stclotho, tmp_path, monkeypatch):
    base, numbers = stclotho
    path = os.path.join(base, TSAT, "Clotho", "audio", "train", f"temporal_{numbers['train'][0]}.flac")
    raw, sr = sf.read(path, dtype="float32", always_2d=True)                 # [6 s x 24 kHz, 4]
    assert sr == 24000 and raw.shape == (144000, 4)
    # join: the 4-s window centred on the end of the 3-s first segment, then resampled
    x = read_foa(path, 16000, 4.0, "join", join_s=3.0)
    want = torchaudio.functional.resample(torch.from_numpy(raw[24000:120000].T.copy()), 24000, 16000)
    np.testing.assert_allclose(x, want.numpy(), atol=1e-6)
    assert x.shape == (4, 64000)
    built = []
    real_frontend = SpatialFrontEnd
    monkeypatch.setattr(sclap_dataset, "SpatialFrontEnd", lambda **kw: built.append(kw) or real_frontend(**kw))
    ds = STClothoDataset(base, "train", FE, layout="stclotho", cache_dir=str(tmp_path / "c"))
    assert ds.sample_rate == 16000 and [kw["sample_rate"] for kw in built] == [16000]
    logmel, iv = real_frontend(**{k: v for k, v in FE.items() if k != "clip_seconds"})(torch.from_numpy(x)[None])
    np.testing.assert_allclose(ds.feats[0], torch.cat([logmel, iv], 1)[0].half().numpy(), atol=2e-3)
    # data.resample false: the files' own rate reaches the front end
    as_is = STClothoDataset(base, "train", FE, layout="stclotho", cache_dir=str(tmp_path / "c"), resample=False)
    assert as_is.sample_rate == 24000 and built[-1]["sample_rate"] == 24000
    assert as_is.feats.shape[2] == 4 * 24000 // 640 + 1 == 151


def test_long_clip_policies_keep_both_events(tmp_path):
    """A 6-s file: noise for 4 s, then a 500 Hz tone for 2 s."""
    sr = 16000
    x = np.concatenate([_segment("noise", 4.0, sr, 90.0, 0), _segment("tone", 2.0, sr, 0.0, 0)], 1)
    x = x.astype(np.float32)
    path = str(tmp_path / "long.wav")
    sf.write(path, x.T, sr, subtype="FLOAT")
    read = {p: read_foa(path, sr, 4.0, p, join_s=4.0) for p in ("join", "truncate")}
    np.testing.assert_array_equal(read["join"], x[:, 2 * sr:6 * sr])          # centred on the join at 4 s
    np.testing.assert_array_equal(read["truncate"], x[:, :4 * sr])            # the tone is lost
    np.testing.assert_array_equal(read_foa(path, sr, 4.0, "join"), x[:, sr:5 * sr])   # no join_s: the middle
    assert read_foa(path, sr, 4.0, "stride").shape == (4, 6 * sr)
    with pytest.raises(AudioFileError, match="long.wav: 6.00 s, longer than the model's window"):
        read_foa(path, sr, 4.0, "error")
    short = read_foa(path, sr, 8.0, "join")                                   # shorter: zero-filled
    np.testing.assert_array_equal(short[:, :6 * sr], x)
    assert not short[:, 6 * sr:].any()


def test_stride_pools_a_long_clips_frames_to_the_window(tmp_path):
    make_stclotho(str(tmp_path / "d"), splits=(("train", 1), ("valid", 1), ("test", 1)), sr=16000,
                  seg_s=(4.0, 4.0), ext=".wav")
    ds = STClothoDataset(str(tmp_path / "d"), "train", FE, layout="stclotho", cache_dir=str(tmp_path / "c"),
                         long_clips="stride")
    assert ds.feats.shape[2] == 101
    whole = read_foa(os.path.join(str(tmp_path / "d"), ds.rows[0]["file_name"]), 16000, 4.0, "stride")
    logmel, iv = SpatialFrontEnd(**{k: v for k, v in FE.items() if k != "clip_seconds"})(torch.from_numpy(whole)[None])
    f = torch.cat([logmel, iv], 1)[0]                                           # [7, 201, M]
    assert f.shape[1] == 201
    # frame t of the pooled map averages the frames adaptive pooling assigns it
    np.testing.assert_allclose(ds.feats[0][:, 0], f[:, :2].mean(1).half().numpy(), atol=2e-3)
    np.testing.assert_allclose(ds.feats[0][:, -1], f[:, -2:].mean(1).half().numpy(), atol=2e-3)
    with pytest.raises(AudioFileError, match="8.00 s, longer than the model's window.*3 such files"):
        STClothoDataset(str(tmp_path / "d"), "train", FE, layout="stclotho", cache_dir=str(tmp_path / "c"),
                        long_clips="error")


def test_five_captions_one_an_item_an_epoch_in_training(stclotho, tmp_path):
    base, numbers = stclotho
    cfg = user_cfg(base, tmp_path)
    train = fam.build_datasets(cfg)["train"]
    again = fam.build_datasets(cfg)["train"]
    seen = set()
    for epoch in range(8):
        train.set_epoch(epoch)
        again.set_epoch(epoch)
        for i in range(len(train)):
            caps = train[i]["captions"]
            assert caps == again[i]["captions"]                                # deterministic
            ks = {c.split(":")[0].split(" c")[-1] for c in caps}
            assert len(ks) == 1                                                # one k for pos, neg_t, neg_s
            plain = train[i]["plain_captions"][0]
            assert plain.endswith(f"c{ks.pop()}.") and f"n{numbers['train'][i]}" in caps[0]
            seen.add(caps[0])
    assert len(seen) > 2 * len(train)              # several of the five captions of each item are used
    val = fam.build_datasets(cfg)["val"]
    val.set_epoch(3)
    assert [val[i]["captions"][0] for i in range(len(val))] == [it["pos"]["captions"][0] for it in val.items]


def test_manifest_layout_wav_16k_detected(tmp_path, capsys):
    make_manifest(str(tmp_path / "m"))
    cfg = user_cfg(tmp_path / "m", tmp_path)
    fam.prepare_data(cfg)
    assert "manifest layout (detected" in capsys.readouterr().out
    ds = fam.build_datasets(cfg)
    assert {s: len(d) for s, d in ds.items()} == {"train": 4, "val": 2, "test": 2}   # 'valid' rows are val
    assert ds["train"].sample_rate == 16000 and ds["train"].feats.shape[1:] == (7, 101, 32)
    assert ds["train"].num_captions(0) == 1
    make_manifest(str(tmp_path / "m5"), extra_captions=4)                   # caption_2 ... caption_5
    five = fam.build_datasets(user_cfg(tmp_path / "m5", tmp_path))["test"]
    assert five.items[1]["neg_t"]["captions"] == ["neg_t test1: noise from 0, then a tone from 90."] + \
        [f"neg_t test1 caption {k}." for k in range(2, 6)]
    assert five.items[1]["neg_t"]["plain_captions"] == ["noise test1, then a tone."] * 5
