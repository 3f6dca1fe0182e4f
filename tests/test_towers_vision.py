"""Image and radar towers over tiny CLIPVisionModel / ViTModel checkpoints
saved into a temporary folder and loaded through the config key."""
import pytest
import torch
import torch.nn as nn
from torchvision.ops import roi_align
from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

from models.towers import RadarTower, VisionTower, fold_patch_embedding, interpolate_pos_embed
from models.towers.vision import pos_embed, set_pos_embed

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             image_size=32, patch_size=8, initializer_range=0.3)  # large init: outputs that react


def save_clip(path):
    """A full two-tower CLIP folder (model_type clip), as openai/clip-vit-base-patch16."""
    torch.manual_seed(0)
    cfg = CLIPConfig(vision_config=SMALL, projection_dim=16,
                     text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, vocab_size=64, max_position_embeddings=16))
    model = CLIPModel(cfg).eval()
    model.save_pretrained(path)
    return model.vision_model


def save_vit(path, **kw):
    torch.manual_seed(0)
    model = ViTModel(ViTConfig(**dict(SMALL, **kw))).eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    return {"clip": (str(root / "clip"), save_clip(root / "clip")),
            "vit": (str(root / "vit"), save_vit(root / "vit"))}


@pytest.mark.parametrize("arch", ["clip", "vit"])
def test_vision_tower_equals_the_models_own_forward(folders, arch):
    path, ref = folders[arch]
    tower = VisionTower({"pretrained": path}).eval()
    images = torch.rand(2, 3, 32, 32)
    out = tower(images)
    own = ref(pixel_values=(images - tower.mean) / tower.std)
    assert torch.allclose(out.features, own.pooler_output, atol=1e-5)
    patches = own.last_hidden_state[:, 1:]
    if arch == "clip":   # CLIP's final norm is applied to the patches as to the class token
        patches = ref.post_layernorm(patches)
    assert out.grid.shape == (2, 32, 4, 4)
    assert torch.allclose(out.grid.flatten(2).transpose(1, 2), patches, atol=1e-5)


def test_roi_align_boxes_in_input_pixels_map_to_the_native_grid(folders):
    tower = VisionTower({"pretrained": folders["vit"][0]}).eval()
    images = torch.rand(1, 3, 64, 64)              # twice the native 32 px: resized to it
    out = tower(images)
    box = torch.tensor([[0.0, 0.0, 32.0, 64.0]])   # the left half of the input image
    roi = tower.roi_features(out.grid, [box], (64, 64), output_size=1)
    # the left half of the 4x4 grid averaged by the same RoI Align on native pixels
    ref = roi_align(out.grid, [torch.tensor([[0.0, 0.0, 16.0, 32.0]])], 1, 1 / 8, aligned=True)
    assert torch.allclose(roi, ref)
    crops = tower.crop_and_resize(images, [box])
    assert crops.shape == (1, 3, 32, 32)


def test_patch_mask_on_the_datas_grid_is_resampled_to_the_towers(folders):
    """grounding draws masks on its own patch grid; masked patches get the mask token."""
    path, _ = folders["vit"]
    tower = VisionTower({"pretrained": path}, use_mask_token=True).eval()
    with torch.no_grad():
        tower.mask_token.normal_()
    mask = torch.tensor([[True, False, False, False]])        # top-left of a 2x2 grid
    big = tower.resample_patch_mask(mask).view(4, 4)
    assert big[:2, :2].all() and big.sum() == 4
    images = torch.rand(1, 3, 32, 32)
    assert torch.allclose(tower(images, mask).features, tower(images, big.view(1, 16)).features)
    assert not torch.allclose(tower(images, mask).features, tower(images).features, atol=1e-4)


@pytest.mark.parametrize("c_in,c_out", [(3, 1), (1, 7), (3, 6)])
def test_patch_embedding_fold_keeps_the_response_to_a_replicated_input(c_in, c_out):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, 8, 4, 4)
    x = torch.randn(2, 1, 16, 16)
    folded = fold_patch_embedding(conv, c_out)
    assert folded.in_channels == c_out
    assert torch.allclose(folded(x.expand(-1, c_out, -1, -1)), conv(x.expand(-1, c_in, -1, -1)),
                          atol=1e-5)


def test_fold_refuses_a_channel_count_it_cannot_preserve():
    with pytest.raises(ValueError, match="3 -> 4 channels"):
        fold_patch_embedding(nn.Conv2d(3, 8, 4, 4), 4)


