"""Families plug into the one training loop through this contract.

A family is a package ``families/<name>/`` (``--family <name>``) whose
``__init__.py`` defines the functions below (its evaluation, figures and
stage 2 live beside it; its datasets and collate in ``data/<name>/``).
Nothing registers itself; ``load_family(name)`` just imports the package.
The loop (``train_stage1.py``) owns everything else: distribution,
precision, accumulation, checkpoints and resumption, logging.

Stage 1 (contrastive pretraining)
---------------------------------
``prepare_data(cfg) -> None``
    Make the on-disk data if it is missing (generators write the real
    dataset's format, cached under ``cfg["data"]["root"]``). Called on local
    rank 0 only, before every other rank builds its datasets.
``build_datasets(cfg) -> {"train": Dataset, "val": Dataset, "test": Dataset}``
    Map-style datasets. Per-item randomness (crops, augmentation) must come
    from ``training.data.item_rng(seed, epoch, index)`` and the dataset's
    ``set_epoch(epoch)`` (optional), so a resumed run sees the same items
    (randomness inside the model, e.g. dropout, is reseeded by the loop for
    every micro-batch).
``collate(items) -> batch``
    ``batch`` is a dict of tensors (batch-first) and lists (e.g. captions).
``build_model(cfg) -> nn.Module``
    ``model(batch) -> dict[str, Tensor]`` of *per-sample* features, all
    batch-first. The model must not mix samples (no BatchNorm across the
    batch, no B x B terms): that is what makes ``--accum-freq`` exact.
    Optional ``model.set_grad_checkpointing(True)``.
``build_criterion(cfg, rank, world_size) -> nn.Module``
    ``criterion(features, batch, epoch) -> (loss, logs)`` where ``features``
    and ``batch`` cover the whole local (effective) batch, ``loss`` is a
    scalar and ``logs`` a dict of floats/0-dim tensors (every loss term).
    All cross-sample parameters live here: the learnable logit scale (stored
    as a log, named ``logit_scale``; the loop clamps it to log(100)), the
    SigLIP bias (``logit_bias``), similarity heads. With accumulation the
    loop counts their gradient once.
``evaluate(model, criterion, dataset, cfg, device, out_dir=None, writer=None,
           step=0) -> dict[str, float]``
    Flat metric dict on a whole split (rank 0 only). ``out_dir`` given: also
    write figures there (PNG); ``writer`` given: also log images to
    TensorBoard.

Learning-rate multipliers per parameter prefix are the config's
``lr_multipliers`` map (``training/optim.py``); a family has no hook for them.

Stage 2 (supervised, ``train_stage2.py``)
-----------------------------------------
``build_stage2(cfg, stage1_model_state, mode) -> dict`` with keys
``datasets`` ({"train","val","test"}), ``collate``, ``model``
(``model(batch) -> predictions``), ``loss_fn(pred, batch) -> (loss, logs)``,
``evaluate(model, dataset, cfg, device, out_dir=None) -> dict``.
``mode`` is one of ``scratch``, ``linear`` (frozen encoder + head),
``finetune`` (all trainable), ``frozen_then_finetune``.
"""
import importlib

FAMILIES = ("radar", "sclap", "timesclip", "grounding")


def load_family(name):
    """``radar`` -> families.radar; a dotted path (``tests.tiny_family``) is
    imported as it is, so tests and users can plug in a family of their own."""
    if "." in name:
        return importlib.import_module(name)
    try:
        return importlib.import_module(f"families.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"families.{name}":
            raise ValueError(f"unknown family {name!r}; expected one of {FAMILIES} "
                             f"or a package families/{name}/") from None
        raise
