"""Bundle store: round trips, immutability, atomicity, locking and every corruption we can make."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medqwen_cli import bundle as bundle_mod
from medqwen_cli.bundle import Bundle, bundle_lock, find_bundle, store
from medqwen_cli.errors import BundleError, BundleIntegrityError, BundleLockedError
from medqwen_cli.settings import Settings


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "language_model.layers.0.self_attn.q_proj.lora_A": torch.randn(8, 64, generator=g),
        "language_model.layers.0.self_attn.q_proj.lora_B": torch.randn(64, 8, generator=g),
    }


def make(tmp_path: Path, versions: int = 1) -> Bundle:
    b = Bundle.create(
        tmp_path / "b",
        base={"model_id": "tiny-qwen2-vl", "fingerprint": "abc", "source": "preset"},
        recipe={
            "model": {"base": "tiny-qwen2-vl"},
            "adapter": {"method": "sslora", "experts": 4, "top_k": 2, "rank": 8},
        },
        init_tensors={"x.init_A": torch.ones(2, 3)},
    )
    for i in range(versions):
        b.append_version(
            tensors(i),
            command=f"test {i}",
            tasks=[f"t{i}"],
            recipe={},
            json_files={"metrics.json": {"i": i}},
        )
    return b


def test_round_trip_and_lineage(tmp_path: Path) -> None:
    b = make(tmp_path, 3)
    again = Bundle.open(b.root)
    assert again.head == "v0003" and [e.id for e in again.lineage()] == ["v0001", "v0002", "v0003"]
    assert again.manifest.tasks_seen == ["t0", "t1", "t2"]
    for i, vid in enumerate(["v0001", "v0002", "v0003"]):
        loaded = again.read_adapter(vid)
        assert all(torch.equal(loaded[k], v) for k, v in tensors(i).items())
        assert again.read_json("metrics.json", vid) == {"i": i}
    assert again.read_version_info("v3").lineage_tasks == ["t0", "t1", "t2"]
    assert torch.equal(again.read_init()["x.init_A"], torch.ones(2, 3))
    assert again.verify() == []


def test_branching_from_an_older_parent_keeps_every_version(tmp_path: Path) -> None:
    b = make(tmp_path, 2)
    entry = b.append_version(tensors(9), command="branch", tasks=["x"], recipe={}, parent="v0001")
    assert entry.id == "v0003" and entry.parent == "v0001"
    assert [e.id for e in b.lineage()] == ["v0001", "v0003"]
    assert len(b.manifest.versions) == 3 and (b.root / "versions" / "v0002").is_dir()


def test_create_refuses_an_existing_bundle(tmp_path: Path) -> None:
    b = make(tmp_path)
    with pytest.raises(BundleError, match="never overwrites"):
        Bundle.create(b.root, base={}, recipe={})
    assert Bundle.open(b.root).head == "v0001"


def test_evals_append_and_read(tmp_path: Path) -> None:
    b = make(tmp_path)
    b.append_evals([{"version": "v0001", "task": "t0", "metric": "acc", "value": 0.5}])
    b.append_evals([{"version": "v0001", "task": "t1", "metric": "acc", "value": 0.25}])
    rows = b.read_evals()
    assert [(r["task"], r["value"]) for r in rows] == [("t0", 0.5), ("t1", 0.25)]
    with open(b.root / "evals.jsonl", "a") as fh:
        fh.write('{"version": "v0001", "ta')
    with pytest.raises(BundleError, match=r"evals.jsonl:3"):
        b.read_evals()


def test_find_bundle_like_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = make(tmp_path)
    deep = b.root / "notes" / "deeper"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_bundle() == b.root
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleError, match="no bundle in"):
        find_bundle()
    monkeypatch.setenv("MEDQWEN_BUNDLE", str(b.root))
    assert find_bundle() == b.root
    with pytest.raises(BundleError, match="not a medqwen bundle"):
        find_bundle(tmp_path)


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    b = make(tmp_path)
    adapter = b.root / "versions/v0001/adapter.safetensors"
    data = bytearray(adapter.read_bytes())
    data[-1] ^= 0xFF
    adapter.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        b.read_adapter()
    assert any("checksum mismatch" in p for p in b.verify())


def test_a_damaged_ancestor_blocks_every_use_of_its_descendants(tmp_path: Path) -> None:
    b = make(tmp_path, 3)
    (b.root / "versions/v0001/metrics.json").unlink()
    (b.root / "versions/v0002/version.json").write_text("{}")
    assert b.read_version_info("v0003").id == "v0003"  # its own files are intact
    for read in (b.read_adapter, b.check_version):
        with pytest.raises(BundleIntegrityError) as err:
            read("v0003")
        assert err.value.damaged == {
            "versions/v0001/metrics.json": "missing",
            "versions/v0002/version.json": "checksum mismatch (the file changed after it was "
            "written)",
        }
        assert err.value.message.startswith("cannot use v0003 (lineage v0001 -> v0002 -> v0003)")
        assert str(b.root) in err.value.message and "backup" in (err.value.hint or "")
    assert b.verify()[:2] == [
        "versions/v0001/metrics.json: missing",
        "versions/v0002/version.json: checksum mismatch (the file changed after it was written)",
    ]


def test_a_damaged_init_blocks_every_version(tmp_path: Path) -> None:
    b = make(tmp_path, 1)
    (b.root / "init.safetensors").unlink()
    with pytest.raises(BundleIntegrityError, match="init.safetensors: missing") as err:
        b.read_adapter()
    assert "cannot be rebuilt exactly" in (err.value.hint or "")
    with pytest.raises(BundleIntegrityError, match="init.safetensors: missing"):
        b.read_init()


def test_truncated_safetensors_is_a_clear_error(tmp_path: Path) -> None:
    b = make(tmp_path)
    path = b.root / "versions/v0001/adapter.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(BundleError):
        b.read_adapter()
    with pytest.raises(BundleError, match="truncated or corrupt"):
        bundle_mod.load_tensors(path)


def test_newer_format_is_refused(tmp_path: Path) -> None:
    b = make(tmp_path)
    raw = json.loads((b.root / "bundle.json").read_text())
    raw["format_version"] = 99
    (b.root / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="newer than this medqwen"):
        Bundle.open(b.root)


def test_damaged_manifest(tmp_path: Path) -> None:
    b = make(tmp_path)
    (b.root / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="cannot read"):
        Bundle.open(b.root)


def test_crash_before_rename_leaves_head_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = make(tmp_path)

    def boom(*_a, **_k):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(store.os, "rename", boom)
    with pytest.raises(OSError, match="injected"):
        b.append_version(tensors(5), command="crash", tasks=["x"], recipe={})
    monkeypatch.undo()
    again = Bundle.open(b.root)
    assert again.head == "v0001" and again.verify() == []
    assert sorted(p.name for p in (b.root / "versions").iterdir()) == ["v0001"]  # no temp dir left
    assert not (b.root / ".lock").exists()


def test_crash_between_rename_and_publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = make(tmp_path)
    real = bundle_mod.atomic_write_json

    def fail_on_manifest(path: Path, data: object) -> None:
        if path.name == "bundle.json":
            raise KeyboardInterrupt("killed (injected)")
        real(path, data)

    monkeypatch.setattr(store, "atomic_write_json", fail_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        b.append_version(tensors(5), command="crash", tasks=["x"], recipe={})
    monkeypatch.undo()
    again = Bundle.open(b.root)
    assert again.head == "v0001"
    assert torch.equal(
        again.read_adapter()["language_model.layers.0.self_attn.q_proj.lora_A"],
        tensors(0)["language_model.layers.0.self_attn.q_proj.lora_A"],
    )
    assert any("unpublished" in p for p in again.verify())
    entry = again.append_version(tensors(6), command="after", tasks=["y"], recipe={})
    assert entry.id == "v0003"  # never reuses the orphan's id


def test_second_writer_is_refused(tmp_path: Path) -> None:
    b = make(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from pathlib import Path; from medqwen_cli.bundle import bundle_lock\n"
            "with bundle_lock(Path(sys.argv[1]), 'holder'):\n    print('held', flush=True); time.sleep(30)",
            str(b.root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BundleLockedError, match=f"locked by process {holder.pid}"):
            b.append_version(tensors(1), command="second", tasks=[], recipe={})
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock is stale and is taken over
    assert (b.root / ".lock").exists()
    assert b.append_version(tensors(1), command="after", tasks=[], recipe={}).id == "v0002"


def test_lock_is_released_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), bundle_lock(tmp_path, "x"):
        raise RuntimeError("boom")
    assert not (tmp_path / ".lock").exists()


def test_versions_are_never_overwritten(tmp_path: Path) -> None:
    b = make(tmp_path, 2)
    before = {p: p.read_bytes() for p in (b.root / "versions").rglob("*") if p.is_file()}
    b.append_version(tensors(7), command="third", tasks=[], recipe={})
    for path, data in before.items():
        assert path.read_bytes() == data
    assert os.listdir(b.root / "versions") and len(list((b.root / "versions").iterdir())) == 3


def test_bad_version_names(tmp_path: Path) -> None:
    b = make(tmp_path, 2)
    assert b.resolve_version("2") == b.resolve_version("v2") == "v0002"
    with pytest.raises(BundleError, match="no version v0009"):
        b.resolve_version("v9")
    with pytest.raises(BundleError, match="bad version"):
        b.resolve_version("latest-ish")


def test_tensor_writer_round_trips_every_dtype_and_shape(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    items = {
        "f32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(4, 7, generator=g).to(torch.bfloat16),
        "f16": torch.randn(2, generator=g).half(),
        "f64": torch.randn(2, 2, 2, generator=g).double(),
        "i64": torch.arange(6).reshape(2, 3),
        "u8": torch.arange(5, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(6, 4, generator=g).t(),  # non-contiguous view
    }
    bundle_mod.save_tensors(tmp_path / "t.safetensors", items, {"format": "x"})
    back = load_file(str(tmp_path / "t.safetensors"))
    assert set(back) == set(items)
    for name, value in items.items():
        assert back[name].dtype == value.dtype and torch.equal(back[name], value), name
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as fh:
        assert fh.metadata() == {"format": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no spool or temp left


def test_tensor_writer_leaves_nothing_on_error_and_refuses_bad_names(tmp_path: Path) -> None:
    target = tmp_path / "t.safetensors"
    with pytest.raises(RuntimeError), bundle_mod.TensorWriter(tmp_path) as writer:
        writer.add("a", torch.ones(3))
        with pytest.raises(ValueError, match="already used"):
            writer.add("a", torch.ones(3))
        with pytest.raises(ValueError, match="reserved"):
            writer.add("__metadata__", torch.ones(1))
        with pytest.raises(ValueError, match="dtype"):
            writer.add("c", torch.ones(2, dtype=torch.complex64))
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), bundle_mod.TensorWriter(tmp_path) as writer:
        writer.add("a", torch.ones(3))
        raise RuntimeError("stop")
    assert target.read_bytes() == b"old"  # an existing file is only replaced by a finished one


def test_find_bundle_takes_its_settings_from_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = make(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDQWEN_BUNDLE", raising=False)
    given = Settings(bundle=b.root, cache_dir=tmp_path / "cache")
    assert find_bundle(settings=given) == b.root == Bundle.open(settings=given).root
    monkeypatch.setenv("MEDQWEN_BUNDLE", str(b.root))
    with pytest.raises(BundleError, match="no bundle in"):  # the caller's settings win
        find_bundle(settings=Settings(bundle=None, cache_dir=tmp_path / "cache"))
    assert Settings.from_env().bundle == b.root
    assert Settings.from_env({"MEDQWEN_CACHE_DIR": str(tmp_path)}).data_cache_dir == (
        tmp_path / "data"
    )


def test_bundle_names_of_every_importer_still_resolve() -> None:
    names = (
        "Bundle TensorWriter atomic_write_bytes atomic_write_json bundle_lock find_bundle "
        "load_tensors save_tensors sha256_file summarize tensor_shapes"
    )
    assert all(hasattr(bundle_mod, name) for name in names.split())


def test_bundle_and_io_import_no_model_code() -> None:
    """The store imports neither the base models, the presets nor torch; _io only errors."""
    probe = (
        "import json, sys, importlib; importlib.import_module(sys.argv[1]); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('medqwen_cli', 'torch')))))"
    )
    run = [sys.executable, "-c", probe]
    loaded = json.loads(subprocess.run([*run, "medqwen_cli.bundle"], capture_output=True,
                                       text=True, check=True).stdout)  # fmt: skip
    assert not [m for m in loaded if m.startswith(("medqwen_cli.modeling", "medqwen_cli.presets",
                                                    "torch"))], loaded  # fmt: skip
    loaded = json.loads(subprocess.run([*run, "medqwen_cli._io"], capture_output=True, text=True,
                                       check=True).stdout)  # fmt: skip
    assert loaded == ["medqwen_cli", "medqwen_cli._io", "medqwen_cli.errors"]


def test_a_manifest_written_the_old_way_reads_its_adapter_from_method(tmp_path: Path) -> None:
    """bundle.json as every format-1 writer has made it: the adapter settings in `method` and
    again in `recipe.adapter`. Readers take them from `method` alone."""
    from medqwen_cli.loading import adapter_config, bundle_recipe

    adapter = {
        "method": "moelora", "experts": 4, "top_k": 2, "rank": 8, "scaling": "theory",
        "alpha": 64.0, "eta": 1.0, "rho": 10.0, "segments": "spread", "dropout": 0.0,
        "dropout_masks": "shared", "balance_loss": 0.001, "targets": ["q_proj$"],
        "exclude": ["(^|\\.)visual\\."], "seed": 3,
    }  # fmt: skip
    root = tmp_path / "old"
    root.mkdir()
    manifest = {
        "format_version": 1,
        "medqwen_version": "0.1.0",
        "created": "2025-01-01T00:00:00+00:00",
        "base": {"name": "tiny-qwen2-vl", "source": "preset", "fingerprint": "abc"},
        "method": adapter,
        "recipe": {"model": {"base": "tiny-qwen2-vl"}, "adapter": {**adapter, "dropout": 0.3}},
        "init_sha256": None,
        "versions": [],
        "head": None,
    }
    (root / "bundle.json").write_text(json.dumps(manifest, indent=2))
    b = Bundle.open(root)
    cfg = adapter_config(b)
    assert cfg.model_dump(mode="json") == adapter and cfg.num_experts == 4 and cfg.is_routed
    assert bundle_recipe(b).adapter == cfg  # the recipe's copy never overrides `method`
    assert json.loads((root / "bundle.json").read_text()) == manifest  # opening rewrites nothing
    # written back in format 1, both copies from `method`
    assert b.manifest.to_json() == {
        **manifest,
        "recipe": {**manifest["recipe"], "adapter": adapter},
    }
    assert list(b.manifest.to_json()) == list(manifest)  # key order kept


def test_a_format_1_manifest_without_method_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "old"
    root.mkdir()
    manifest = {"format_version": 1, "created": "2025-01-01T00:00:00+00:00", "base": {},
                "recipe": {"adapter": {"method": "lora"}}}  # fmt: skip
    (root / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format 1 manifest needs its `method`"):
        Bundle.open(root)


def test_format_2_stores_the_adapter_settings_once(tmp_path: Path) -> None:
    b = make(tmp_path)
    written = json.loads((b.root / "bundle.json").read_text())
    assert written["format_version"] == 2 and "method" not in written
    assert written["recipe"]["adapter"]["method"] == "sslora"
    assert Bundle.open(b.root).manifest.adapter_settings == written["recipe"]["adapter"]
    written["method"] = written["recipe"]["adapter"]  # a format-1 key in a format-2 file
    (b.root / "bundle.json").write_text(json.dumps(written))
    with pytest.raises(BundleError, match="invalid at method"):
        Bundle.open(b.root)


def test_files_get_the_mode_the_umask_gives_not_owner_only(bundle_dir: Path) -> None:
    """A bundle on a shared disk stays readable by the team: temporary files (mkstemp,
    mkdtemp: owner-only) get open / mkdir's mode before they are renamed into place."""
    import os
    import stat

    old = os.umask(0o002)
    try:
        b = Bundle.open(bundle_dir)
        entry = b.append_version(
            b.read_adapter(), command="test", tasks=["xray"], recipe=b.manifest.recipe
        )
    finally:
        os.umask(old)
    vdir = bundle_dir / "versions" / entry.id
    assert stat.S_IMODE(vdir.stat().st_mode) == 0o775
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in vdir.iterdir()}
    assert modes and set(modes.values()) == {0o664}, modes
    assert stat.S_IMODE((bundle_dir / "bundle.json").stat().st_mode) == 0o664
