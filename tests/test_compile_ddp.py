"""--torchcompile under 2 gloo ranks (torchrun): compiled towers inside DDP,
with accumulation (no_sync on the first micro-step) and the gathered local
loss, end with the weights of 1 compiled rank with the whole batch, which are
eager's."""
from tests.test_compile import BACKEND
from tests.test_ddp_loop import _assert_same, _run


def test_two_compiled_ranks_match_one_compiled_rank_and_eager(tmp_path, capsys, one_torch_thread):
    two, out = _run(tmp_path, "two", 2, "--batch-size", "16", "--local-loss",
                    "--gather-with-grad", "--accum-freq", "2", *BACKEND, steps=4)
    assert "torch.compile: compiled a, b" in out
    one, _ = _run(tmp_path, "one", 1, "--batch-size", "32", *BACKEND, steps=4, capsys=capsys)
    eager, _ = _run(tmp_path, "eager", 1, "--batch-size", "32", steps=4, capsys=capsys)
    assert two["world_size"] == 2 and two["config"]["torchcompile"]
    _assert_same(two, one)
    _assert_same(one, eager)
