"""Radar's strings for the frozen text features on disk (training/text_cache.py):
every caption, order-swapped caption and zero-shot prompt of every split."""


def all_captions(datasets):
    """Every string the model will encode: captions, swapped captions, prompts.
    datasets: {split: TemporalNegatives}."""
    texts = set()
    for ds in datasets.values():
        for i, it in enumerate(ds.base.items):
            texts.update(it["captions"])
            texts.update(ds.swapped(i))
        texts.update(ds.base.action_prompts.values())
    return sorted(texts)
