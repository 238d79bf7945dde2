"""Train the demo model: a tiny Stable Diffusion XL (same component classes, same pipeline) on the shapes world.

    python -m imagegen.demo.train --out imagegen/demo/model          # the shipped weights (see the README)
    python -m imagegen.demo.train --out /tmp/demo --vae-steps 50 --unet-steps 100   # a short check
    python -m imagegen.demo.train --from imagegen/demo/model --out /tmp/demo-ft --ft-steps 800   # stage 3 only

Seeded end to end: the same seed, step counts and thread count give the same weights. Two stages, and a third:

1. The VAE (``AutoencoderKL``, 3 blocks: 64x64 pixels <-> 16x16x4 latents) learns to reconstruct the pictures.
2. The UNet (``UNet2DConditionModel`` with SDXL's ``text_time`` conditioning) and both CLIP text encoders learn
   to denoise the latents, with the caption dropped 10% of the time so classifier-free guidance works.
   Loss: epsilon MSE with min-SNR-5 weighting; the saved weights are an exponential moving average.
3. Optional, ``--from FOLDER`` (instead of 1 and 2): fine-tune an existing demo model. The VAE (scaling_factor
   too), the tokenizers and, unless ``--ft-text-encoders``, the text encoders are copied unchanged; the UNet goes on
   training with a loss that covers the low-noise timesteps min-SNR-5 all but ignores (low-strength img2img runs
   there): ``--ft-snr-gamma`` (0: plain epsilon MSE), t = floor(1000 * u ** ``--ft-t-power``) (1: uniform, >1:
   toward small t), ``--ft-steps``, ``--ft-lr``; ``--ft-swap P``: a sample at t < ``--ft-swap-below`` gets another
   scene's caption with probability P (text must not override a nearly clean latent). manifest.json adds ``finetune``.

The text is encoded exactly as ``StableDiffusionXLPipeline.encode_prompt`` does (penultimate hidden states of
both encoders, concatenated; pooled embedding of the second), and the pipeline is saved with
``force_zeros_for_empty_prompt=False`` so its unconditional branch is the empty caption the model was trained on.
``manifest.json`` in the output folder records how the weights were made.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from . import world

SCRIPT_VERSION = "1"
MAX_TOKENS = 24  # tokenizer model_max_length: the longest grammar caption is 10 tokens
TEXT_HIDDEN = 64
TIME_IDS = (world.IMAGE_SIZE, world.IMAGE_SIZE, 0, 0, world.IMAGE_SIZE, world.IMAGE_SIZE)
CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0

# The schedule the UNet is trained on, and the pipeline's native scheduler. Linear betas to 0.02 leave almost no
# signal at t=999 (sqrt(alpha_bar) = 0.006): on 16x16 latents SDXL's scaled_linear schedule (0.068) would leak the
# background colour into the noise, and sampling from pure noise would then get it wrong.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "prediction_type": "epsilon", "timestep_spacing": "trailing", "steps_offset": 0, "interpolation_type": "linear",
    "use_karras_sigmas": False, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True,
    "sample_max_value": 1.0,
}


def build_tokenizer():
    """A CLIP BPE tokenizer whose merges make every grammar word one token; other text falls back to bytes."""
    from transformers import CLIPTokenizer

    from ..testing import clip_byte_vocab, with_clip_specials

    vocab = clip_byte_vocab()  # merged words are appended after the bytes, then BOS and EOS
    merges: list[tuple[str, str]] = []

    def make():
        return CLIPTokenizer(vocab=with_clip_specials(vocab), merges=list(merges), model_max_length=MAX_TOKENS)

    for word in world.vocabulary():
        tok = make()
        pieces = tok.tokenize(word)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = [pair[0] + pair[1], *pieces[2:]]
    tok = make()
    for word in world.vocabulary():
        if len(tok.tokenize(word)) != 1:
            raise RuntimeError(f"demo tokenizer: {word!r} is not one token: {tok.tokenize(word)}")
    return tok


def build_components(tokenizer) -> dict[str, Any]:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from ..testing import clip_text_config

    text_config = clip_text_config(tokenizer.get_vocab(), TEXT_HIDDEN, TEXT_HIDDEN, layers=3, max_positions=MAX_TOKENS)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=16, sample_size=world.IMAGE_SIZE, mid_block_add_attention=False,
        force_upcast=False,
    )
    unet = UNet2DConditionModel(
        sample_size=world.IMAGE_SIZE // 4, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(64, 128), layers_per_block=1,
        attention_head_dim=(2, 4),  # diffusers' name for the number of heads
        transformer_layers_per_block=1, cross_attention_dim=2 * TEXT_HIDDEN, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=TEXT_HIDDEN + 6 * 8,
        use_linear_projection=True, norm_num_groups=32,
    )
    return {"vae": vae, "unet": unet, "text_encoder": CLIPTextModel(text_config),
            "text_encoder_2": CLIPTextModelWithProjection(text_config), "tokenizer": tokenizer,
            "tokenizer_2": tokenizer, "scheduler": EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)}


def encode_text(text_encoder, text_encoder_2, ids):
    """(prompt_embeds, pooled) exactly as StableDiffusionXLPipeline.encode_prompt computes them."""
    import torch

    first = text_encoder(ids, output_hidden_states=True)
    second = text_encoder_2(ids, output_hidden_states=True)
    return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second[0]


class Curve:
    """Training losses averaged over blocks of steps: at most ~100 points, whatever the step count."""

    def __init__(self, steps: int) -> None:
        self.block = max(1, steps // 100)
        self.points: list[float] = []
        self._acc: list[float] = []

    def add(self, loss: float) -> None:
        self._acc.append(loss)
        if len(self._acc) == self.block:
            self.points.append(round(sum(self._acc) / len(self._acc), 6))
            self._acc = []

    @property
    def final(self) -> float:
        """The mean of the last tenth of the run (or the last point)."""
        tail = self.points[-max(1, len(self.points) // 10):]
        return sum(tail) / len(tail) if tail else float("nan")


class Log:
    def __init__(self, quiet: bool = False) -> None:
        self.start = time.monotonic()
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.start:7.1f} s] {message}", file=sys.stderr, flush=True)


def _pixels(scenes):
    import numpy as np
    import torch

    arr = np.stack([np.asarray(world.render(s), dtype=np.uint8) for s in scenes])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(vae, pixels, steps: int, batch: int, lr: float, gen, log: Log) -> Curve:
    import torch

    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    curve = Curve(steps)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(step, steps, lr, warmup=min(100, steps // 10 + 1))
        idx = torch.randint(0, pixels.shape[0], (batch,), generator=gen)
        x = pixels[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=gen)
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / z[0].numel()
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.add(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"vae  step {step + 1:5d}/{steps}  loss {loss.item():.5f}  (recent mean {curve.final:.5f})")
    vae.eval()
    return curve


def encode_latents(vae, pixels, batch: int = 256):
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, pixels.shape[0], batch):
            out.append(vae.encode(pixels[i : i + batch]).latent_dist.mode())
    return torch.cat(out)


def train_unet(parts, latents, scenes, steps: int, batch: int, lr: float, rng: random.Random, gen, log: Log, *,
               gamma: float = MIN_SNR_GAMMA, t_power: float = 1.0, text_encoders: bool = True, warmup: int = 300,
               swap: float = 0.0, swap_below: int = 0) -> Curve:
    """Stage 2 (and, with other ``gamma``/``t_power``/``text_encoders``/``warmup``, the fine-tune of stage 3)."""
    import torch
    from diffusers import DDPMScheduler

    unet, te1, te2 = parts["unet"], parts["text_encoder"], parts["text_encoder_2"]
    noise_scheduler = DDPMScheduler.from_config(SCHEDULER_CONFIG)
    alphas_cumprod, total = noise_scheduler.alphas_cumprod, noise_scheduler.config.num_train_timesteps
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weights = torch.clamp(snr, max=gamma) / snr if gamma > 0 else torch.ones_like(snr)  # min-SNR-gamma, or none

    modules = [unet, te1, te2] if text_encoders else [unet]
    params = [p for m in modules for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    for m in modules:
        m.train()
    time_ids = torch.tensor([TIME_IDS], dtype=torch.float32).repeat(batch, 1)
    tokenize = functools.lru_cache(maxsize=None)(lambda text: parts["tokenizer"](
        text, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids[0])
    curve = Curve(steps)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(step, steps, lr, warmup=min(warmup, steps // 10 + 1))
        idx = torch.randint(0, latents.shape[0], (batch,), generator=gen)
        texts = ["" if rng.random() < CAPTION_DROPOUT else world.caption(scenes[i], rng) for i in idx.tolist()]
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        if t_power == 1:  # uniform (stage 2); else floor(total * u ** t_power), toward small t for t_power > 1
            t = torch.randint(0, total, (batch,), generator=gen)
        else:
            t = (torch.rand(batch, generator=gen) ** t_power * total).long().clamp(max=total - 1)
        if swap > 0:  # stage 3: another scene's caption at small t, so that there the latent, not the text, decides
            texts = [world.caption(rng.choice(scenes), rng) if x and u < swap_below and rng.random() < swap else x
                     for x, u in zip(texts, t.tolist())]
        xt = noise_scheduler.add_noise(x0, noise, t)
        with torch.set_grad_enabled(text_encoders):
            embeds, pooled = encode_text(te1, te2, torch.stack([tokenize(text) for text in texts]))
        pred = unet(xt, t, embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        per_sample = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per_sample * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        curve.add(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step + 1:5d}/{steps}  loss {loss.item():.5f}  (recent mean {curve.final:.5f})")
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    for m in modules:
        m.eval()
    return curve


def _start(seed: int, threads: int | None, quiet: bool):
    """Libraries quietened, torch threads set and seeded: (log, threads, torch generator, random.Random)."""
    import torch

    from ..loading import quiet_libraries
    quiet_libraries()
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return Log(quiet), threads, torch.Generator().manual_seed(seed), random.Random(seed)


def _save(parts, target: Path, manifest: dict[str, Any]) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**parts, force_zeros_for_empty_prompt=False, add_watermarker=False)
    target.mkdir(parents=True, exist_ok=True)  # (quiet_libraries, in _start, turned the progress bars off)
    pipe.save_pretrained(target, safe_serialization=True)
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def train(
    out: str | os.PathLike, *, seed: int = 0, images: int = 24000, vae_steps: int = 1500, unet_steps: int = 4000,
    batch: int = 64, vae_batch: int = 32, lr: float = 5e-4, vae_lr: float = 2e-3, threads: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train the demo model and save it as a StableDiffusionXLPipeline folder at ``out``; returns the manifest."""
    log, threads, gen, rng = _start(seed, threads, quiet)
    started = time.monotonic()
    parts = build_components(build_tokenizer())
    scenes = [world.sample_scene(rng) for _ in range(images)]
    pixels = _pixels(scenes)
    log(f"{images} pictures rendered; {threads} threads")
    vae_curve = train_vae(parts["vae"], pixels, vae_steps, vae_batch, vae_lr, gen, log)
    latents = encode_latents(parts["vae"], pixels)
    scaling = float(1.0 / latents.std())
    parts["vae"].register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    log(f"latents {tuple(latents.shape)}, scaling_factor {scaling:.5f}")
    unet_curve = train_unet(parts, latents, scenes, unet_steps, batch, lr, rng, gen, log)
    seconds = time.monotonic() - started
    command = {"seed": seed, "images": images, "vae_steps": vae_steps, "unet_steps": unet_steps, "batch": batch,
               "vae_batch": vae_batch, "lr": lr, "vae_lr": vae_lr, "threads": threads}
    manifest = _manifest(parts, command, vae_curve, unet_curve, seconds)
    _save(parts, Path(out), manifest)
    log(f"saved to {out} after {seconds / 60:.1f} min; final loss vae {vae_curve.final:.5f}, unet {unet_curve.final:.5f}")
    return manifest


