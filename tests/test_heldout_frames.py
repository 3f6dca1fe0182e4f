"""benchmarks/heldout_frames.py: a caption is attributed to the frame that made it."""
import numpy as np

from benchmarks.heldout_frames import frame_of, frame_pattern
from data.radar.caption_grammar import action_facts, choose_phrase, render
from data.radar.heldout import HELDOUT
from data.radar.text import clean_caption


def test_every_heldout_frame_is_recognised_in_its_own_captions():
    actions = [{"name": "walk", "params": {"speed": 0.6, "direction": "left"}}, {"name": "jump", "params": {"reps": 2}},
               {"name": "sit down", "params": {}}]
    rng = np.random.default_rng(0)
    for n in (2, 3):
        frames = [(f, frame_pattern(f)) for f in HELDOUT.frames[n]]
        facts = [action_facts(a) for a in actions[:n]]
        for frame in HELDOUT.frames[n]:
            for subject in HELDOUT.subjects[:3]:
                cap = clean_caption(render(HELDOUT, frame, subject, [choose_phrase(HELDOUT, f, rng) for f in facts]) + ".")
                assert frame_of(cap, frames) == frame, (frame, cap)
