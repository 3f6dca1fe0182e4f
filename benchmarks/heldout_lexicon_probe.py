"""What the pretrained text model already knows of the held-out wordings.

    python benchmarks/heldout_lexicon_probe.py [--text-model PATH]

The held-out phrasings of evaluation (data/<family>/heldout.py) use words
that no training grammar writes ("cobalt" for blue, "prior to" for before,
"a hound bays" for a dog barking). A model trained on the training grammar
can only carry its training over to them through what the pretrained text
model puts near each other. This probe asks the text model alone: each
held-out wording, embedded as the model's own sentence embedding (mean of
its last hidden states over the tokens, L2-normalised: how all-MiniLM-L6-v2
is meant to be used), against every training wording of every concept of
its kind (the colours, the shapes, the sounds, ...); a concept's score is
its best-matching training wording. It prints, per kind, the share of
held-out wordings whose own concept scores highest (top-1) and the chance
level (1 / concepts), then every miss.

No training, no data on disk: seconds on a CPU. ``--text-model`` takes any
local folder the towers accept (model.text.pretrained), e.g. a CLIP text
tower, to see whether it would know more.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.grounding import captions as g_train  # noqa: E402
from data.grounding import heldout as g_held  # noqa: E402
from data.radar import captions as r_train  # noqa: E402
from data.radar import heldout as r_held  # noqa: E402
from data.radar import text as r_template  # noqa: E402
from data.sclap import captions as s_train  # noqa: E402
from data.sclap import heldout as s_held  # noqa: E402
from models.text_encoder import TextEncoder  # noqa: E402
from models.text_head import pool_tokens  # noqa: E402

# Radar's time connectors, by what they say of the clause they introduce: the
# training grammar's (data/radar/captions.py) and the held-out one's, by hand
# from the frames (tests/test_radar_heldout.py reads the same roles back).
RADAR_CONNECTORS_TRAIN = {"before": ["before"], "after": ["after", "but first"],
                          "next": ["then", "and then", "after that", "afterwards", "next", "followed by"],
                          "first": ["first", "at first", "starts by"], "last": ["finally", "ends by"]}
RADAR_CONNECTORS_HELD = {"before": ["prior to", "ahead of"],
                         "after": ["in the wake of", "once done", "having", "beforehand"],
                         "next": ["subsequently", "later on", "coming next"],
                         "first": ["initially", "begins by"], "last": ["eventually", "lastly", "concludes by"]}


def _words(phrases):
    """A phrase template's plain words: the ^ verb marks and {fills} dropped."""
    out = []
    for p in phrases:
        p = p if isinstance(p, str) else p[0]
        p = " ".join(w.lstrip("^") for w in p.split() if not w.startswith("{"))
        if p:
            out.append(p)
    return out


def kinds():
    """{kind: (training {concept: [wordings]}, held-out {concept: [wordings]})}."""
    k = {}
    k["grounding colour"] = ({c: list(w) for c, w in g_train.COLOUR_WORDS.items()},
                             {c: [w] for c, w in g_held.COLOURS.items()})
    k["grounding shape"] = ({c: list(w) for c, w in g_train.SHAPE_WORDS.items()},
                            {c: [w] for c, w in g_held.SHAPES.items()})
    k["grounding texture"] = ({c: list(w) for c, w in g_train.TEXTURE_WORDS.items()},
                              {c: [w] for c, w in g_held.TEXTURES.items()})
    k["grounding size"] = ({c: list(w) for c, w in g_train.SIZE_WORDS.items()},
                           {c: [w] for c, w in g_held.SIZES.items()})
    k["grounding relation"] = ({c: list(w) for c, w in g_train.RELATION_WORDS.items()},
                               {c: list(w) for c, w in g_held.RELATIONS.items()})
    k["grounding background"] = ({c: list(w) for c, w in g_train.BACKGROUND_WORDS.items()},
                                 {c: [w] for c, w in g_held.BACKGROUNDS.items()})
    k["sCLAP sound"] = ({c: d["nouns"] + d["clauses"] + d["nominals"] for c, d in s_train.SOUNDS.items()},
                        {c: d["clauses"] + d["nominals"] for c, d in s_held.SOUNDS.items()})
    k["sCLAP direction"] = ({i: list(w) for i, w in enumerate(s_train.DIRECTIONS)},
                            {i: list(w) for i, w in enumerate(s_held.DIRECTIONS)})
    train_actions = {a: _words(r_train.PHRASES[a]) + [r_template.ACTION_PROMPTS[a]] for a in r_train.PHRASES}
    k["radar action"] = (train_actions, {a: _words(r_held.PHRASES[a]) + [r_held.HELDOUT_ACTION_PROMPTS[a]]
                                         for a in r_held.PHRASES})
    k["radar direction"] = ({d: list(w) for d, w in r_train.LEXICON["dir"].items()},
                            {d: list(w) for d, w in r_held.LEXICON["hdir"].items()})
    k["radar time connector"] = (RADAR_CONNECTORS_TRAIN, RADAR_CONNECTORS_HELD)
    return k


class SentenceEmbedder:
    def __init__(self, model=None):
        self.enc = TextEncoder(model, embed_dim=8, freeze_backbone=True, cache_features=False).eval()

    @torch.no_grad()
    def __call__(self, texts):
        tok = {k: v for k, v in self.enc.tokenize(texts).items() if k != "offset_mapping"}
        h = self.enc.backbone(**tok).last_hidden_state
        return F.normalize(pool_tokens(h, tok["attention_mask"].bool(), "mean"), dim=-1)


def probe(embed, train, held):
    """(hits, total, misses): held-out wordings whose own concept scores highest."""
    concepts = list(train)
    words = [(c, w) for c in concepts for w in train[c]]
    E = embed([w for _, w in words])
    owner = torch.tensor([concepts.index(c) for c, _ in words])
    hits, total, misses = 0, 0, []
    for c, wordings in held.items():
        S = embed(wordings) @ E.T                                   # [n, words]
        per = torch.full((len(wordings), len(concepts)), -2.0)
        per = per.scatter_reduce(1, owner.expand(len(wordings), -1), S, reduce="amax")
        best = per.argmax(1)
        for w, b in zip(wordings, best.tolist()):
            total += 1
            if concepts[b] == c:
                hits += 1
            else:
                misses.append((w, c, concepts[b]))
    return hits, total, misses


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text-model", default=None, help="a local text model folder (default: bundled MiniLM)")
    ap.add_argument("--misses", action="store_true", help="also list every miss")
    args = ap.parse_args(argv)
    embed = SentenceEmbedder(args.text_model)
    print(f"text model: {args.text_model or 'bundled all-MiniLM-L6-v2'}; held-out wording -> nearest "
          f"training concept (its sentence embedding, best training wording per concept)")
    print(f"{'kind':<22} {'concepts':>8} {'held-out':>8} {'top-1':>6} {'chance':>6}")
    for kind, (train, held) in kinds().items():
        hits, total, misses = probe(embed, train, held)
        print(f"{kind:<22} {len(train):>8} {total:>8} {hits / total:>6.2f} {1 / len(train):>6.2f}")
        if args.misses:
            for w, c, b in misses:
                print(f"    {w!r}: {c} -> {b}")


if __name__ == "__main__":
    main()
