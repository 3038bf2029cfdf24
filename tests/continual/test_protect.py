"""`continue --protect` end to end on the tiny preset: the first task's outputs are kept exactly
on the inputs its basis spans, the bases are stored and reused without old data, resume is
exact, and the refusals come with their reasons."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from medqwen_cli.bundle import Bundle
from medqwen_cli.errors import MedqwenError, TrainingError
from medqwen_cli.training.run import continue_bundle

QUICK = ["train.max_steps=3", "train.checkpoint_every=1000"]
PROTECT = ["continual.protect=true", "continual.protect_energy=0.6", "continual.protect_records=8"]


def _task_dir(root: Path, n: int, word: str = "finding") -> Path:
    """A task whose eval split is its train split (text-only records)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [
        {
            "id": f"q{i}",
            "type": "vqa_closed",
            "question": f"Is {word} {i} present?",
            "answer": "yes" if i % 2 else "no",
            "labels": ["yes", "no"],
        }  # fmt: skip
        for i in range(n)
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines)
    for split in ("train", "eval"):
        (root / f"{split}.jsonl").write_text(text)
    return root


def _logits(bundle: Bundle, version: str, records: list) -> torch.Tensor:
    from medqwen_cli.data.collate import Collator
    from medqwen_cli.loading import load_adapted

    adapted = load_adapted(bundle, version)
    batch = Collator(adapted.processor, max_image_pixels=56 * 56)(records)
    batch.pop("labels")
    with torch.no_grad():
        return adapted.model(**batch).logits


def test_protect_keeps_the_first_tasks_outputs_exactly(bundle_dir: Path, tmp_path: Path) -> None:
    from medqwen_cli.data import load_records
    from medqwen_cli.recipe import DatasetSpec
    from medqwen_cli.settings import Settings

    cache = Settings.from_env().data_cache_dir

    task_a = _task_dir(tmp_path / "a", 1)
    continue_bundle(bundle_dir, task=str(task_a), overrides=QUICK, evaluate=False)  # v0002
    energy_one = ["continual.protect=true", "continual.protect_energy=1.0",
                  "continual.protect_records=1", "train.max_steps=5", "train.lr=0.01"]  # fmt: skip
    result = continue_bundle(bundle_dir, task="ct", overrides=energy_one, evaluate=False)
    assert result.version == "v0003"
    assert result.continual["bases_from"][str(task_a.resolve())] == "data"
    bundle = Bundle.open(bundle_dir)
    a_records = load_records(DatasetSpec(path=str(task_a)), "eval", cache_dir=cache)
    before, after = _logits(bundle, "v0002", a_records), _logits(bundle, "v0003", a_records)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)  # A's inputs span M exactly
    ct = load_records(DatasetSpec(path="builtin:ct"), "eval", cache_dir=cache)[:2]
    moved = (_logits(bundle, "v0003", ct) - _logits(bundle, "v0002", ct)).abs().max()
    assert moved > 1e-3  # the branch learned something elsewhere
    # (evaluation's likelihood scoring also reads the wrong candidate's tokens, which A's
    # training sequences never held: those inputs are outside span(M) and may move)