def test_interpolated_positions_keep_the_original_grid_and_the_axes():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 2 * 3, 5)
    assert torch.equal(interpolate_pos_embed(pos, (2, 3), (2, 3)), pos)
    # positions varying along the width only: resampling the height keeps every row
    row = torch.randn(1, 1, 3, 5)
    pos = torch.cat([torch.randn(1, 1, 5), row.expand(1, 4, 3, 5).reshape(1, 12, 5)], 1)
    new = interpolate_pos_embed(pos, (4, 3), (7, 3))
    assert new.shape == (1, 1 + 21, 5)
    assert torch.equal(new[:, :1], pos[:, :1])                     # class token kept
    assert torch.allclose(new[:, 1:].reshape(7, 3, 5), row[0, 0].expand(7, 3, 5), atol=1e-5)


RADAR_DIMS = {"range_time": 16, "doppler_time": 8, "azimuth_time": 8}


def radar_batch(T=32):
    torch.manual_seed(1)
    radar = {v: torch.randn(2, c, T) for v, c in RADAR_DIMS.items()}
    mask = torch.ones(2, T, dtype=torch.bool)
    return radar, mask


@pytest.mark.parametrize("arch", ["clip", "vit"])
def test_radar_tower_at_the_native_grid_is_the_model_on_a_replicated_map(folders, arch):
    """All three views stacked: 32 bins x 32 frames = the checkpoint's 4x4 grid,
    so the positions are the original ones; the folded 1-channel patch embedding
    answers as the 3-channel one on the map replicated to RGB."""
    path, ref = folders[arch]
    tower = RadarTower({"pretrained": path}, embed_dim=16, input_dims=RADAR_DIMS,
                       max_sequence_length=32).eval()
    assert torch.equal(pos_embed(tower.backbone), pos_embed(ref))
    radar, mask = radar_batch()
    out = tower(radar, mask)
    img = torch.cat([radar[v] for v in RADAR_DIMS], 1).unsqueeze(1).expand(-1, 3, -1, -1)
    own = ref(pixel_values=img)
    assert torch.allclose(out.features, tower.proj(own.pooler_output), atol=1e-4)
    tokens = own.last_hidden_state[:, 1:]
    if arch == "clip":
        tokens = ref.post_layernorm(tokens)
    cols = tokens.reshape(2, 4, 4, -1).mean(1)                     # mean over bins per column
    assert torch.allclose(out.sequence, tower.proj(cols), atol=1e-4)
    assert out.mask.shape == (2, 4) and out.mask.all()


def test_radar_tower_masks_padded_columns_out_of_attention(folders):
    path, _ = folders["vit"]
    tower = RadarTower({"pretrained": path}, embed_dim=16, input_dims=RADAR_DIMS,
                       max_sequence_length=48).eval()   # grid 4 x 6: positions resampled
    radar, mask = radar_batch(48)
    mask[1, 30:] = False                                # sample 1: columns 4 and 5 are padding
    out = tower(radar, mask)
    assert out.mask.tolist() == [[True] * 6, [True] * 4 + [False] * 2]
    assert (out.sequence[1, 4:] == 0).all()
    # change the position embeddings of the padded columns: sample 1 cannot see it
    pos = pos_embed(tower.backbone).detach().clone()
    grid = pos[:, 1:].reshape(1, 4, 6, -1).clone()
    grid[:, :, 4:] += torch.randn(grid[:, :, 4:].shape)   # not a constant: LayerNorm removes those
    set_pos_embed(tower.backbone, torch.cat([pos[:, :1], grid.reshape(1, 24, -1)], 1))
    moved = tower(radar, mask)
    assert torch.allclose(moved.features[1], out.features[1], atol=1e-5)
    assert torch.allclose(moved.sequence[1], out.sequence[1], atol=1e-5)
    assert not torch.allclose(moved.features[0], out.features[0], atol=1e-3)


def test_radar_tower_state_dict_loads_into_a_rebuilt_tower(folders):
    """Resume: the surgery is repeated on load, so the shapes match."""
    path, _ = folders["clip"]
    kw = dict(embed_dim=16, input_dims=RADAR_DIMS, max_sequence_length=48, radar_views="all")
    a = RadarTower({"pretrained": path}, **kw)
    with torch.no_grad():
        a.backbone.embeddings.position_embedding.weight.add_(
            torch.randn(a.backbone.embeddings.position_embedding.weight.shape))
    b = RadarTower({"pretrained": path}, **kw)
    b.load_state_dict(a.state_dict())
    radar, mask = radar_batch(48)
    assert torch.allclose(a.eval()(radar, mask).features, b.eval()(radar, mask).features)


def test_radar_tower_checks_the_map_against_the_patch_size(folders):
    with pytest.raises(ValueError, match="max_sequence_length = 30 is not a multiple"):
        RadarTower({"pretrained": folders["vit"][0]}, input_dims=RADAR_DIMS, max_sequence_length=30)
