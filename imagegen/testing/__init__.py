"""Tiny random-weight diffusers pipelines, ControlNets and IP-Adapters for tests and benchmarks, built offline and
saved with save_pretrained, so they load through the same from_pretrained path that real models take.

A family's tiny builder lives in pipelines.py, registered with @tiny("<family>"); `build_tiny(family, path)` builds
any of them."""

from .checkpoints import meta_original_shapes, original_state_dict, write_checkpoint, write_header_only
from .conditioning import IP_ADAPTER_WEIGHT, build_tiny_controlnet, build_tiny_ip_adapter
from .gguf import write_gguf
from .loras import build_tiny_embedding, build_tiny_lora
from .parts import _save, clip_byte_vocab, clip_text_config, with_clip_specials
from .pipelines import TINY, _tiny_sdxl, build_tiny, build_tiny_flux, build_tiny_sd3, build_tiny_sdxl

__all__ = ["IP_ADAPTER_WEIGHT", "TINY", "build_tiny", "build_tiny_controlnet", "build_tiny_embedding",
           "build_tiny_flux", "build_tiny_ip_adapter", "build_tiny_lora", "build_tiny_sd3", "build_tiny_sdxl",
           "clip_byte_vocab", "clip_text_config", "meta_original_shapes", "original_state_dict", "with_clip_specials",
           "write_checkpoint", "write_gguf", "write_header_only"]