def test_bases_are_stored_and_reused_without_old_data(
    bundle_dir: Path, tmp_path: Path, cli
) -> None:
    task_a = _task_dir(tmp_path / "a", 6)
    first = continue_bundle(bundle_dir, task=str(task_a), overrides=[*QUICK, *PROTECT])
    assert first.continual["protected_tasks"] == [] and first.continual["branches"] == 0
    b = Bundle.open(bundle_dir)
    assert "protect.safetensors" in b.read_version_info(first.version).files  # checksummed
    shutil.rmtree(task_a)  # the hospital keeps no old data: the stored basis is enough
    second = continue_bundle(bundle_dir, task="ct", overrides=[*QUICK, *PROTECT], evaluate=False)
    assert second.continual["bases_from"][str(task_a.resolve())] == f"version {first.version}"
    assert second.continual["branches"] == 1
    record = Bundle.open(bundle_dir).read_json("continual.json", second.version)
    assert record["bases"]["tasks"] == [str(task_a.resolve()), "ct"]
    assert record["protected_tasks"] == [str(task_a.resolve())]
    text = (Bundle.open(bundle_dir).version_dir(second.version) / "continual.json").read_text()
    assert "question" not in text and "Is finding" not in text  # ids, never record text
    shown = cli("inspect", str(bundle_dir), "--format", "json")
    assert shown.code == 0, shown.err
    summary = json.loads(shown.out)
    assert summary["branches"] == 1 and summary["strategy"] == "protect 0.6, branch 1"
    assert summary["protect_bases"]["tasks"] == record["bases"]["tasks"]
    assert "no records" in summary["protect_bases"]["what"]
    report = json.loads(cli("forgetting-report", str(bundle_dir), "--format", "json").out)
    assert report["runs"][0]["strategies"][second.version] == "protect 0.6, branch 1"
    # every command loads the two-branch version: a third task, then evaluate and predict
    third = continue_bundle(bundle_dir, task="xray", overrides=[*QUICK, *PROTECT], evaluate=False)
    assert third.continual["branches"] == 2
    assert cli("evaluate", str(bundle_dir), "--task", "ct", "--format", "json").code == 0
    from PIL import Image

    Image.new("RGB", (64, 48), (90, 40, 160)).save(tmp_path / "scan.png")
    answer = cli("predict", str(bundle_dir), "--image", tmp_path / "scan.png", "--question",
                 "Is there an effusion?", "--format", "json")  # fmt: skip
    assert answer.code == 0 and f"{third.version}: 1 answer" in answer.err
    assert json.loads(answer.out.splitlines()[0])["prediction"] is not None


def test_an_interrupted_protected_run_resumes_to_the_same_adapter(crash_and_resume_on_ct) -> None:
    adapter = crash_and_resume_on_ct(["train.max_steps=6", "train.checkpoint_every=2", *PROTECT])
    assert any(".branches.0." in k for k in adapter)


