"""GPU checks: the routed layer, the exact spectral routes and the benchmark scripts on CUDA.

Marked `gpu` and skipped (with the reason shown by `-ra`) where CUDA is absent. Run on a GPU
machine with `pytest -m gpu tests/gpu -ra`. Correctness only: the timings of a GPU run come
from the benchmark scripts (docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from medqwen_cli.adapters.layer import RoutedLoRALinear
from medqwen_cli.adapters.reference import looped_forward
from medqwen_cli.adapters.spectral import (
    gram_triplets,
    init_layer,
    segment_indices,
    spectral_triplets,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA is not available: GPU tests skipped"
    ),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
CUDA = torch.device("cuda")


def routed_layer(dtype: torch.dtype, seed: int = 0) -> RoutedLoRALinear:
    torch.manual_seed(seed)
    base = nn.Linear(64, 96, bias=True).requires_grad_(False)
    init = init_layer(base.weight, method="sslora", experts=4, rank=8, rho=2.0, seed=seed)
    layer = RoutedLoRALinear(base, init, experts=4, top_k=2, router_init_std=0.5)
    with torch.no_grad():
        layer.lora_B.add_(0.1 * torch.randn_like(layer.lora_B))
    layer.to(CUDA)
    layer.base_layer.to(dtype)
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_routed_layer_on_cuda_matches_the_loop(dtype: torch.dtype) -> None:
    layer = routed_layer(dtype)
    x = torch.randn(2, 9, 64, device=CUDA, dtype=dtype)
    y, y_loop = layer(x), looped_forward(layer, x)
    assert y.dtype == dtype and layer.lora_A.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y, y_loop, atol=tol, rtol=tol)
    y.float().square().sum().backward()
    assert layer.lora_A.grad is not None and layer.router.weight.grad is not None
    assert layer.lora_A.grad.dtype == torch.float32


def test_cuda_matches_cpu_in_float32() -> None:
    layer = routed_layer(torch.float32)
    x = torch.randn(3, 5, 64)
    y_gpu = layer(x.to(CUDA)).cpu()
    layer.to("cpu")
    torch.testing.assert_close(y_gpu, layer(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(512, 192), (192, 512)])
@pytest.mark.parametrize("route", ["auto", "svd", "gram"])
def test_spectral_routes_on_cuda_match_float64_svd(shape: tuple[int, int], route: str) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    positions = segment_indices(min(shape), 8, 4, "spread").reshape(-1)
    u, s, vh = spectral_triplets(w.to(CUDA), positions, route=route)  # type: ignore[arg-type]
    assert u.device.type == "cuda"
    ref_u, ref_s, ref_vh = torch.linalg.svd(w.double(), full_matrices=False)
    ref = ref_u[:, positions] * ref_s[positions] @ ref_vh[positions]
    got = u.double().cpu() * s.double().cpu() @ vh.double().cpu()
    assert float((got - ref).norm() / ref.norm()) < 1e-5


def test_gram_route_on_cuda_uses_torch_eigh() -> None:
    w = torch.randn(300, 120, device=CUDA)
    positions = segment_indices(120, 8, 4, "spread").reshape(-1)
    found = gram_triplets(w, positions)
    assert found is not None and found[0].device.type == "cuda"
    assert found[1].dtype == torch.float64


@pytest.mark.parametrize(
    "script, args",
    [
        ("layer.py", ["--quick"]),
        ("train_step.py", ["--quick"]),
        ("init_experts.py", ["--quick"]),
    ],
)
def test_benchmarks_run_on_cuda(script: str, args: list[str]) -> None:
    from bench_tables import is_number, run_script, tables

    extra = ["--device", "cuda"] + (["--dtype", "bfloat16"] if script != "init_experts.py" else [])
    out = run_script(script, *args, *extra)
    assert out.startswith("machine: GPU")
    found = tables(out)
    assert found and all(found)
    assert any(is_number(cell) for row in found[0] for cell in row.values())
