"""Top-k router and load-balance loss."""

from __future__ import annotations

import pytest
import torch

from medqwen_cli.adapters.router import TopKRouter, expert_counts, load_balance_loss


def tokens(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_zero_router_is_uniform_and_k_equals_e_gives_one_over_e() -> None:
    router = TopKRouter(16, experts=4, top_k=4, init_std=0.0)
    assert torch.count_nonzero(router.weight) == 0
    out = router(tokens(2, 5, 16))
    torch.testing.assert_close(out.probs, torch.full((2, 5, 4), 0.25))
    torch.testing.assert_close(out.gates, torch.full((2, 5, 4), 0.25))
    assert out.indices.shape == (2, 5, 4)


def test_gates_are_renormalised_top_k_probabilities() -> None:
    router = TopKRouter(16, experts=6, top_k=2, init_std=1.0, seed=3)
    out = router(tokens(3, 4, 16))
    assert out.gates.shape == (3, 4, 6) and out.indices.shape == (3, 4, 2)
    torch.testing.assert_close(out.gates.sum(-1), torch.ones(3, 4))
    assert torch.all((out.gates > 0).sum(-1) == 2)
    chosen = out.probs.gather(-1, out.indices)
    torch.testing.assert_close(out.gates.gather(-1, out.indices), chosen / chosen.sum(-1, True))
    assert torch.all(out.indices[..., 0] == out.probs.argmax(-1))


def test_router_is_seeded_and_float32_for_bf16_input() -> None:
    a, b = TopKRouter(8, 4, 2, seed=1), TopKRouter(8, 4, 2, seed=1)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, TopKRouter(8, 4, 2, seed=2).weight)
    assert float(a.weight.detach().std()) == pytest.approx(0.02, rel=0.5)
    out = a(tokens(3, 8).bfloat16())
    assert out.probs.dtype == torch.float32 and out.gates.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert a(tokens(3, 8)).probs.dtype == torch.float32
    with pytest.raises(ValueError, match="top_k"):
        TopKRouter(8, 4, 5)


def test_balance_loss_is_k_when_uniform_and_k_e_when_collapsed() -> None:
    e, k = 4, 2
    uniform = torch.full((10, e), 1 / e)
    # Slots spread evenly over experts: f_i = k/E (GOAT: slots per token, sum_i f_i = k).
    idx = torch.arange(20).remainder(e).view(10, k)
    assert float(load_balance_loss(uniform, idx)) == pytest.approx(k)
    collapsed = torch.zeros(10, e)
    collapsed[:, 0] = 1.0
    idx0 = torch.zeros(10, k, dtype=torch.long)
    assert float(load_balance_loss(collapsed, idx0)) == pytest.approx(k * e)
    top1 = torch.arange(10).remainder(e).view(10, 1)  # k = 1: the Switch value, 1 when uniform
    assert float(load_balance_loss(uniform, top1)) == pytest.approx(1.0)


def test_balance_loss_ignores_padding_and_mismatched_masks() -> None:
    router = TopKRouter(16, 4, 2, init_std=1.0, seed=0)
    x = tokens(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :3] = 0
    out = router(x)
    ref = load_balance_loss(out.probs[mask.bool()], out.indices[mask.bool()])
    got = load_balance_loss(out.probs, out.indices, mask)
    torch.testing.assert_close(got, ref)
    x2 = x.clone()
    x2[1, :3] = float("nan")  # whatever padded positions hold (even NaN) does not count
    out2 = router(x2)
    torch.testing.assert_close(load_balance_loss(out2.probs, out2.indices, mask), ref)
    # A mask of another shape (e.g. vision patches) is ignored: every token counts.
    other = torch.ones(3, 3)
    torch.testing.assert_close(
        load_balance_loss(out.probs, out.indices, other), load_balance_loss(out.probs, out.indices)
    )
    assert load_balance_loss(out.probs, out.indices, torch.zeros(2, 6)).item() == 0.0


def test_balance_loss_trains_the_router() -> None:
    router = TopKRouter(16, 4, 2, init_std=1.0, seed=0)
    out = router(tokens(20, 16))
    load_balance_loss(out.probs, out.indices).backward()
    assert router.weight.grad is not None and torch.count_nonzero(router.weight.grad) > 0


def test_expert_counts_respect_mask() -> None:
    idx = torch.tensor([[[0, 1], [1, 2]], [[3, 0], [2, 2]]])  # (2, 2, k=2)
    assert expert_counts(idx, 4).tolist() == [2, 2, 3, 1]
    mask = torch.tensor([[1, 0], [1, 1]])
    assert expert_counts(idx, 4, mask).tolist() == [2, 1, 2, 1]


def test_padding_leaves_the_uniform_value_at_k() -> None:
    """f_i = slots / non-padding tokens: padding neither dilutes f nor adds slots."""
    e, k = 4, 2
    probs = torch.full((2, 6, e), 1 / e)
    idx = torch.arange(24).remainder(e).view(2, 6, k)  # slots spread evenly over experts
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0  # two padded tokens, their slots all on expert 0
    idx[1, :2] = 0
    probs[1, :2] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert float(load_balance_loss(probs, idx, mask)) == pytest.approx(k)
    assert float(load_balance_loss(probs, idx)) > k  # counted, the same tokens unbalance it