def test_refusals(
    bundle_dir: Path, template_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_a = _task_dir(tmp_path / "a", 6)
    continue_bundle(bundle_dir, task=str(task_a), overrides=QUICK, evaluate=False)  # no basis
    # protect_full=refuse: a layer input the bases fill is named, and the hint's energy works
    refuse = [*QUICK, "continual.protect=true", "continual.protect_full=refuse"]
    with pytest.raises(TrainingError, match=r"layer input language_model\.layers\.\d+\.") as err:
        continue_bundle(
            bundle_dir, task="ct", evaluate=False,
            overrides=[*refuse, "continual.protect_energy=0.999"],
        )  # fmt: skip
    fits = re.search(r"continual\.protect_energy=([0-9.]+) fits every layer", err.value.hint)
    assert fits, err.value.hint
    done = continue_bundle(
        bundle_dir, task="ct", evaluate=False,
        overrides=[*refuse, f"continual.protect_energy={fits.group(1)}"],
    )  # fmt: skip
    assert done.continual["full_layers"] == 0 and done.continual["branches"] == 1
    bundle_dir = tmp_path / "fresh"  # again without a stored basis
    shutil.copytree(template_bundle, bundle_dir)
    continue_bundle(bundle_dir, task=str(task_a), overrides=QUICK, evaluate=False)
    import medqwen_cli.loading as loading

    monkeypatch.setattr(loading, "load_adapted", lambda *a, **k: pytest.fail("model loaded"))
    shutil.rmtree(task_a)  # no stored basis and no data: refused before any model loads
    with pytest.raises(MedqwenError) as err:
        continue_bundle(bundle_dir, task="ct", overrides=[*QUICK, *PROTECT])
    assert "--protect" in err.value.message and "input basis" in err.value.message
    assert str(task_a.resolve()) in err.value.message


def test_five_tasks_with_defaults_and_no_old_data(bundle_dir: Path, tmp_path: Path, cli) -> None:
    """Five protected tasks in a row with default settings (energy 0.99, full layers fit): each
    task's data is deleted once its version exists, and every run still trains, reading
    nothing of the old tasks; each version stores only the bases it adds."""
    versions = []
    for i in range(5):
        task = _task_dir(tmp_path / f"t{i}", 6 + i, word=f"finding{i}")
        result = continue_bundle(
            bundle_dir, task=str(task), overrides=[*QUICK, "continual.protect=true"],
            evaluate=False,
        )  # fmt: skip
        shutil.rmtree(task)  # the hospital keeps no old data
        versions.append(result.version)
        assert result.continual["branches"] == i
        assert all(
            s != "data"
            for t, s in result.continual["bases_from"].items()
            if t != str(task.resolve())
        )
    bundle = Bundle.open(bundle_dir)
    record = bundle.read_json("continual.json", versions[-1])
    assert len(record["bases"]["tasks"]) == 5 and record["bases"]["added"] == [4]
    assert record["bases"]["files"] == {v: [i] for i, v in enumerate(versions[:-1])}
    # linear storage: a later version's file holds its own task's directions only
    from medqwen_cli._io import tensor_shapes

    for i, version in enumerate(versions):
        keys = tensor_shapes(bundle.version_dir(version) / "protect.safetensors")
        assert {k.split(":")[0] for k in keys} == {str(i)}
    # and its adapter file only the branch it trained: the frozen tensors come from its parent
    for i, version in enumerate(versions[1:]):
        own = tensor_shapes(bundle.version_dir(version) / "adapter.safetensors")
        assert own and all(f".branches.{i}." in k for k in own)
        assert bundle.read_version_info(version).inherits == versions[i]
        full = bundle.read_adapter(version)
        assert set(own) < set(full) and sum(".branches." in k for k in full) == len(own) * (i + 1)
    shown = json.loads(cli("inspect", str(bundle_dir), "--format", "json").out)
    assert shown["strategy"].startswith("protect 0.99, branch 4")
    assert set(shown["protect_bases"]["least_kept"]) == set(record["protected_tasks"])


def test_excluded_layers_get_no_branch_and_record_no_basis(
    bundle_dir: Path, tmp_path: Path
) -> None:
    from medqwen_cli.bundle import load_tensors

    skip = [*QUICK, *PROTECT, "continual.protect_exclude=[down_proj$]"]
    task_a = _task_dir(tmp_path / "a", 6)
    first = continue_bundle(bundle_dir, task=str(task_a), overrides=skip, evaluate=False)
    second = continue_bundle(bundle_dir, task="ct", overrides=skip, evaluate=False)
    assert second.continual["protect_exclude"] == ["down_proj$"]
    b = Bundle.open(bundle_dir)
    for version in (first.version, second.version):  # no basis of down_proj's input is stored
        keys = load_tensors(b.version_dir(version) / "protect.safetensors")
        assert keys and not any("down_proj" in k for k in keys)
    state = b.read_adapter(second.version)
    branched = {k.split(".branches.")[0] for k in state if ".branches.0." in k}
    assert branched and not any(k.endswith("down_proj") for k in branched)
    assert any(k.endswith("up_proj") for k in branched)
    assert b.read_json("continual.json", second.version)["protect_exclude"] == ["down_proj$"]
    # a later run that would branch down_proj has no basis of it for ct: refused, and the hint's
    # setting runs
    with pytest.raises(
        TrainingError, match=r"mlp\.down_proj: earlier task\(s\) .* recorded no"
    ) as err:
        continue_bundle(bundle_dir, task="xray", overrides=[*QUICK, *PROTECT], evaluate=False)
    setting = re.search(r"--set '([^']+)'", err.value.hint).group(1)
    third = continue_bundle(bundle_dir, task="xray", overrides=[*QUICK, *PROTECT, setting],
                            evaluate=False)  # fmt: skip
    assert third.continual["branches"] == 2
