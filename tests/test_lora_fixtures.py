"""The tiny LoRA and textual-inversion fixtures (imagegen.testing.loras) load through diffusers as downloaded files
do: a LoRA changes the image, weight 0 and unloading give the base pixels back bit for bit, and the kohya layout
converts to exactly the diffusers one."""

from __future__ import annotations

import pytest

from imagegen.testing.loras import KOHYA_FAMILIES as KOHYA  # diffusers 0.42 converts no non-diffusers SD3 layout

pytestmark = [
    pytest.mark.slow,
    # peft, when a second adapter goes into a text encoder that already has one (harmless)
    pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning"),
]

FAMILIES = ("sd15", "sdxl", "sd3", "flux")
TOKEN = "<tiny-embedding>"
PROMPT = f"a stone bridge {TOKEN}"  # without the embedding loaded the token is plain characters
CASES = [pytest.param(f, layout, id=f"{f}-{layout}",
                      marks=[] if layout == "diffusers" or f in KOHYA else
                      pytest.mark.skip(reason=f"diffusers converts no kohya / non-diffusers LoRA layout for {f}"))
         for f in FAMILIES for layout in ("diffusers", "kohya")]


class Tiny:
    """One tiny pipeline (seed 1: the LoRAs are built on seed 0's architecture), its base image and LoRA files."""

    def __init__(self, family, root):
        import diffusers

        from imagegen.testing import build_tiny

        cls = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
               "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}[family]
        self.family, self.root = family, root
        self.pipe = getattr(diffusers, cls).from_pretrained(build_tiny(family, root / family, seed=1))
        self.pipe.set_progress_bar_config(disable=True)
        self.base = self.image()

    def image(self):
        import torch

        extra = {"max_sequence_length": 32} if self.family in ("sd3", "flux") else {}
        return self.pipe(PROMPT, height=64, width=64, num_inference_steps=2, output_type="np",
                         generator=torch.Generator().manual_seed(0), **extra).images[0]

    def lora(self, layout="diffusers", seed=0, text_encoder=True):
        from imagegen.testing import build_tiny_lora

        path = self.root / f"{self.family}-{layout}-{seed}-{text_encoder}.safetensors"
        return path if path.exists() else build_tiny_lora(path, self.family, layout=layout, seed=seed,
                                                          text_encoder=text_encoder)

    def lora_image(self, path):
        """The image with the LoRA at ``path`` loaded; the pipeline is left without it."""
        self.pipe.load_lora_weights(str(path), adapter_name="tiny_lora")
        try:
            return self.image()
        finally:
            self.pipe.unload_lora_weights()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny pipelines by family, built on first use. One torch thread: these nets are far too small to gain from
    two, and two threads on a busy 2-core machine made each image take seconds instead of 0.05 s."""
    import torch

    root, built, threads = tmp_path_factory.mktemp("lora-fixtures"), {}, torch.get_num_threads()

    def get(family: str) -> Tiny:
        if family not in built:
            built[family] = Tiny(family, root)
        return built[family]

    torch.set_num_threads(1)
    try:
        yield get
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("family, layout", CASES)
def test_lora_changes_the_image_and_unloads_exactly(tiny, family, layout):
    import numpy as np

    t = tiny(family)
    name = f"tiny_{layout}"
    t.pipe.load_lora_weights(str(t.lora(layout)), adapter_name=name)
    try:
        assert name in t.pipe.get_active_adapters()
        changed = t.image()
        assert np.abs(changed - t.base).mean() > 0.01  # plainly visible on a tiny image
        t.pipe.set_adapters([name], [0.0])
        assert np.array_equal(t.image(), t.base)
        t.pipe.set_adapters([name], [1.0])
        assert np.array_equal(t.image(), changed)
    finally:
        t.pipe.unload_lora_weights()
    assert np.array_equal(t.image(), t.base)


@pytest.mark.parametrize("family", KOHYA)
def test_kohya_layout_converts_to_the_diffusers_one(tiny, family):
    import numpy as np

    t = tiny(family)
    kohya, ours = t.lora_image(t.lora("kohya")), t.lora_image(t.lora("diffusers"))
    assert np.abs(kohya - ours).max() == 0.0  # measured: the converted adapter weights are bit-identical


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoder_loras_load_through_peft(tiny, family):
    """Same seed: the denoiser's LoRA weights are the same with and without the text encoders'."""
    import numpy as np

    t = tiny(family)
    assert not np.array_equal(t.lora_image(t.lora(text_encoder=True)), t.lora_image(t.lora(text_encoder=False)))


@pytest.mark.parametrize("family", FAMILIES)
def test_hotswap_replaces_a_denoiser_only_lora(tiny, family):
    import numpy as np

    t = tiny(family)
    first, second = t.lora(seed=10, text_encoder=False), t.lora(seed=11, text_encoder=False)
    expected = t.lora_image(second)
    t.pipe.load_lora_weights(str(first), adapter_name="tiny_swap")
    try:
        t.pipe.load_lora_weights(str(second), adapter_name="tiny_swap", hotswap=True)
        assert np.array_equal(t.image(), expected)
    finally:
        t.pipe.unload_lora_weights()


def test_hotswap_refuses_text_encoder_loras(tiny):
    t = tiny("sd15")
    t.pipe.load_lora_weights(str(t.lora(seed=10)), adapter_name="tiny_swap")
    try:
        with pytest.raises(ValueError, match="not supported for text encoders"):
            t.pipe.load_lora_weights(str(t.lora(seed=11)), adapter_name="tiny_swap", hotswap=True)
    finally:
        t.pipe.unload_lora_weights()


def test_lora_builds_are_deterministic_and_keep_the_global_rng(tmp_path):
    import torch
    from safetensors.torch import load_file

    from imagegen.testing import build_tiny_lora

    state = torch.random.get_rng_state()
    a, b, c = (load_file(build_tiny_lora(tmp_path / f"{n}.safetensors", "sdxl", layout="kohya", seed=s))
               for n, s in (("a", 5), ("b", 5), ("c", 6)))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("lora_up.weight"))


def test_bad_lora_requests_are_refused(tmp_path):
    from imagegen.testing import build_tiny_embedding, build_tiny_lora

    with pytest.raises(ValueError, match="no kohya"):
        build_tiny_lora(tmp_path / "x.safetensors", "sd3", layout="kohya")
    with pytest.raises(ValueError, match="unknown LoRA layout"):
        build_tiny_lora(tmp_path / "x.safetensors", "sd15", layout="lycoris")
    with pytest.raises(ValueError, match="sd15 and sdxl"):
        build_tiny_embedding(tmp_path / "x.safetensors", "flux")


@pytest.mark.parametrize("family, layout", [("sd15", "a1111"), ("sd15", "diffusers"), ("sdxl", "a1111")])
def test_embedding_changes_the_image_and_unloads(tiny, family, layout):
    import numpy as np
    from safetensors.torch import load_file

    from imagegen.testing import build_tiny_embedding

    t, pipe = tiny(family), tiny(family).pipe
    path = build_tiny_embedding(t.root / f"{family}-{layout}.safetensors", family, layout=layout, token=TOKEN)
    encoders = [(pipe.tokenizer, pipe.text_encoder)] + ([(pipe.tokenizer_2, pipe.text_encoder_2)]
                                                        if family == "sdxl" else [])
    sizes = [(len(tok), enc.get_input_embeddings().weight.shape) for tok, enc in encoders]
    if family == "sdxl":  # civitai's SDXL layout: one tensor per text encoder, loaded separately
        tensors = load_file(path)
        for key, (tok, enc) in zip(("clip_l", "clip_g"), encoders):
            pipe.load_textual_inversion(tensors[key], token=TOKEN, tokenizer=tok, text_encoder=enc)
    else:
        pipe.load_textual_inversion(str(path), **({"token": TOKEN} if layout == "a1111" else {}))
    tokens = [TOKEN, f"{TOKEN}_1"]  # 2 vectors: the token and TOKEN_1
    try:
        assert all(len(tok) == n + 2 for (tok, _), (n, _) in zip(encoders, sizes))
        assert np.abs(t.image() - t.base).mean() > 0.005
    finally:
        for tok, enc in encoders:
            pipe.unload_textual_inversion(tokens, tokenizer=tok, text_encoder=enc)
    assert [(len(tok), enc.get_input_embeddings().weight.shape) for tok, enc in encoders] == sizes
    assert np.array_equal(t.image(), t.base)
