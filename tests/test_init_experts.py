"""init-experts: streamed init equals injection from the same recipe; bundles load back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medqwen_cli import modeling
from medqwen_cli.adapters import adapter_state_dict, init_state_dict, inject_adapters
from medqwen_cli.bundle import Bundle
from medqwen_cli.errors import AdapterError, BundleError
from medqwen_cli.init_experts import init_experts
from medqwen_cli.loading import load_adapted
from medqwen_cli.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def recipe(*overrides: str):
    return load_recipe(REPO / "recipes/debug/tiny.yaml", list(overrides))


def text_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(10, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("base", modeling.TINY_PRESETS)
@pytest.mark.parametrize("method", ["sslora", "moelora", "lora", "pissa"])
def test_streamed_init_equals_injection_and_reloads_exactly(
    tmp_path: Path, base: str, method: str
) -> None:
    r = recipe(f"model.base={base}", f"adapter.method={method}")
    summary = init_experts(r, tmp_path / "b")
    bundle = Bundle.open(tmp_path / "b")
    assert summary.adapted_layers == 14 and bundle.head == "v0001"

    # the same recipe injected into a fresh base gives the same init and trainable start
    model, _, _ = modeling.load_base(base)
    inject_adapters(model, r.adapter)
    expected_init, expected_adapter = init_state_dict(model), adapter_state_dict(model)
    stored_init, stored_adapter = bundle.read_init(), bundle.read_adapter()
    assert (
        stored_init.keys() == expected_init.keys()
        and stored_adapter.keys() == expected_adapter.keys()
    )
    for key, value in expected_init.items():
        torch.testing.assert_close(stored_init[key], value, rtol=1e-5, atol=1e-6)
    for key, value in expected_adapter.items():
        torch.testing.assert_close(stored_adapter[key], value, rtol=1e-5, atol=1e-6)

    # save -> load reproduces outputs exactly
    loaded = load_adapted(bundle)
    with torch.no_grad():
        a = loaded.model(**text_batch()).logits
        b = model(**text_batch()).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_trained_tensors_round_trip_bit_exactly(tmp_path: Path) -> None:
    init_experts(recipe(), tmp_path / "b")
    bundle = Bundle.open(tmp_path / "b")
    first = load_adapted(bundle)
    with torch.no_grad():
        for p in first.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    bundle.append_version(adapter_state_dict(first.model), command="test", tasks=["x"], recipe={})
    second = load_adapted(Bundle.open(tmp_path / "b"))
    with torch.no_grad():
        assert torch.equal(first.model(**text_batch()).logits, second.model(**text_batch()).logits)
    assert load_adapted(bundle, "v1").version == "v0001"


def test_sslora_at_init_with_uniform_routing_equals_the_base(tmp_path: Path) -> None:
    init_experts(recipe("adapter.top_k=4"), tmp_path / "b")  # k = E = 4
    loaded = load_adapted(Bundle.open(tmp_path / "b"))
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if name.endswith("router.weight"):
                p.zero_()
        base, _, _ = modeling.load_base("tiny-qwen2-vl")
        torch.testing.assert_close(
            loaded.model(**text_batch()).logits, base(**text_batch()).logits, rtol=1e-4, atol=1e-5
        )


def test_init_never_loads_the_whole_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def refuse(*_a, **_k):
        raise AssertionError("init-experts must stream tensors, not load the model")

    monkeypatch.setattr(modeling, "load_base", refuse)
    monkeypatch.setattr(transformers.Qwen2VLForConditionalGeneration, "from_pretrained", refuse)
    assert init_experts(recipe(), tmp_path / "b").adapted_layers == 14


def test_sharded_checkpoint(tmp_path: Path) -> None:
    model, processor, _ = modeling.load_base("tiny-qwen2-vl")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    processor.save_pretrained(tmp_path / "sharded")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    summary = init_experts(recipe(f"model.base={tmp_path / 'sharded'}"), tmp_path / "b")
    assert summary.adapted_layers == 14 and summary.fingerprint == modeling.fingerprint(
        tmp_path / "sharded"
    )


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    init_experts(recipe("adapter.method=moelora"), tmp_path / "a")
    init_experts(recipe("adapter.method=moelora"), tmp_path / "b")
    init_experts(recipe("adapter.method=moelora", "adapter.seed=1"), tmp_path / "c")
    a, b, c = (Bundle.open(tmp_path / x).read_adapter() for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_different_base_is_refused(tmp_path: Path) -> None:
    init_experts(recipe(), tmp_path / "b")
    manifest = json.loads((tmp_path / "b/bundle.json").read_text())
    manifest["base"]["fingerprint"] = "0000000000000000"
    (tmp_path / "b/bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="fingerprint"):
        load_adapted(Bundle.open(tmp_path / "b"))


def test_refuses_an_existing_bundle_before_any_work(tmp_path: Path) -> None:
    init_experts(recipe(), tmp_path / "b")
    before = (tmp_path / "b/bundle.json").read_bytes()
    with pytest.raises(BundleError, match="never overwrites"):
        init_experts(recipe(), tmp_path / "b")
    assert (tmp_path / "b/bundle.json").read_bytes() == before


def test_rank_larger_than_every_layer_and_no_target_match(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="smaller than rank"):
        init_experts(recipe("adapter.rank=128", "adapter.experts=4"), tmp_path / "a")
    with pytest.raises(AdapterError, match="language_model.layers.0"):
        init_experts(recipe('adapter.targets=["nothing_matches$"]'), tmp_path / "b")
    assert not (tmp_path / "a/bundle.json").exists() and not (tmp_path / "b/bundle.json").exists()


def test_only_linear_layers_are_targets(tmp_path: Path) -> None:
    """A broad regex matches the embedding's 2-D weight too; only nn.Linear layers are adapted."""
    summary = init_experts(
        recipe('adapter.targets=["embed_tokens$", "layers\\\\.0\\\\.mlp\\\\.up_proj$"]'),
        tmp_path / "b",
    )
    assert summary.adapted_layers == 1
    assert list(Bundle.open(tmp_path / "b").read_init()) == [
        "language_model.layers.0.mlp.up_proj.init_A",
        "language_model.layers.0.mlp.up_proj.init_B",
        "language_model.layers.0.mlp.up_proj.scale",
    ]


