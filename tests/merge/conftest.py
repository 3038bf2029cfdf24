"""Two tiny bundles for the merge tests, each with a version v0002 standing in for a trained one
(perturbed experts): `trained` (E=4, k=2, random routers: token-dependent routing) and `uniform`
(E=4, k=4, zero routers: every gate is exactly 1/4, so the mean-routed fold is the routed model);
`scored` is `trained` evaluated on 16 records;
and the helpers that feed both a bundle and an export the same batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from medqwen_cli.bundle import Bundle

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes/debug/tiny.yaml"
PIXELS = 12544  # train.max_image_pixels of the tiny recipe


def _bundle(root: Path, overrides: list[str], *, uniform: bool) -> Path:
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe

    init_experts(load_recipe(TINY, ["eval.max_samples=2", *overrides]), root)
    bundle = Bundle.open(root)
    gen = torch.Generator().manual_seed(1)
    adapter = {}
    for key, value in bundle.read_adapter().items():
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("router.weight"):
            adapter[key] = torch.zeros_like(value) if uniform else noise * 0.5
        else:
            adapter[key] = value + 0.3 * value.std() * noise
    bundle.append_version(
        adapter, command="test: perturbed", tasks=["xray"], recipe=bundle.manifest.recipe
    )
    return root


@pytest.fixture(scope="package")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle(tmp_path_factory.mktemp("merge") / "trained", [], uniform=False)


@pytest.fixture(scope="package")
def uniform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle(tmp_path_factory.mktemp("merge") / "uniform", ["adapter.top_k=4"], uniform=True)


@pytest.fixture(scope="package")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like `trained`, with the tiny recipe's own eval.max_samples (16 of xray's 32 eval records):
    enough that the first 16 in file order (no POPE "yes" probe) are not the 16 `evaluate`
    takes in turn from each record type and POPE answer."""
    root = tmp_path_factory.mktemp("merge") / "scored"
    return _bundle(root, ["eval.max_samples=16"], uniform=False)


@pytest.fixture(scope="package")
def tiny_recipe() -> Path:
    return TINY


def _records(ids: list[str] | None = None, n: int = 3) -> list:
    from medqwen_cli.data.readers import load_records
    from medqwen_cli.modeling import data_cache_dir
    from medqwen_cli.recipe import DatasetSpec

    records = load_records(
        DatasetSpec(path="builtin:xray"), "train", cache_dir=data_cache_dir(),
        max_image_pixels=PIXELS,
    )  # fmt: skip
    if ids is None:
        return records[:n]
    by_id = {r.id: r for r in records}
    return [by_id[i] for i in ids]


def _batch(processor, records) -> dict:
    from medqwen_cli.data.collate import Collator

    batch = Collator(processor, max_image_pixels=PIXELS, max_length=512)(records)
    batch.pop("labels")
    return batch


def _reference(bundle: Path, version: str = "v0002"):
    from medqwen_cli.loading import load_adapted

    return load_adapted(
        Bundle.open(bundle), version, dtype="float32", device="cpu", max_pixels=PIXELS
    )


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    return model(**batch).logits.float()


@pytest.fixture
def records() -> Callable[..., list]:
    """records(ids=None, n=3): builtin:xray training records, the first n or those ids."""
    return _records


@pytest.fixture
def batch_of() -> Callable[..., dict]:
    """batch_of(processor, records): a collated batch without labels."""
    return _batch


@pytest.fixture
def reference() -> Callable[..., object]:
    """reference(bundle, version="v0002"): the bundle's adapted model, float32 on CPU."""
    return _reference


@pytest.fixture
def logits() -> Callable[..., torch.Tensor]:
    """logits(model, batch): float logits without gradients."""
    return _logits


@pytest.fixture
def routed_exact() -> Callable[..., tuple]:
    """routed_exact(bundle, version, out, n=3): asserts the routed export at `out` gives the
    version's logits bit for bit through load_merged and through transformers' remote code;
    returns (merged, remote, batch, expected logits)."""
    return _routed_exact


def _routed_exact(bundle: Path, version: str, out: Path, n: int = 3) -> tuple:
    from transformers import AutoModelForImageTextToText

    from medqwen_cli.merge import load_merged

    ref = _reference(bundle, version)
    batch = _batch(ref.processor, _records(n=n))
    expected = _logits(ref.model, batch)
    merged = load_merged(out, dtype="float32", device="cpu")
    assert torch.equal(_logits(merged, batch), expected)
    remote = AutoModelForImageTextToText.from_pretrained(
        out, trust_remote_code=True, dtype=torch.float32
    ).eval()
    assert torch.equal(_logits(remote, batch), expected)
    return merged, remote, batch, expected
