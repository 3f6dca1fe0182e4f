"""sCLAP on a user's folder, end to end: train_stage1.main and eval.py's main
with --data.root DIR --data.generate false on T-SALM's stClotho layout (FLAC,
24 kHz, 6-s clips of two segments) and on a hand-written manifest folder (WAV,
16 kHz). The folder is byte-identical afterwards with nothing added; all five
captions of every test item reach retrieval (checked against a hand
computation); generation into the folder is refused."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import eval as eval_script
import families.sclap as fam
import train_stage1
from data.cache import UserDataError
from data.sclap.dataset import collate
from tests.test_sclap_layouts import make_manifest, make_stclotho
from training.config import load_config
from tests.folder_digest import tree

TINY = ["--family", "sclap", "--data.generate", "false", "--model.channels", "[8,8,16]",
        "--model.embed_dim", "32", "--model.temporal_heads", "4", "--precision", "fp32", "--workers", "0",
        "--batch-size", "2", "--max-steps", "2", "--eval.figures", "false"]


def run(root, tmp_path, name):
    """train_stage1 then eval.py on root; -> eval's metrics.json."""
    args = TINY + ["--data.root", str(root), "--data.cache_dir", str(tmp_path / "cache"),
                   "--logs", str(tmp_path / "logs"), "--name", name]
    train_stage1.main(args)
    ckpt = tmp_path / "logs" / name / "checkpoints" / "latest.pt"
    eval_script.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "eval" / name), "--device", "cpu"])
    return json.loads((tmp_path / "eval" / name / "metrics.json").read_text()), str(ckpt)


def _ranks(scores, true):
    """1-based pessimistic rank of column true[q] in each row q of scores."""
    return (scores >= scores.gather(1, true[:, None])).sum(1)


def test_stclotho_folder_trains_evaluates_ranks_all_five_captions_and_stays_untouched(tmp_path, capsys,
                                                                                     one_torch_thread):
    base = tmp_path / "datasets"
    make_stclotho(str(base))
    before = tree(base)
    metrics, ckpt = run(base, tmp_path, "stclotho")
    out = capsys.readouterr().out
    assert tree(base) == before                                    # byte-identical, nothing added
    assert f"data.root {base}: stclotho layout (detected" in out
    assert "files at 24000 Hz resampled to 16000 Hz" in out and "data.long_clips join" in out
    assert "zeroshot_direction_acc skipped" in out and "zeroshot_direction_acc" not in metrics
    assert os.listdir(tmp_path / "cache" / "sclap" / "derived")   # the features went here
    # five captions an item reach retrieval: 2 test items -> 10 text queries
    assert metrics["gallery_size"] == 2 and metrics["num_queries"] == 10

    # the same numbers by hand: each item alone, every caption of every variant encoded
    _, cfg, model, _, _ = eval_script.load_stage1(ckpt)
    test = fam.build_datasets(cfg)["test"]
    with torch.no_grad():
        audio = torch.stack([F.normalize(model(collate([test[i]]))["audio"][0], dim=-1)
                             for i in range(len(test))])                                   # [N, 3, D]
        text = torch.stack([torch.stack([F.normalize(model.encode_text(it[v]["captions"]), dim=-1)
                                         for v in ("pos", "neg_t", "neg_s")]) for it in test.items])  # [N, 3, 5, D]
    n = len(test)
    queries = text[:, 0].reshape(n * 5, -1)                                                  # item-major
    owner = torch.arange(n).repeat_interleave(5)
    t2a = _ranks(queries @ audio[:, 0].T, owner)
    a2t = torch.stack([_ranks((audio[i, 0] @ queries.T)[None].expand(5, -1),
                              torch.arange(5 * i, 5 * i + 5)).min() for i in range(n)])
    assert metrics["t2a_R@1"] == pytest.approx(float((t2a == 1).double().mean()))
    assert metrics["t2a_mAP@10"] == pytest.approx(float((1.0 / t2a.double()).mean()))
    assert metrics["a2t_R@1"] == pytest.approx(float((a2t == 1).double().mean()))
    sim = torch.einsum("nkd,njd->nkj", text[:, 0], audio)            # [N, 5 captions, 3 clips]
    assert metrics["temporal_acc"] == pytest.approx(float((sim[..., 0] > sim[..., 1]).double().mean()))
    assert metrics["spatial_acc"] == pytest.approx(float((sim[..., 0] > sim[..., 2]).double().mean()))


def test_manifest_folder_of_16khz_wavs_trains_and_evaluates_untouched(tmp_path, capsys, one_torch_thread):
    root = tmp_path / "mine"
    make_manifest(str(root))
    before = tree(root)
    metrics, _ = run(root, tmp_path, "manifest")
    assert tree(root) == before
    out = capsys.readouterr().out
    assert "manifest layout (detected" in out and "resampled" not in out
    assert metrics["gallery_size"] == 2 and metrics["num_queries"] == 2      # one caption a row here
    with pytest.raises(UserDataError, match="mine: holds files this project did not generate.*"
                                            "--data.generate false"):
        fam.prepare_data(load_config(["--family", "sclap", "--data.root", str(root)]))
    assert tree(root) == before
