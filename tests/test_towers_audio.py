"""Audio towers over tiny HTS-AT (CLAP) and AST checkpoints saved with their
feature extractors and loaded through the config key."""
import pytest
import torch
import torchaudio.functional as AF
from transformers import (ASTConfig, ASTFeatureExtractor, ASTModel, ClapConfig, ClapFeatureExtractor,
                          ClapModel, ViTConfig, ViTModel)

from models.towers import AudioTower

CLAP_AUDIO = dict(spec_size=64, num_mel_bins=16, window_size=4, depths=[1, 1],
                  num_attention_heads=[1, 2], patch_embeds_hidden_size=16, hidden_size=32,
                  enable_fusion=False, initializer_factor=3.0)


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    """A whole ClapModel folder, as laion/clap-htsat-unfused is saved."""
    path = tmp_path_factory.mktemp("clap")
    torch.manual_seed(0)
    model = ClapModel(ClapConfig(audio_config=CLAP_AUDIO, projection_dim=16,
                                 text_config=dict(hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=1, num_attention_heads=2,
                                                  vocab_size=64, max_position_embeddings=40)))
    model.eval().save_pretrained(path)
    fe = ClapFeatureExtractor(feature_size=16, sampling_rate=8000, hop_length=80, max_length_s=1,
                              fft_window_size=256, frequency_min=50, frequency_max=4000,
                              truncation="rand_trunc", padding="repeatpad")
    fe.save_pretrained(path)
    return str(path), model.audio_model, fe


@pytest.fixture(scope="module")
def ast_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ast")
    torch.manual_seed(0)
    model = ASTModel(ASTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, num_mel_bins=32, max_length=64, patch_size=16,
                               frequency_stride=8, time_stride=8, initializer_range=0.3)).eval()
    model.save_pretrained(path)
    fe = ASTFeatureExtractor(num_mel_bins=32, max_length=64)
    fe.save_pretrained(path)
    return str(path), model, fe


def test_clap_folder_loads_the_audio_towers_weights(clap_dir):
    path, ref, _ = clap_dir
    tower = AudioTower({"pretrained": path})
    for (n, a), (_, b) in zip(tower.backbone.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), n


def test_htsat_tower_equals_the_extractor_and_model(clap_dir):
    path, ref, fe = clap_dir
    tower = AudioTower({"pretrained": path}).eval()
    torch.manual_seed(0)
    wav = torch.randn(2, 6000) * 0.1                 # shorter than 1 s: repeat-padded
    inputs = fe([w.numpy() for w in wav], sampling_rate=8000, return_tensors="pt")
    assert torch.allclose(tower.features(wav), inputs["input_features"], atol=1e-3)
    own = ref(**inputs)
    out = tower(wav)
    assert torch.allclose(out.features, own.pooler_output, atol=1e-4)
    assert torch.allclose(out.frames, own.last_hidden_state.mean(2).transpose(1, 2), atol=1e-4)
    assert out.frames.shape == (2, 32, 32)           # [B, T', D]: 64 * 4 / 4 / 2 time steps


def test_htsat_tower_resamples_from_the_datas_rate(clap_dir):
    path, ref, fe = clap_dir
    tower = AudioTower({"pretrained": path}, sample_rate=16000).eval()
    torch.manual_seed(0)
    wav = torch.randn(1, 16000) * 0.1
    at_model_rate = AF.resample(wav, 16000, 8000)
    inputs = fe([at_model_rate[0].numpy()], sampling_rate=8000, return_tensors="pt")
    assert torch.allclose(tower(wav).features, ref(**inputs).pooler_output, atol=1e-4)


def test_spatial_branch_widened_to_seven_channels_keeps_the_response(clap_dir):
    path, _, _ = clap_dir
    w_branch = AudioTower({"pretrained": path}).eval()
    spatial = AudioTower({"pretrained": path}, in_channels=7).eval()
    assert spatial.backbone.audio_encoder.patch_embed.proj.in_channels == 7
    torch.manual_seed(0)
    mel = torch.randn(2, 1, 16, 101)                  # [B, 1, F, T] a family's own log-mel
    assert torch.allclose(spatial(mel.expand(-1, 7, -1, -1)).features, w_branch(mel).features,
                          atol=1e-5)
    with pytest.raises(ValueError, match="expected 7 feature channels"):
        spatial(mel)


def test_batch_norm_stays_in_eval_mode_while_training(clap_dir):
    """Per-sample features (the loop's accumulation recomputes slices): the
    HTS-AT input batch norm uses the checkpoint's running statistics."""
    tower = AudioTower({"pretrained": clap_dir[0]}).train()
    assert not tower.backbone.audio_encoder.batch_norm.training
    assert tower.backbone.audio_encoder.layers[0].training
    for m in tower.modules():   # dropout off: batch norm is the only batch-dependent part
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    mel = torch.randn(4, 1, 16, 101)
    alone = tower(mel[:2]).features
    together = tower(mel).features[:2]
    assert torch.allclose(alone, together, atol=1e-5)


def test_ast_tower_equals_the_extractor_and_model(ast_dir):
    path, ref, fe = ast_dir
    tower = AudioTower({"pretrained": path}).eval()
    torch.manual_seed(0)
    wav = torch.randn(2, 8000) * 0.1
    inputs = fe([w.numpy() for w in wav], sampling_rate=16000, return_tensors="pt")
    own = ref(**inputs)
    out = tower(wav)
    assert torch.allclose(out.features, own.pooler_output, atol=1e-5)
    f_dim, t_dim = 3, 7                               # (32 - 16) / 8 + 1, (64 - 16) / 8 + 1
    frames = own.last_hidden_state[:, 2:].reshape(2, f_dim, t_dim, -1).mean(1)
    assert torch.allclose(out.frames, frames, atol=1e-5)


def test_ast_widened_to_seven_channels_keeps_the_response(ast_dir):
    path, _, _ = ast_dir
    one = AudioTower({"pretrained": path}).eval()
    seven = AudioTower({"pretrained": path}, in_channels=7).eval()
    feats = torch.randn(2, 1, 32, 64)                 # [B, C, F, T]
    assert torch.allclose(seven(feats.expand(-1, 7, -1, -1)).frames, one(feats).frames, atol=1e-5)


def test_a_vision_folder_is_not_an_audio_tower(tmp_path):
    ViTModel(ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, image_size=16, patch_size=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"type 'vit' \(architectures \['ViTModel'\]\); expected one "
                                         r"of \['audio-spectrogram-transformer', 'clap'"):
        AudioTower({"pretrained": str(tmp_path)}, key="model.audio")


def test_waveform_front_end_runs_under_bf16_autocast(clap_dir):
    tower = AudioTower({"pretrained": clap_dir[0]}).eval()
    wav = torch.randn(1, 6000) * 0.1
    ref = tower(wav).features
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tower(wav).features
    assert torch.allclose(out.float(), ref, atol=0.1, rtol=0.05)
