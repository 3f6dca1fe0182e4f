"""Region and span features of the grounding model; per-sample forward."""
import pytest
import torch

from models.grounding.model import GroundingModel, roi_object_features, span_pool


def test_roi_align_equals_pooling_over_the_boxs_patches():
    torch.manual_seed(0)
    B, g, p, C = 2, 8, 8, 5
    patches = torch.randn(B, g * g, C)
    grid = patches.reshape(B, g, g, C)                      # [B, row, col, C]
    # boxes on the patch grid: rows r0:r1, cols c0:c1 (even sizes: 2x2 bins land on patch centres)
    cells = [[(1, 3, 2, 4), (0, 4, 4, 8)], [(4, 8, 0, 2), (2, 6, 2, 6)]]
    boxes = torch.tensor([[[c0 * p, r0 * p, c1 * p, r1 * p] for r0, r1, c0, c1 in row] for row in cells],
                         dtype=torch.float32)
    feats = roi_object_features(patches, boxes, g, p, output_size=2)   # [B, O, C]
    for b in range(B):
        for o, (r0, r1, c0, c1) in enumerate(cells[b]):
            want = grid[b, r0:r1, c0:c1].reshape(-1, C).mean(0)
            torch.testing.assert_close(feats[b, o], want, rtol=1e-5, atol=1e-5)
            # and it differs from a box shifted by one patch (the mapping is not loose)
            wrong = grid[b, r0:r1, min(c0 + 1, g - (c1 - c0)):min(c1 + 1, g)].reshape(-1, C).mean(0)
            if c1 < g:
                assert not torch.allclose(feats[b, o], wrong, atol=1e-3)


def test_span_pool_mean_and_max():
    tok = torch.tensor([[[1.0, 0], [3, 2], [5, -4], [7, 8]]])       # [1, L=4, D=2]
    mask = torch.tensor([[[False, True, True, False], [False, False, False, False]]])
    torch.testing.assert_close(span_pool(tok, mask, "mean"), torch.tensor([[[4.0, -1], [0, 0]]]))
    torch.testing.assert_close(span_pool(tok, mask, "max"), torch.tensor([[[5.0, 2], [0, 0]]]))


def _batch(B=3, S=32, E=2, O=3):
    g = torch.Generator().manual_seed(1)
    boxes = torch.tensor([[2.0, 2, 14, 14], [16, 4, 30, 18], [4, 18, 20, 30]]).expand(B, O, 4).clone()
    caps = ["The red circle is left of a blue square .", "A green star in the top .",
            "There is a white cross and a black diamond ."][:B]
    spans = torch.tensor([[[0, 14], [25, 38]], [[0, 12], [0, 0]], [[9, 22], [27, 42]]])[:B]
    return {"image": torch.randn(B, 3, S, S, generator=g), "caption": caps, "boxes": boxes,
            "obj_valid": torch.ones(B, O, dtype=torch.bool), "entity_spans": spans,
            "entity_valid": torch.tensor([[True, True], [True, False], [True, True]])[:B],
            "entity_target": torch.eye(E, O, dtype=torch.bool).expand(B, E, O).clone(),
            "image_index": torch.arange(B),
            "patch_mask": torch.rand(B, 16, generator=g) < 0.25,
            "neg_patch_mask": torch.rand(B, 16, generator=g) < 0.25}


@pytest.mark.parametrize("pooling,cross", [("roi_align", True), ("crop", False)])
def test_forward_is_per_sample(pooling, cross):
    """The contract: a sample's features do not depend on the rest of the batch."""
    torch.manual_seed(0)
    model = GroundingModel(image_size=32, patch_size=8, vision_width=32, vision_depth=1, vision_heads=2,
                           embed_dim=32, object_pooling=pooling, crop_size=16, cross_attention=cross).eval()
    batch = _batch()
    full = model(batch)
    assert full["entity_features"].shape == (3, 2, 32) and full["object_features"].shape == (3, 3, 32)
    assert full["entity_valid"].tolist() == [[True, True], [True, False], [True, True]]
    for i in range(3):
        one = model({k: (v[i:i + 1] if torch.is_tensor(v) else v[i:i + 1]) for k, v in batch.items()})
        for k in ("image_features", "text_features", "object_features", "masked_image_features"):
            torch.testing.assert_close(one[k][0], full[k][i], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(one["entity_features"][0][full["entity_valid"][i]],
                                   full["entity_features"][i][full["entity_valid"][i]], rtol=1e-4, atol=1e-4)
    # the masked view differs from the plain one: the negative is not a copy of the positive
    assert not torch.allclose(full["masked_image_features"], full["image_features"], atol=1e-3)
