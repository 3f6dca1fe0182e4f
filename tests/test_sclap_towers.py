"""sCLAP on pretrained towers (issue 11): a tiny LAION-CLAP folder (HTS-AT
audio tower, RoBERTa text tower, feature extractor, tokenizer) and a tiny AST
(the TOWERS tests' builder), loaded through model.audio / model.text:
train, resume and evaluate; frozen stays bit-identical; the spatial branch's
1 -> 7 widening through the model's own path; the W waveform the tower gets
is the file's W channel resampled (torchaudio) to the checkpoint's rate."""
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from transformers import AutoTokenizer, ClapConfig, ClapFeatureExtractor, ClapModel

import eval as eval_script
import families.sclap as fam
import train_stage1
from data.sclap.dataset import collate
from models.text_encoder import TextEncoder, resolve_model_path
from models.towers import AudioTower, TextTower
from tests.test_towers_audio import CLAP_AUDIO, ast_dir  # noqa: F401  (the AST folder fixture)
from training.config import load_config

TINY = ["--family", "sclap", "--data.num_train", "8", "--data.num_val", "2", "--data.num_test", "2",
        "--data.num_zeroshot", "2", "--data.gen_workers", "1", "--data.max_order", "2",
        "--model.channels", "[8,8,16]", "--model.embed_dim", "32", "--model.temporal_heads", "4",
        "--precision", "fp32", "--workers", "0", "--batch-size", "4", "--val-every", "0",
        "--save-every", "0", "--eval.figures", "false"]
