"""Settings ($MEDQWEN_BUNDLE, $MEDQWEN_CACHE_DIR): a command reads the environment once and
passes the result down; a library entry point honours `settings=` over the environment and
falls back to the environment without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from medqwen_cli.settings import BUNDLE_ENV, Settings

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes/debug/tiny.yaml"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny bundles (v0001 only): the one a test asks for, and the environment's."""
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe

    root = tmp_path_factory.mktemp("settings")
    for name in ("asked", "env"):
        init_experts(load_recipe(TINY, ["eval.max_samples=2"]), root / name)
    return root / "asked", root / "env"


@pytest.fixture
def from_env_calls(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Counts the reads of the environment (`Settings.from_env`)."""
    calls: list[None] = []
    read = Settings.from_env

    def counted(cls: type[Settings], environ=None) -> Settings:  # noqa: ANN001
        calls.append(None)
        return read(environ)

    monkeypatch.setattr(Settings, "from_env", classmethod(counted))
    return calls


@pytest.mark.parametrize(
    "args",
    [
        ["log", "-f", "json"],
        ["inspect", "-f", "json"],
        ["validate", str(TINY), "-f", "json"],
    ],
)
def test_a_command_reads_the_environment_once(
    cli, bundles: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, from_env_calls: list[None],
    args: list[str],
) -> None:  # fmt: skip
    _, env_bundle = bundles
    monkeypatch.setenv(BUNDLE_ENV, str(env_bundle))  # no path given: $MEDQWEN_BUNDLE is used
    result = cli(*args)
    assert result.code == 0, result.err
    assert len(from_env_calls) == 1


def test_explicit_settings_win_over_the_environment(
    bundles: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medqwen_cli.evaluation.api import evaluate_bundle

    asked, env_bundle = bundles
    monkeypatch.setenv(BUNDLE_ENV, str(env_bundle))
    before = (
        (env_bundle / "evals.jsonl").read_bytes() if (env_bundle / "evals.jsonl").exists() else b""
    )
    settings = Settings(bundle=asked, cache_dir=tmp_path / "cache")
    result = evaluate_bundle(None, tasks=["xray"], base_only=True, settings=settings)
    assert Path(result.bundle) == asked.resolve()
    after = (
        (env_bundle / "evals.jsonl").read_bytes() if (env_bundle / "evals.jsonl").exists() else b""
    )
    assert after == before  # the environment's bundle was not evaluated
    assert any((tmp_path / "cache" / "data" / "builtin").glob("xray-*"))  # the data went there
    assert any((tmp_path / "cache" / "presets").glob("tiny-qwen2-vl-*"))  # and the base came from


def test_without_settings_the_environment_is_read(
    bundles: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from medqwen_cli.evaluation.api import evaluate_bundle

    _, env_bundle = bundles
    monkeypatch.setenv(BUNDLE_ENV, str(env_bundle))
    result = evaluate_bundle(None, tasks=["xray"], base_only=True)
    assert Path(result.bundle) == env_bundle.resolve()