def finetune(
    source: str | os.PathLike, out: str | os.PathLike, *, seed: int = 0, images: int = 24000, steps: int = 800,
    batch: int = 64, lr: float = 1e-4, gamma: float = 0.0, t_power: float = 1.0, text_encoders: bool = False,
    swap: float = 0.0, swap_below: int = 250, threads: int | None = None, quiet: bool = False,
) -> dict[str, Any]:
    """Stage 3: fine-tune the UNet (and text encoders if asked) of the demo model at ``source``; save it at ``out``."""
    from diffusers import StableDiffusionXLPipeline

    log, threads, gen, rng = _start(seed, threads, quiet)
    started = time.monotonic()
    source, target = Path(source), Path(out)
    if source.resolve() == target.resolve():
        raise SystemExit("--from and --out must differ: the source's files are copied")
    pipe = StableDiffusionXLPipeline.from_pretrained(source)
    parts = {name: part for name, part in pipe.components.items() if part is not None}
    vae = parts["vae"].eval().requires_grad_(False)
    for name in ("text_encoder", "text_encoder_2"):
        parts[name].requires_grad_(text_encoders)
    scenes = [world.sample_scene(rng) for _ in range(images)]
    latents = encode_latents(vae, _pixels(scenes)) * vae.config.scaling_factor
    log(f"{images} pictures rendered and encoded (scaling_factor {vae.config.scaling_factor:.5f}); {threads} threads")
    curve = train_unet(parts, latents, scenes, steps, batch, lr, rng, gen, log, gamma=gamma, t_power=t_power,
                       text_encoders=text_encoders, warmup=50, swap=swap, swap_below=swap_below)
    seconds = time.monotonic() - started
    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    manifest["finetune"] = {
        "source": str(source), "seed": seed, "images": images, "steps": steps, "batch": batch, "lr": lr,
        "threads": threads, "trained": ["unet", "text_encoder", "text_encoder_2"] if text_encoders else ["unet"],
        "loss_weighting": f"min-SNR-{gamma:g}" if gamma > 0 else "none (plain epsilon MSE)",
        "timestep_sampling": "uniform" if t_power == 1 else f"floor(1000 * u ** {t_power:g}), u ~ U(0, 1)",
        "caption_swap": {"probability": swap, "below_t": swap_below} if swap > 0 else None,
        "train_seconds": round(seconds, 1), "final_loss": round(curve.final, 6), "loss_curve": curve.points,
    }
    _save(parts, target, manifest)
    kept = ["vae", "tokenizer", "tokenizer_2"] + ([] if text_encoders else ["text_encoder", "text_encoder_2"])
    for name in kept:  # byte for byte: the fine-tune changes nothing in these
        shutil.rmtree(target / name)
        shutil.copytree(source / name, target / name)
    log(f"saved to {target} after {seconds / 60:.1f} min; final loss unet {curve.final:.5f}")
    return manifest


