"""A resume with a longer schedule continues at the new schedule's lr."""
import pytest
import torch

from training.optim import build_scheduler, cosine_lambda, sync_lr


def test_resume_with_more_steps_uses_the_new_schedules_lr():
    cfg = {"warmup": 2, "min_lr_ratio": 0.0}
    p = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, cfg, total_steps=10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)      # the end of the old cosine
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}

    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    sched2 = build_scheduler(opt2, cfg, total_steps=20)          # --max-steps 20 on resume
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.0)     # without the fix: a step at lr 0
    sync_lr(sched2)
    expected = cosine_lambda(2, 20)(10)
    assert expected > 0.4 and opt2.param_groups[0]["lr"] == pytest.approx(expected)
    assert sched2.get_last_lr() == [pytest.approx(expected)]
