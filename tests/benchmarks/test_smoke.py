"""Each benchmark script runs in --quick mode and prints parseable tables of ratios.

Smoke only: no timing is asserted (timings are measured by the scripts, never by tests).
"""

from __future__ import annotations

from bench_tables import REPO, is_number, run_script, tables


def test_layer_quick() -> None:
    out = run_script("layer.py", "--quick")
    assert out.startswith("machine: CPU")
    (rows,) = tables(out)
    assert {r["pass"] for r in rows} == {"fwd", "fwd+bwd"}
    for row in rows:
        for key in ("frozen/lora", "peft/lora", "routed/lora", "loop/routed"):
            assert is_number(row[key]), row
    assert "target routed/lora <= 1.25" in out and "target loop/routed >= 3" in out


def test_train_step_quick() -> None:
    out = run_script("train_step.py", "--quick")
    assert out.startswith("machine: CPU")
    (rows,) = tables(out)
    assert [r["variant"] for r in rows] == ["peft", "medqwen-lora", "sslora"]
    assert len({r["adapted layers"] for r in rows}) == 1  # the same targets in every variant
    assert all(is_number(r["step/peft"]) for r in rows)
    assert "target sslora/peft <= 1.3" in out


def test_init_experts_quick() -> None:
    out = run_script("init_experts.py", "--quick")
    assert out.startswith("machine: CPU")
    wall, memory = tables(out)
    kinds = [r["layer kind"] for r in wall]
    assert kinds[:7] == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert all(is_number(r["stream/bare route"]) for r in wall)
    assert [r["pass"] for r in memory] == ["stream", "bare", "whole"]
    assert all(is_number(r["peak anonymous above it MB"]) for r in memory)


def test_branches_quick() -> None:
    out = run_script("branches.py", "--quick")
    assert out.startswith("machine: CPU")
    (rows,) = tables(out)
    want = ["0 branches"] + [f"{n} branches{s}" for n in range(1, 6) for s in ("", ", unfolded")]
    assert [r["variant"] for r in rows] == want
    assert rows[0]["x no branch"] == "1.00" and all(is_number(r["s/step"]) for r in rows)
    assert len({r["trained params"] for r in rows}) == 1  # only the newest branch trains


def test_bases_precision_quick() -> None:
    rows, held = tables(run_script("bases_precision.py", "--quick"))
    assert [(r["method"], r["basis k/n"]) for r in rows] == [
        (m, s) for m in ("lora", "sslora") for s in ("10%", "25%")
    ]
    for r in rows:  # float32 keeps the guarantee's tolerance; 16 bits read back lose it by
        # orders; settled at record time (what protect stores) they keep it
        read16, readbf = float(r["float16, read back"]), float(r["bfloat16, read back"])
        assert float(r["float32"]) < 1e-5 < read16 < readbf
        assert float(r["float16, settled"]) < 1e-5 and float(r["8 bits, settled"]) < 1e-5
    assert [row["energy"] for row in held] == ["0.99", "0.999"]
    for row in held:  # what protect stores holds the energy asked, as the exact basis does
        energy = float(row["energy"])
        assert float(row["exact"]) >= energy and float(row["8 bits, as stored"]) >= energy
        exact, stored = (int(k) for k in row["directions (exact / stored)"].split(" / "))
        assert exact <= stored <= exact + 2


def test_bases_storage_quick() -> None:
    out = run_script("bases_storage.py", "--quick")
    (rows,) = tables(out)
    assert [r["task"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[0]["branch (sslora r32, E8)"] == "0 MB"  # the first task trains no branch
    assert all(r["branch (sslora r32, E8)"] == rows[1]["branch (sslora r32, E8)"] for r in rows[1:])


def test_bases_storage_without_a_kind_of_input() -> None:
    """--exclude drops a kind of input's bases and branch tensors from the bytes per task."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bases_storage import INPUT, LAYERS, LINEARS, branch_bytes

    whole = branch_bytes(32, 8, True)
    without = branch_bytes(32, 8, True, ("down_proj",))
    (m,) = LINEARS["down_proj"]
    n = INPUT["down_proj"]
    # down_proj's A and B, its frozen residual pair, and its router, float32, every layer
    assert whole - without == (2 * 32 * (n + m) + 8 * n) * LAYERS * 4