CLAP_RATE = 8000    # the tiny checkpoint's rate; the data are at 16 kHz


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    """A whole ClapModel folder as laion/clap-htsat-unfused is saved: both
    towers, the feature extractor and a fast tokenizer (the bundled MiniLM's
    vocabulary, so the text tower has one to read)."""
    path = tmp_path_factory.mktemp("clap_full")
    torch.manual_seed(0)
    model = ClapModel(ClapConfig(audio_config=CLAP_AUDIO, projection_dim=16,
                                 text_config=dict(hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=1, num_attention_heads=2,
                                                  vocab_size=30522, max_position_embeddings=40)))
    model.eval().save_pretrained(path)
    ClapFeatureExtractor(feature_size=16, sampling_rate=CLAP_RATE, hop_length=80, max_length_s=1,
                         fft_window_size=256, frequency_min=50, frequency_max=4000,
                         truncation="rand_trunc", padding="repeatpad").save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model_path(None)).save_pretrained(path)
    return str(path), model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny generated data, once for the module (every run reads it)."""
    root = str(tmp_path_factory.mktemp("sclap_towers") / "data")
    cfg = load_config(TINY + ["--data.root", root])
    fam.prepare_data(cfg)
    return root


def _cfg(data, *extra):
    return load_config(TINY + ["--data.root", data, *extra])


def _tower_weights(ckpt, prefix):
    return {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}


@pytest.mark.parametrize("arch", ["clap", "ast"])
def test_pretrained_tower_trains_resumes_and_evaluates(arch, data, clap_dir, ast_dir, tmp_path,  # noqa: F811
                                                       one_torch_thread):
    path, ref = (clap_dir[0], clap_dir[1].audio_model) if arch == "clap" else ast_dir[:2]
    args = TINY + ["--data.root", data, "--logs", str(tmp_path), "--name", arch,
                   "--model.audio.pretrained", path]
    if arch == "clap":   # the README's recipe: both towers of one CLAP folder
        args += ["--model.text.pretrained", path]
    train_stage1.main(args + ["--max-steps", "2"])
    ckpt_path = tmp_path / arch / "checkpoints" / "latest.pt"
    ck = torch.load(ckpt_path, weights_only=False)
    assert ck["train_state"]["step"] == 2
    # an unfrozen tower moved away from the checkpoint it started from
    sed = _tower_weights(ck, "sed_branch.backbone.")
    assert sed.keys() == ref.state_dict().keys()
    moved = [k for k, v in ref.state_dict().items() if not torch.equal(sed[k], v)]
    assert len(moved) > len(sed) // 3, moved
    train_stage1.main(args + ["--max-steps", "3", "--resume", "latest"])
    resumed = torch.load(ckpt_path, weights_only=False)
    assert resumed["train_state"]["step"] == 3
    assert any(not torch.equal(resumed["model"][k], v) for k, v in ck["model"].items()
               if k.startswith("sed_branch.backbone."))
    out = tmp_path / "eval"
    eval_script.main(["--checkpoint", str(ckpt_path), "--out", str(out), "--device", "cpu"])
    written = json.loads((out / "metrics.json").read_text())
    assert written["gallery_size"] == 2
    assert np.isfinite(written["doa_error_deg"]) and "zeroshot_direction_acc" in written
    # the checkpoint's weights are what eval.py ran (the tower rebuilt from the folder, then loaded)
    _, _, model, _, _ = eval_script.load_stage1(str(ckpt_path))
    assert isinstance(model.sed_branch, AudioTower) and isinstance(model.doa_branch, AudioTower)
    if arch == "clap":
        assert isinstance(model.text_encoder, TextTower) and model.text_encoder.frozen
    for k, v in model.state_dict().items():
        assert torch.equal(v, resumed["model"][k]), k


def test_frozen_audio_tower_is_bit_identical_after_steps(data, clap_dir, tmp_path, one_torch_thread):
    path, ref = clap_dir[0], clap_dir[1].audio_model
    train_stage1.main(TINY + ["--data.root", data, "--logs", str(tmp_path), "--name", "frozen",
                              "--model.audio.pretrained", path, "--model.audio.freeze", "true",
                              "--max-steps", "2"])
    ck = torch.load(tmp_path / "frozen" / "checkpoints" / "latest.pt", weights_only=False)
    sed, doa = _tower_weights(ck, "sed_branch.backbone."), _tower_weights(ck, "doa_branch.backbone.")
    proj = "audio_encoder.patch_embed.proj.weight"
    for k, v in ref.state_dict().items():
        assert torch.equal(sed[k], v), k
        if k != proj:
            assert torch.equal(doa[k], v), k
    # the widened patch embedding: the original kernel / 7 on each of the 7 channels
    assert torch.equal(doa[proj], (ref.state_dict()[proj] / 7).repeat(1, 7, 1, 1))
    # what is new around the frozen towers trained
    model = fam.build_model(_cfg(data, "--model.audio.pretrained", path))
    assert not torch.equal(ck["model"]["sed_proj.weight"], model.sed_proj.weight)


@pytest.mark.parametrize("arch", ["clap", "ast"])
def test_spatial_branch_widening_keeps_the_response_through_the_model(arch, data, clap_dir,
                                                                      ast_dir):  # noqa: F811
    """An input replicated over the 7 feature channels gives, through the
    model's own spatial path (resize to the tower's grid, the widened
    tower), what the unwidened checkpoint gives on one channel."""
    path = clap_dir[0] if arch == "clap" else ast_dir[0]
    model = fam.build_model(_cfg(data, "--model.audio.pretrained", path)).eval()
    one = AudioTower({"pretrained": path}).eval()
    torch.manual_seed(0)
    x1 = torch.randn(2, 1, 101, 32)                  # [N, 1, T, M]: sCLAP's grid (4 s, 32 mels)
    grid = (101, 16) if arch == "clap" else (64, 32)  # HTS-AT: its 16 mel bins; AST: 64 x 32 fixed
    expected = one(F.interpolate(x1, size=grid, mode="bilinear").transpose(2, 3))
    seen = []
    hook = model.doa_branch.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model.encode_audio(x1.expand(-1, 7, -1, -1), torch.zeros(2, 64000))
    hook.remove()
    assert torch.allclose(seen[0].features, expected.features, atol=1e-5)
    assert torch.allclose(seen[0].frames, expected.frames, atol=1e-5)


def test_the_tower_gets_the_files_w_channel_resampled_to_the_checkpoints_rate(data, clap_dir):
    cfg = _cfg(data, "--model.audio.pretrained", clap_dir[0])
    test = fam.build_datasets(cfg)["test"]
    model = fam.build_model(cfg).eval()
    assert model.sed_branch.sample_rate == 16000 and model.sed_branch.model_rate == CLAP_RATE
    seen = []
    clap_mel = model.sed_branch.clap_mel
    model.sed_branch.clap_mel = lambda wav: (seen.append(wav), clap_mel(wav))[1]
    with torch.no_grad():
        model(collate([test[0]]))
    files = [sf.read(os.path.join(data, r["file_name"]), dtype="float32")[0][:, 0]
             for r in test.rows[:3]]                  # the W channel of pos, neg_t, neg_s
    assert all(len(w) == 64000 for w in files)       # generated at 16 kHz, 4 s
    w = torch.from_numpy(np.stack(files))
    assert torch.allclose(test[0]["wave"], w, atol=1e-3)           # cached as float16
    assert torch.allclose(seen[0], AF.resample(w, 16000, CLAP_RATE), atol=1e-3)
    assert seen[0].shape == (3, 32000)


def test_wave_is_read_only_with_a_pretrained_tower_and_cached_by_rate(data, clap_dir):
    plain = fam.build_datasets(_cfg(data))["val"]
    assert plain.wave is None and "wave" not in plain[0] and "wave" not in collate([plain[0]])
    assert not fam.build_model(_cfg(data)).needs_wave
    for rate in (16000, 8000):
        ds = fam.build_datasets(_cfg(data, "--model.audio.pretrained", clap_dir[0],
                                     "--data.sample_rate", str(rate), "--data.f_max",
                                     str(rate // 2)))["val"]
        assert ds.wave.shape == (6, 4 * rate) and ds[0]["wave"].shape == (3, 4 * rate)
    cached = [f for f in os.listdir(plain.cache_dir) if f.startswith("wave_val_")]
    shapes = sorted(np.load(os.path.join(plain.cache_dir, f), mmap_mode="r").shape for f in cached)
    assert shapes == [(6, 32000), (6, 64000)]        # one cache file per rate, never mixed up


def test_default_text_and_audio_are_todays(data):
    model = fam.build_model(_cfg(data))
    assert type(model.text_encoder) is TextEncoder and model.text_encoder.frozen
    assert not any(isinstance(m, (AudioTower, TextTower)) for m in model.modules())
    # a checkpoint's config from before model.text still builds (flat text keys)
    cfg = _cfg(data)
    cfg["model"] = {k: v for k, v in cfg["model"].items() if k != "text"}
    cfg["model"].update(text_model=None, freeze_text_backbone=False, unfreeze_last_n=0)
    assert not fam.build_model(cfg).text_encoder.frozen


def test_spatial_from_pretrained_false_keeps_the_conv_doa_branch(data, clap_dir):
    cfg = _cfg(data, "--model.audio.pretrained", clap_dir[0],
               "--model.audio.spatial_from_pretrained", "false")
    model = fam.build_model(cfg).eval()
    assert isinstance(model.sed_branch, AudioTower) and not isinstance(model.doa_branch, AudioTower)
    ds = fam.build_datasets(cfg)["val"]
    with torch.no_grad():
        out = model(collate([ds[0], ds[1]]))
    assert out["audio"].shape == (2, 3, 32) and out["doa"].shape == (2, 3, 2, 3)
    with pytest.raises(ValueError, match="takes the W waveform"):
        model.encode_audio(collate([ds[0]])["feats"][0])


def test_every_trainable_parameter_gets_a_gradient_with_and_without_checkpointing(data, clap_dir):
    """DDP without find_unused_parameters needs a gradient for every trainable
    parameter; --grad-checkpointing reaches both towers' blocks and gives the
    same gradients."""
    cfg = _cfg(data, "--model.audio.pretrained", clap_dir[0], "--model.text.pretrained", clap_dir[0],
               "--model.text.freeze", "false")
    ds = fam.build_datasets(cfg)["val"]
    batch = collate([ds[0], ds[1]])
    crit = fam.build_criterion(cfg)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = fam.build_model(cfg).eval()          # eval: no dropout / drop path to replay
        model.set_grad_checkpointing(ckpt)
        loss, _ = crit(model(batch), batch, 5)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert model.sed_branch.backbone.audio_encoder.layers[0].gradient_checkpointing   # Swin stages
    assert model.doa_branch.backbone.audio_encoder.layers[0].gradient_checkpointing
    assert model.text_encoder.backbone.encoder.layer[0].gradient_checkpointing
    missing = [n for n, g in grads[0].items() if g is None]
    assert not missing, missing
    for n, g in grads[0].items():
        assert torch.allclose(grads[1][n], g, atol=1e-6, rtol=1e-4), n


def test_a_missing_or_wrong_folder_names_the_sclap_key(data, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.audio.pretrained: no such directory"):
        fam.build_model(_cfg(data, "--model.audio.pretrained", str(tmp_path / "nothing")))
    # a text-only folder is not an audio tower (the bundled MiniLM is a BertModel)
    with pytest.raises(ValueError, match=r"model.audio.pretrained: .* holds a model of type 'bert'"):
        fam.build_model(_cfg(data, "--model.audio.pretrained", resolve_model_path(None)))
    with pytest.raises(FileNotFoundError, match=r"model.text.pretrained: no such directory"):
        fam.build_model(_cfg(data, "--model.text.pretrained", str(tmp_path / "nothing")))


def test_the_temporal_encoder_sees_only_the_frames_that_hold_the_clip(data, clap_dir):
    """HTS-AT repeat-pads a clip shorter than its window (1 s here): of a
    0.4-s clip's 32 frames only the first 13 are the clip; the spatial map
    (the whole clip) is pooled to those 13 steps beside them."""
    model = fam.build_model(_cfg(data, "--model.audio.pretrained", clap_dir[0])).eval()
    torch.manual_seed(0)
    wave, feats = torch.randn(2, 6400) * 0.1, torch.randn(2, 7, 11, 32)     # 0.4 s at 16 kHz
    seen = []
    hook = model.temporal.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model.encode_audio(feats, wave)
        frames = model.sed_branch(wave).frames                              # [2, 32, D]
        doa = model.doa_branch(F.interpolate(feats, size=(11, 16), mode="bilinear").transpose(2, 3))
    hook.remove()
    D = frames.shape[2]
    assert seen[0].shape == (2, 2 * D, 13, 1)
    assert torch.allclose(seen[0][:, :D, :, 0], frames[:, :13].transpose(1, 2), atol=1e-6)
    pooled = F.adaptive_avg_pool1d(doa.frames.transpose(1, 2), 13)          # [2, D, 13]
    assert torch.allclose(seen[0][:, D:, :, 0], pooled, atol=1e-5)


def test_accum_freq_2_ends_with_the_weights_of_accum_freq_1(data, clap_dir, tmp_path,
                                                            one_torch_thread):
    """The loop's exact accumulation holds with the towers (their batch norm
    uses the checkpoint's statistics, so nothing mixes samples); the tower's
    own dropout is switched off in a copy of the folder, as --model.dropout 0
    does for the rest."""
    path = tmp_path / "clap"
    shutil.copytree(clap_dir[0], path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["audio_config"]["hidden_dropout_prob"] = 0.0
    (path / "config.json").write_text(json.dumps(cfg))
    args = TINY + ["--data.root", data, "--logs", str(tmp_path / "logs"), "--model.dropout", "0.0",
                   "--model.audio.pretrained", str(path), "--max-steps", "2"]
    ck = {}
    for k in (1, 2):
        train_stage1.main(args + ["--name", f"accum{k}", "--accum-freq", str(k)])
        ck[k] = torch.load(tmp_path / "logs" / f"accum{k}" / "checkpoints" / "latest.pt",
                           weights_only=False)
    for name, w in ck[1]["model"].items():
        torch.testing.assert_close(ck[2]["model"][name], w, atol=1e-5, rtol=1e-4, msg=name)