def before_each_layer(monkeypatch: pytest.MonkeyPatch, hook) -> None:
    """Call `hook(layer name)` before init-experts decomposes each layer."""
    import medqwen_cli.init_experts as mod

    real = mod.init_tensors_for

    def wrapped(weight, cfg, name):
        hook(name)
        return real(weight, cfg, name)

    monkeypatch.setattr(mod, "init_tensors_for", wrapped)


def test_a_failure_midway_leaves_no_bundle_spool_or_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fail_on_third(name):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("disk went away")

    before_each_layer(monkeypatch, fail_on_third)
    with pytest.raises(RuntimeError, match="disk went away"):
        init_experts(recipe(), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # an existing directory the user chose: kept, left empty
    calls.clear()
    with pytest.raises(RuntimeError):
        init_experts(recipe(), tmp_path / "kept")
    assert list((tmp_path / "kept").iterdir()) == []


def test_factors_are_streamed_to_disk_not_gathered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While layer k is decomposed, the factors of layers < k are in the spool files, not memory."""
    sizes = []

    def watch(_name):
        spools = list((tmp_path / "b").glob(".tensors-*.spool"))
        sizes.append(sum(p.stat().st_size for p in spools))

    before_each_layer(monkeypatch, watch)
    init_experts(recipe(), tmp_path / "b")
    assert sizes[0] == 0 and all(b > a for a, b in zip(sizes, sizes[1:], strict=False))
    assert not list((tmp_path / "b").glob(".tensors-*"))  # spools removed after commit


def test_an_old_bundle_keeps_its_stored_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lora bundle made when lora used alpha / r loads with that scale, not today's rule."""
    import medqwen_cli.init_experts as mod
    from medqwen_cli.adapters import adapter_layers

    r = recipe("adapter.method=lora")
    old = r.adapter.alpha / r.adapter.rank  # the former lora rule
    real = mod.init_tensors_for

    def old_rule(weight, cfg, name):
        return dict(real(weight, cfg, name), scale=torch.tensor(old))

    monkeypatch.setattr(mod, "init_tensors_for", old_rule)
    init_experts(r, tmp_path / "b")
    monkeypatch.undo()
    loaded = load_adapted(Bundle.open(tmp_path / "b"))
    scales = [float(layer.scale) for _, layer in adapter_layers(loaded.model)]
    assert len(scales) == 14 and all(s == old for s in scales)
    fresh, _, _ = modeling.load_base(r.model.base)
    inject_adapters(fresh, r.adapter)  # today's rule gives another scale
    assert all(float(layer.scale) != pytest.approx(old) for _, layer in adapter_layers(fresh))
