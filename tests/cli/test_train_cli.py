"""`medqwen train` / `medqwen continue` from the command line, inside the bundle directory."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICK = ["--set", "train.max_steps=2", "--set", "train.checkpoint_every=1000"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe

    root = tmp_path_factory.mktemp("cli-train") / "b"
    init_experts(load_recipe(REPO / "recipes/debug/tiny.yaml"), root)
    return root


@pytest.fixture
def bundle(template: Path, tmp_path: Path) -> Path:
    shutil.copytree(template, tmp_path / "b")
    return tmp_path / "b"


def test_train_then_continue_without_paths(cli, bundle: Path, monkeypatch) -> None:
    monkeypatch.chdir(bundle)
    first = cli("train", "--task", "xray", *QUICK, "-f", "json")
    assert first.code == 0, first.err
    assert json.loads(first.out)["version"] == "v0002"
    second = cli("continue", "--task", "ct", "--no-eval", *QUICK, "-f", "json")
    assert second.code == 0, second.err
    data = json.loads(second.out)
    assert (data["version"], data["parent"], data["tasks"]) == ("v0003", "v0002", ["ct"])
    log = json.loads(cli("log", "-f", "json").out)
    assert [(row["id"], row["tasks"]) for row in log] == [
        ("v0003", ["ct"]),
        ("v0002", ["xray"]),
        ("v0001", []),
    ]


def test_train_table_output(cli, bundle: Path) -> None:
    result = cli("train", bundle, "--task", "xray", *QUICK, "-f", "table")
    assert result.code == 0 and "v0002" in result.out and "router load" in result.out


def test_unknown_task(cli, bundle: Path) -> None:
    result = cli("train", bundle, "--task", "xary", *QUICK)
    assert (
        result.code == 1
        and "unknown task 'xary'" in result.err
        and "did you mean 'xray'" in result.err
    )


def test_continue_needs_a_task(cli, bundle: Path) -> None:
    assert cli("continue", bundle).code == 2


def test_train_a_dataset_path_directly(cli, bundle: Path, tmp_path: Path) -> None:
    from medqwen_cli.data.synthetic import generate_task

    data = generate_task("mri", tmp_path / "mri-data", size=16)
    result = cli("train", bundle, "--task", str(data), *QUICK, "-f", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["tasks"] == [str(data)]


def test_nothing_to_train_on(cli, bundle: Path) -> None:
    result = cli("train", bundle, "--set", "data.datasets=[]", *QUICK)
    assert result.code == 1 and "nothing to train on" in result.err


WATCH = [*QUICK, "--set", "eval.max_samples=2", "--watch", "xray", "--eval-every", "1"]


def test_watch_curve_in_json_and_table(cli, bundle: Path) -> None:
    result = cli("continue", bundle, "--task", "ct", "--no-eval", *WATCH, "-f", "json")
    assert result.code == 0, result.err
    curves = json.loads(result.out)["curves"]
    assert [(p["step"], p["task"], p["version"]) for p in curves] == [
        (k, "xray", "v0002") for k in (0, 1, 2)
    ]
    assert "watch step 2/2: xray headline_mean" in result.err  # progress on stderr only
    table = cli("train", bundle, "--task", "ct", "--again", *WATCH, "-f", "table")
    assert table.code == 0, table.err
    assert "forgetting curve: headline score while training v0003 on ct" in table.out
    assert "xray (headline_mean)" in table.out


def test_watch_usage_errors(cli, bundle: Path) -> None:
    lonely = cli("continue", bundle, "--task", "ct", "--eval-every", "5", *QUICK)
    assert lonely.code == 2 and "--eval-every" in lonely.err and "needs --watch" in lonely.err
    unknown = cli("train", bundle, "--task", "ct", "--watch", "xary", *QUICK)
    assert unknown.code == 1 and "cannot watch 'xary'" in unknown.err
    assert "did you mean 'xray'" in unknown.err
    assert not (bundle / "work").exists()  # failed before any training


def test_ctrl_c_says_what_a_rerun_resumes_from_and_the_rerun_says_it_resumed(
    cli, bundle: Path, monkeypatch
) -> None:
    from medqwen_cli.training import loop as loop_mod

    real, calls = loop_mod.token_loss_sum, {"n": 0}

    def ctrl_c_in_step_4(*args, **kwargs):
        calls["n"] += 1  # one call per step here (grad_accum 1)
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_mod, "token_loss_sum", ctrl_c_in_step_4)
    args = ["train", bundle, "--task", "xray", "--set", "train.max_steps=4"]
    args += ["--set", "train.checkpoint_every=2", "-f", "json"]
    stopped = cli(*args)
    assert stopped.code == 130 and stopped.err.splitlines()[-2:] == [
        "Error: interrupted after step 3 of 4; the last checkpoint is step 2",
        "Hint: rerun the same command to resume from step 2 (or add --restart to start over): "
        "medqwen " + " ".join(str(a) for a in args),
    ]
    assert not (bundle / "versions/v0002").exists()
    monkeypatch.setattr(loop_mod, "token_loss_sum", real)
    resumed = cli(*args)
    assert resumed.code == 0, resumed.err
    assert "resumed from step 2 of 4" in resumed.err
    assert json.loads(resumed.out)["resumed_from"] == 2


def test_ctrl_c_before_any_checkpoint() -> None:
    from medqwen_cli.training.loop import interrupted

    stopped = interrupted(Path("/nonexistent"), 3, 20, 10)
    assert (
        stopped.message == "interrupted after step 3 of 20; no checkpoint yet (one every 10 steps)"
    )
    assert stopped.hint and stopped.hint.startswith("rerun the same command to start again")


def test_plain_progress_lines_when_stderr_is_not_a_terminal(cli, bundle: Path) -> None:
    steps = ["--set", "train.max_steps=4", "--set", "train.log_every=2"]
    result = cli("train", bundle, "--task", "xray", *QUICK, *steps, "-f", "json")
    assert result.code == 0, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("train step")]
    assert len(lines) == 2, result.err
    number = r"\d+\.\d+(e[-+]\d+)?"
    pattern = rf"train step (2/4|4/4)  loss {number}  lr {number}  {number} s/step  ETA \d+:\d\d"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert lines[1].startswith("train step 4/4") and lines[1].endswith("ETA 0:00")
    assert "\x1b" not in result.err  # no terminal codes in a log file
    watch = ["--watch", "xray", "--eval-every", "2", "--set", "eval.max_samples=2"]
    quiet = cli("-q", "train", bundle, "--task", "ct", *QUICK, *steps, *watch, "-f", "json")
    assert quiet.code == 0, quiet.err
    assert "train step" not in quiet.err and "watch step" not in quiet.err


def test_continue_table_names_the_version_of_each_evaluation(cli, bundle: Path) -> None:
    """continue scores the parent on the new task (before training) and the new version on every
    task seen: the same task and metric twice, told apart by the version."""
    few = [*QUICK, "--set", "eval.max_samples=2"]
    assert cli("train", bundle, "--task", "xray", *few, "-f", "json").code == 0
    result = cli("continue", bundle, "--task", "ct", *few, "-f", "csv")
    assert result.code == 0, result.err
    fields = [row.split(",", 1)[0] for row in result.out.splitlines()[1:]]
    evals = [f for f in fields if f.startswith("eval ")]
    assert evals == [
        "eval v0002 (parent) ct headline_mean",
        "eval v0003 xray headline_mean",
        "eval v0003 ct headline_mean",
    ]
    assert len(set(fields)) == len(fields)


def test_ctrl_c_while_evaluating_names_the_version_and_the_same_command_completes_it(
    cli, bundle: Path, monkeypatch
) -> None:
    from medqwen_cli.training import run

    few = [*QUICK, "--set", "eval.max_samples=2"]
    assert cli("continue", bundle, "--task", "xray", *few, "-f", "json").code == 0

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "score_lineage", ctrl_c)  # the new version's scores, after publish
    args = ["continue", str(bundle), "--task", "ct", *few, "-f", "json"]
    stopped = cli(*args)
    assert stopped.code == 130 and stopped.err.splitlines()[-2:] == [
        "Error: interrupted after v0003 was written (trained on ct from v0002); left: its "
        "evaluation on xray, ct",
        "Hint: rerun the same command to complete v0003 without training again: medqwen "
        + " ".join(args),
    ]
    monkeypatch.undo()
    done = cli(*args)
    assert done.code == 0, done.err
    assert json.loads(done.out)["version"] == "v0003" and "train step" not in done.err
    assert "note: v0003 already trained ct with this recipe; completed what its run" in done.err
    finished = cli(*args)
    assert finished.code == 0 and "nothing left to do" in finished.err
    other = cli(*args, "--set", "train.lr=0.002")
    assert other.code == 1 and other.err.splitlines() == [
        "Error: v0003, the head version, already trained ct (with another recipe: train.lr differ)",
        "Hint: add --again to train ct again, as a new version on top of v0003",
    ]
    again = cli(*args, "--again", "--no-eval")
    assert again.code == 0 and json.loads(again.out)["version"] == "v0004"
    assert "--again" in cli("continue", "--help").out and "--again" in cli("train", "--help").out