def _manifest(parts, command: dict, vae_curve: Curve, unet_curve: Curve, seconds: float) -> dict[str, Any]:
    """What the shipped model's manifest.json records: how it was trained, how far, and with what."""
    import diffusers
    import torch
    import transformers

    return {
        "name": "imagegen demo model",
        "script": "imagegen.demo.train",
        "script_version": SCRIPT_VERSION,
        "command": command,
        "final_loss": {"vae": round(vae_curve.final, 6), "unet": round(unet_curve.final, 6)},
        "loss_curve": {"vae": vae_curve.points, "unet": unet_curve.points},
        "train_seconds": round(seconds, 1),
        "parameters": {name: sum(p.numel() for p in parts[name].parameters())
                       for name in ("unet", "vae", "text_encoder", "text_encoder_2")},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__},
        "world": {"colours": list(world.COLOURS), "shapes": list(world.SHAPES), "image_size": world.IMAGE_SIZE},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imagegen.demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write the pipeline to (e.g. imagegen/demo/model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=24000, help="pictures in the training set")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--unet-steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ft = p.add_argument_group("stage 3, the fine-tune (only with --from; stages 1 and 2 are then skipped)")
    ft.add_argument("--from", dest="source", metavar="FOLDER", help="the demo model to fine-tune (a folder)")
    ft.add_argument("--ft-steps", type=int, default=800, help="fine-tune steps (default 800)")
    ft.add_argument("--ft-lr", type=float, default=1e-4, help="fine-tune peak learning rate (default 1e-4)")
    ft.add_argument("--ft-snr-gamma", type=float, default=0.0, help="min-SNR gamma; 0 (default): plain epsilon MSE")
    ft.add_argument("--ft-t-power", type=float, default=1.0, help="t = floor(1000 * u ** P): 1 uniform, 2 toward 0")
    ft.add_argument("--ft-swap", type=float, default=0.0, help="P(another scene's caption) at t < --ft-swap-below")
    ft.add_argument("--ft-swap-below", type=int, default=250, help="timesteps that --ft-swap applies to (250)")
    ft.add_argument("--ft-text-encoders", action="store_true", help="train the text encoders too (default: kept)")
    args = p.parse_args(argv)
    if args.source:
        finetune(args.source, args.out, seed=args.seed, images=args.images, steps=args.ft_steps, batch=args.batch,
                 lr=args.ft_lr, gamma=args.ft_snr_gamma, t_power=args.ft_t_power, text_encoders=args.ft_text_encoders,
                 swap=args.ft_swap, swap_below=args.ft_swap_below, threads=args.threads)
        return 0
    train(args.out, seed=args.seed, images=args.images, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
          batch=args.batch, lr=args.lr, threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
