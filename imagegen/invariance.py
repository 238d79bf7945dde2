"""Batch invariance on CPU: an image's pixels do not depend on its micro-batch, bit for bit, at batched speed.

CPU kernels are picked by problem size, so the same sample can round differently alone and inside a batch. Measured
on torch 2.13 (x86, MKL + oneDNN), two places do this in a diffusion pipeline, and each gets a fixed kernel:

- Conv2d: PyTorch runs a small batch-1 input through its native `Slow2d` kernel, a larger batch through oneDNN, and
  a batch of 16+ with oneDNN off through NNPACK. oneDNN's own result per sample does not depend on the batch, so
  every float32 CPU convolution is sent to oneDNN (`torch.mkldnn_convolution`) whatever its batch.
- Linear: a matmul with fewer than 8 rows (the time embedding, pooled text projections: one row per sample) takes
  BLAS's small-matrix path. Inputs with fewer than `_MIN_ROWS` rows are padded with zero rows so every call takes
  the same path as a batched one; the padding costs nothing measurable on vectors this small.

- Conv3d (the causal video VAEs of Qwen-Image and Wan, which pad in their own forward): the same, in the
  `_conv_forward` every Conv3d forward ends in.
- GroupNorm: its channels-last kernel (diffusers' attention blocks hand back channels-last views) splits work by
  batch; the contiguous kernel does not, so inputs are made contiguous first.

Attention (SDPA), LayerNorm and elementwise ops were found invariant. tests/test_batch.py checks the whole result on
every family: an image is bit-identical alone or at any position of any micro-batch.
"""

from __future__ import annotations

import weakref

_MIN_ROWS = 64
_PATCHED: "weakref.WeakSet" = weakref.WeakSet()  # modules already given a fixed kernel (a module shared by pipelines)


def _linear_forward(module):
    import torch
    import torch.nn.functional as F

    def forward(x):
        rows = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
        if not 0 < rows < _MIN_ROWS:
            return F.linear(x, module.weight, module.bias)
        flat = x.reshape(rows, x.shape[-1])
        padded = torch.cat([flat, flat.new_zeros(_MIN_ROWS - rows, x.shape[-1])])
        return F.linear(padded, module.weight, module.bias)[:rows].reshape(*x.shape[:-1], module.out_features)

    return forward


def _conv_forward(module):
    import torch

    def forward(x):
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4 or torch.compiler.is_compiling():
            # torch.compile traces with fake tensors, which oneDNN's op cannot take; compiled kernels are its own
            return module._conv_forward(x, module.weight, module.bias)
        return torch.mkldnn_convolution(
            x.contiguous(), module.weight, module.bias, module.padding, module.stride, module.dilation, module.groups
        )

    return forward


def _conv3d_kernel(module):
    """Conv3d's `_conv_forward` on oneDNN (a causal VAE's convolutions pad in their own `forward`, then call it)."""
    import torch

    original = module._conv_forward

    def conv(x, weight, bias):
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 5 or torch.compiler.is_compiling():
            return original(x, weight, bias)
        return torch.mkldnn_convolution(x.contiguous(), weight, bias, module.padding, module.stride, module.dilation,
                                        module.groups)

    return conv


def _group_norm_forward(module):
    import torch.nn.functional as F

    def forward(x):
        return F.group_norm(x.contiguous(), module.num_groups, module.weight, module.bias, module.eps)

    return forward


def make_batch_invariant(pipe) -> int:
    """Give every Linear, Conv2d, Conv3d and GroupNorm of the pipeline's models a batch-independent CPU kernel; returns how many."""
    import torch

    patched = 0
    mkldnn = torch.backends.mkldnn.is_available()
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            if module in _PATCHED:
                continue
            if isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward:
                module.forward = _linear_forward(module)
            elif isinstance(module, torch.nn.GroupNorm) and type(module).forward is torch.nn.GroupNorm.forward:
                module.forward = _group_norm_forward(module)
            elif (
                isinstance(module, torch.nn.Conv2d)
                and type(module).forward is torch.nn.Conv2d.forward
                and mkldnn
                and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)
            ):
                module.forward = _conv_forward(module)
            elif (isinstance(module, torch.nn.Conv3d) and mkldnn and module.padding_mode == "zeros"
                  and not isinstance(module.padding, str)):
                module._conv_forward = _conv3d_kernel(module)
            else:
                continue
            _PATCHED.add(module)
            patched += 1
    return patched
