"""`medqwen report` (HTML and JSON), and acceptance end to end: `continue` with criteria,
the default version, `medqwen accept`, and a shell pipeline stopped by a failed version."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from medqwen_cli.acceptance import EXIT_NOT_ACCEPTED
from medqwen_cli.bundle import Bundle

QUICK = ["train.max_steps=3", "eval.max_samples=8"]  # the bundle fixture's settings (conftest.py)

SETS = [arg for s in QUICK for arg in ("--set", s)]
# a request leaving the page: a src/href/url()/@import naming a scheme other than data:
EXTERNAL = re.compile(
    r"""(?:src|href)\s*=\s*["']?(?!data:|#)[a-z]+:|url\((?!["']?data:)|@import""", re.I
)


def test_report_html_is_self_contained(reported_bundle, cli, tmp_path):
    out = tmp_path / "report.html"
    result = cli("report", reported_bundle, "--out", out)
    assert result.code == 0, result.err
    html = out.read_text(encoding="utf-8")
    assert 'id="accuracy-matrix"' in html
    assert html.count('class="report-figure"') == 2  # the tasks' scores, one forgetting curve
    assert html.count("<svg") == 2
    assert not EXTERNAL.search(html) and "<script" not in html.lower()
    assert "v0003" in html and "Limits" in html and "Acceptance" in html


