"""training/evaluation.py: encode a split, retrieve with direction names."""
import torch
import torch.nn as nn

from training.evaluation import encode_split, eval_mode, retrieval, retrieval_scores, similarity_figure


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.drop = nn.Dropout(0.5)
        self.frozen = nn.Linear(2, 2).eval()      # a frozen tower stays in eval mode

    def forward(self, batch):
        x = batch["x"]
        seq = x[:, None, :].expand(-1, int(batch["n"][0]), -1)
        return {"feat": self.drop(self.lin(x)), "seq": seq, "mask": seq[..., 0] > -1e9,
                "dtype_probe": self.lin(x)}


def _collate(items):
    return {"x": torch.stack([i[0] for i in items]), "n": torch.tensor([i[1] for i in items]),
            "caption": [f"c{i[1]}" for i in items]}


def test_encode_split_in_order_under_autocast_and_restores_modes():
    torch.manual_seed(0)
    m = _Model().train()
    m.frozen.eval()
    data = [(torch.randn(3), 1 + i // 2) for i in range(5)]        # batch 2: lengths 1, 2, 3
    cfg = {"precision": "amp_bf16", "eval": {"batch_size": 2}}
    rng = torch.get_rng_state()
    out = encode_split(m, data, _collate, cfg, torch.device("cpu"), collect=("caption",))
    assert torch.equal(torch.get_rng_state(), rng)                 # the training RNG stream is untouched
    assert m.training and not m.frozen.training and torch.is_grad_enabled()
    ref = m.lin(torch.stack([d[0] for d in data]))                 # no dropout: eval mode
    assert out["feat"].dtype == torch.float32
    assert torch.allclose(out["feat"], ref, atol=3e-2)             # bf16 autocast ran
    assert not torch.equal(out["feat"], ref.detach())
    assert out["seq"].shape == (5, 3, 3) and out["mask"].dtype == torch.bool
    assert out["mask"].sum(1).tolist() == [1, 1, 2, 2, 3]          # padding beyond each batch's length
    assert out["caption"] == ["c1", "c1", "c2", "c2", "c3"]
    fp32 = encode_split(m, data, _collate, {**cfg, "precision": "fp32"}, torch.device("cpu"),
                        keys=("feat",))
    assert set(fp32) == {"feat"} and torch.allclose(fp32["feat"], ref, atol=1e-6)


def test_retrieval_direction_names_and_hand_ranks():
    scores = torch.tensor([[0.9, 0.1, 0.0],      # caption 0 of item 0: rank 1
                           [0.8, 0.7, 0.0],      # caption 1 of item 1: rank 2
                           [0.1, 0.2, 0.3]])     # caption 2 of item 2: rank 1
    m = retrieval_scores(scores, [0, 1, 2], item="r")
    assert m["t2r_R@1"] == 2 / 3 and m["t2r_mean_rank"] == 4 / 3
    assert "r2t_R@1" in m and not any(k.startswith(("t2i", "i2t")) for k in m)
    emb = torch.eye(3)
    assert retrieval(emb, emb, [0, 1, 2], item="a")["t2a_R@1"] == 1.0


def test_eval_mode_restores_grad_and_flags():
    m = _Model().train()
    with eval_mode(m):
        assert not m.training and not torch.is_grad_enabled()
    assert m.training and torch.is_grad_enabled()
    fig = similarity_figure(torch.eye(3), "item", "caption")
    assert fig.axes[0].get_xlabel() == "item"
