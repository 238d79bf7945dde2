"""Batch invariance on CPU: the denoiser and VAE see one sample at a time, so no image depends on its batch."""

from __future__ import annotations

import functools

# CPU BLAS/oneDNN pick kernels by problem size: a Linear on (batch, dim) inputs or a small Conv2d gives results
# that differ in the last bits between batch 1 and batch 2+. Splitting the denoiser's batch (which holds both CFG
# branches of every image) into single samples makes every call the same shape whatever the micro-batch, so an
# image is bit-identical alone or at any position of any batch. Prompt encoding already runs once per prompt.

# Flux's positional ids are (sequence, 3): never batched, even when the sequence length equals the batch.
_UNBATCHED_KEYS = {"img_ids", "txt_ids"}


def _batch_of(args, kwargs) -> int | None:
    import torch

    first = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    return first.shape[0] if torch.is_tensor(first) and first.dim() > 0 else None


def _take(value, i: int, batch: int):
    import torch

    if torch.is_tensor(value):
        return value[i : i + 1] if value.dim() > 0 and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: v if k in _UNBATCHED_KEYS else _take(v, i, batch) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_take(v, i, batch) for v in value)
    return value


def _join(outputs: list):
    import torch

    first = outputs[0]
    if torch.is_tensor(first):
        return torch.cat(outputs)
    if isinstance(first, tuple):
        return tuple(_join([o[j] for o in outputs]) for j in range(len(first)))
    if hasattr(first, "to_tuple"):  # diffusers BaseOutput
        return type(first)(**{k: _join([o[k] for o in outputs]) for k in first.keys()})
    return first


def per_sample(forward):
    """Wrap a module's forward so a batch of B runs as B calls of one sample, joined along dim 0."""

    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        batch = _batch_of(args, kwargs)
        if not batch or batch == 1:
            return forward(*args, **kwargs)
        outputs = [
            forward(*_take(args, i, batch), **{k: v if k in _UNBATCHED_KEYS else _take(v, i, batch) for k, v in kwargs.items()})
            for i in range(batch)
        ]
        return _join(outputs)

    wrapper.imagegen_per_sample = True
    return wrapper


def make_batch_invariant(pipe) -> None:
    """Run the pipeline's denoiser per sample and decode the VAE per sample (idempotent)."""
    for name in ("unet", "transformer"):
        module = getattr(pipe, name, None)
        if module is not None and not getattr(module.forward, "imagegen_per_sample", False):
            module.forward = per_sample(module.forward)
    if getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_slicing()