def test_report_json_schema(reported_bundle, cli):
    result = cli("report", reported_bundle, "--format", "json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["schema"] == 1 and data["integrity"]["verified"]
    assert set(data) == {"schema", "generated", "medqwen_version", "bundle", "integrity",
                         "lineage", "performance", "acceptance", "limits"}  # fmt: skip
    assert [v["id"] for v in data["lineage"]] == ["v0001", "v0002", "v0003"]
    for version in data["lineage"]:  # digests and counts only, never a path or a record
        assert all(set(d) == {"task", "split", "records", "sha256"} for d in version["data"])
    perf = data["performance"]
    assert perf["rows"] == ["base", "v0002", "v0003"] and perf["tasks"] == ["xray", "ct"]
    assert perf["matrix"]["values"][1][0] is not None and len(perf["curves"]) == 1
    assert {f["name"] for f in perf["figures"]} == {"ACC", "BWT", "FWT", "Forgetting"}
    assert data["bundle"]["default_version"] == "v0003"


def test_failed_criteria_keep_the_default_and_stop_a_pipeline(bundle_copy, cli):
    command = [sys.executable, "-m", "medqwen_cli", "-q", "continue", str(bundle_copy),
               "--task", "pathology", *SETS, "--set", "acceptance.new_task.min_score=2",
               "--format", "json"]  # fmt: skip
    script = "set -e; " + " ".join(f"'{a}'" for a in command) + "; echo reached"
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == EXIT_NOT_ACCEPTED, run.stderr
    assert "reached" not in run.stdout
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "v0004 is not accepted" in errors[0]
    assert "min_score" in errors[0] and "needs >= 2" in errors[0]
    assert json.loads(run.stdout)["acceptance"]["passed"] is False
    bundle = Bundle.open(bundle_copy)
    assert bundle.manifest.head == "v0004" and bundle.head == "v0003"  # kept, not the default
    assert bundle.resolve_version(None) == "v0003" and bundle.resolve_version("v4") == "v0004"
    log = cli("log", bundle_copy, "--all", "--format", "json")
    assert [(v["id"], v["acceptance"], v["head"]) for v in json.loads(log.out)][:2] == [
        ("v0004", "not accepted", False), ("v0003", "no criteria", True),
    ]  # fmt: skip
    assert "newer versions are not accepted" in cli("log", bundle_copy).err
    info = json.loads(cli("inspect", bundle_copy, "--version", "v4", "--format", "json").out)
    assert info["default_version"] == "v0003" and info["acceptance"].startswith("not accepted: ")

    accepted = cli("accept", "v0004", "--by", "Dr A. Lee", "--reason", "reviewed on 40 cases",
                   "--bundle", bundle_copy, "--format", "json")  # fmt: skip
    assert accepted.code == 0, accepted.err
    line = json.loads(accepted.out)
    assert (line["default_before"], line["default_after"]) == ("v0003", "v0004")
    assert Bundle.open(bundle_copy).head == "v0004"
    again = cli("accept", "v0004", "--by", "B", "--reason", "r", "--bundle", bundle_copy)
    assert again.code == 1 and "nothing to override" in again.err
    rerun = cli(*command[3:])  # the same command again: nothing to train, the override stands
    assert rerun.code == 0, rerun.err
    assert json.loads(rerun.out)["acceptance"]["status"] == "accepted by override"

    report = json.loads(cli("report", bundle_copy, "--format", "json").out)
    (v4,) = [a for a in report["acceptance"] if a["version"] == "v0004"]
    assert v4["status"] == "accepted by override" and v4["overrides"][0]["by"] == "Dr A. Lee"
    assert not v4["verdict"]["passed"] and report["integrity"]["verified"]


def test_passing_criteria_move_the_default(bundle_copy, cli):
    result = cli("-q", "continue", bundle_copy, "--task", "pathology", *SETS,
                 "--set", "acceptance.earlier_tasks.max_drop=1", "--format", "json")  # fmt: skip
    assert result.code == 0, result.err
    verdict = json.loads(result.out)["acceptance"]
    assert verdict["passed"] and {c["task"] for c in verdict["checks"]} == {"xray", "ct"}
    assert Bundle.open(bundle_copy).head == "v0004"


def test_report_of_a_damaged_bundle_says_so(bundle_copy, cli, tmp_path):
    with open(Path(bundle_copy) / "versions/v0002/metrics.json", "a") as fh:
        fh.write(" ")
    out = tmp_path / "report.html"
    result = cli("report", bundle_copy, "--out", out)
    assert result.code == 1 and "does not verify" in result.err
    assert "versions/v0002/metrics.json: checksum mismatch" in out.read_text(encoding="utf-8")


def test_the_same_command_again_judges_a_version_left_without_a_verdict(bundle_copy, cli):
    from medqwen_cli.acceptance import ACCEPTANCE_FILE

    args = ("-q", "continue", bundle_copy, "--task", "pathology", *SETS,
            "--set", "acceptance.new_task.min_score=2", "--format", "json")  # fmt: skip
    assert cli(*args).code == EXIT_NOT_ACCEPTED
    (Path(bundle_copy) / ACCEPTANCE_FILE).unlink()  # as if stopped before the check
    assert Bundle.open(bundle_copy).head == "v0004"
    again = cli(*args)
    assert again.code == EXIT_NOT_ACCEPTED, again.err
    assert "nothing left to do" in again.err and "v0004 is not accepted" in again.err
    bundle = Bundle.open(bundle_copy)
    assert bundle.head == "v0003" and bundle.manifest.head == "v0004"


def test_train_with_criteria_scores_and_judges_its_version(bundle_copy, cli):
    """`train` evaluates what the criteria need (every task of the lineage) and judges, as
    `continue` does: a failed version is kept, not the default, with the documented code."""
    failed = cli("train", bundle_copy, "--task", "builtin:mri", *SETS,
                 "--set", "acceptance.new_task.min_score=2", "--format", "json")  # fmt: skip
    assert failed.code == EXIT_NOT_ACCEPTED, failed.err
    out = json.loads(failed.out)
    assert out["acceptance"]["passed"] is False
    assert {e["task"] for e in out["evaluations"]} == {"xray", "ct", "builtin:mri"}  # its lineage
    bundle = Bundle.open(bundle_copy)
    assert bundle.manifest.head == "v0004" and bundle.head == "v0003"  # kept, not the default
    plain = cli("train", bundle_copy, "--task", "builtin:fundus", *SETS, "--format", "json")
    assert plain.code == 0 and json.loads(plain.out)["evaluations"] == []  # no criteria: no eval
