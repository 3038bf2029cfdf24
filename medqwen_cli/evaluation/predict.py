"""`predict`: answer questions about images with a bundle version, writing nothing.

    predict(bundle, *, image=None, question=None, data=None, choices=None, version=None,
            base_only=False, max_new_tokens=None, split="eval", progress=None,
            settings=None) -> PredictResult

Inputs, exactly one of:

- `image` + `question`: one question about one image file (PNG, JPEG, ... or DICOM, converted
  as the dataset readers convert it); its answer's id is the image file's stem;
- `data`: every record of a dataset (a JSONL file, or anything `medqwen train`/`evaluate`
  read: the same readers, the same image resolution; `split` picks the split of a directory
  or of a file that holds several, e.g. MedMNIST `.npz`), in file order. Native JSONL/JSON
  records may leave out the answer (`{"image": ..., "question": ...}`, with `labels` or a
  `type` of vqa_closed/pope for likelihood answers); other formats need one, never read here.

Answers come from `Runner` (runner.py), exactly as `medqwen evaluate` answers:

- with `choices`, every question is answered by likelihood over them: the choice with the
  highest total log-likelihood after the prompt wins, and `scores` holds the softmax of the
  choices' log-likelihoods (the model's distribution restricted to the choices, sums to 1);
- otherwise a `data` record that carries candidates (its `labels`, or a yes/no closed question
  or POPE probe) is answered by likelihood over them, and anything else is generated greedily,
  at most `max_new_tokens` tokens (default: the recipe's eval.max_new_tokens).

Contract: the bundle is only read: no version, no evals.jsonl line, no lock. The version's
files, its lineage's and init.safetensors are checked against their checksums
(`Bundle.check_version`) before the data is read or the model loads.
`settings` (settings.Settings, default: read from the environment) names the default bundle
and the cache where built-in data and converted images (DICOM, MedMNIST) are written.
Argument problems fail before the bundle is opened and before torch is imported. Nothing here
logs question or answer text; the caller renders the answers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medqwen_cli.bundle import BASE_VERSION, Bundle
from medqwen_cli.errors import DataError, EvaluationError
from medqwen_cli.settings import Settings

ProgressFn = Callable[[int, int, str], None]


@dataclass
class Answer:
    """One question's answer: `images` as given (--image) or as the reader resolved them."""

    id: str
    images: list[str]
    prediction: str
    scoring: str  # likelihood | generate
    scores: dict[str, float] | None = None  # choice -> probability (likelihood only)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "images": self.images,
            "prediction": self.prediction,
            "scoring": self.scoring,
            "scores": self.scores,
        }


@dataclass
class PredictResult:
    bundle: str
    version: str  # a version id, or "base"
    answers: list[Answer]
    load_seconds: float
    answer_seconds: float

    @property
    def choices(self) -> list[str]:
        """Every scored choice, in order of first appearance (the CSV/table columns)."""
        seen: dict[str, None] = {}
        for answer in self.answers:
            seen.update(dict.fromkeys(answer.scores or ()))
        return list(seen)


def predict(
    bundle: Bundle | str | os.PathLike[str] | None,
    *,
    image: str | os.PathLike[str] | None = None,
    question: str | None = None,
    data: str | os.PathLike[str] | None = None,
    choices: Sequence[str] | None = None,
    version: str | None = None,
    base_only: bool = False,
    max_new_tokens: int | None = None,
    split: str = "eval",
    progress: ProgressFn | None = None,
    settings: Settings | None = None,
) -> PredictResult:
    """Answer `question` about `image`, or every record of `data` (see the module docstring)."""
    options = check_arguments(image, question, data, choices, version, base_only, max_new_tokens)
    settings = settings if settings is not None else Settings.from_env()
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle, settings)
    from medqwen_cli.loading import bundle_recipe

    recipe = bundle_recipe(bundle)
    data_dir = settings.data_cache_dir
    if version == BASE_VERSION:
        base_only, version = True, None
    vid = BASE_VERSION if base_only else bundle.resolve_version(version)
    if vid != BASE_VERSION:
        bundle.check_version(vid)  # init and every file of the lineage, before any work
    if data is not None:
        records = _data_records(data, split, recipe.train.max_image_pixels, data_dir)
    else:
        records = [
            _image_record(Path(image), str(question), recipe.train.max_image_pixels, data_dir)
        ]
    if options:
        # the choices replace each record's own candidates; `answer` is never read here
        update = {"labels": options, "type": "classification"}
        records = [r.model_copy(update=update) for r in records]
    given = [str(image)] if image is not None else None

    from medqwen_cli.evaluation.api import load_model
    from medqwen_cli.evaluation.runner import Runner

    t0 = time.perf_counter()
    model, processor = load_model(bundle, recipe, vid, settings.cache_dir)
    load_seconds = time.perf_counter() - t0
    runner = Runner(
        model, processor, batch_size=recipe.eval.batch_size,
        max_new_tokens=max_new_tokens or recipe.eval.max_new_tokens,
        max_image_pixels=recipe.train.max_image_pixels, max_length=recipe.train.max_length,
    )  # fmt: skip
    done = 0

    def advance(n: int, _record: Any) -> None:  # never the record: its text may be patient data
        nonlocal done
        done += n
        if progress is not None:
            progress(done, len(records), "")

    t1 = time.perf_counter()
    predictions = runner.run(records, "likelihood", advance)
    answer_seconds = time.perf_counter() - t1
    answers = [
        Answer(p.id, given or list(r.images), p.prediction, p.method, _scores(p))
        for r, p in zip(records, predictions, strict=True)
    ]
    return PredictResult(str(bundle.root), vid, answers, load_seconds, answer_seconds)


def check_arguments(
    image: Any,
    question: str | None,
    data: Any,
    choices: Sequence[str] | None,
    version: str | None,
    base_only: bool,
    max_new_tokens: int | None,
) -> list[str] | None:
    """Every argument problem at once, before any file or model is touched; returns the
    cleaned choices (None when none were given)."""
    problems = []
    if image is None and data is None:
        problems.append("nothing to answer: give --image FILE --question TEXT, or --data FILE")
    if image is not None and data is not None:
        problems.append("both --image and --data were given; use one")
    if question is not None and image is None:
        problems.append("--question needs --image (records of --data carry their questions)")
    if image is not None and (question is None or not question.strip()):
        problems.append("--image needs a non-empty --question")
    cleaned = None
    if choices is not None:
        cleaned = [c.strip() for c in choices]
        if not cleaned or not all(cleaned):
            problems.append("--choices is empty or has an empty choice")
        elif len(set(cleaned)) < len(cleaned):
            problems.append("--choices lists a choice twice")
    if base_only and version not in (None, BASE_VERSION):
        problems.append(f"both a version ({version}) and --base-only were given")
    if max_new_tokens is not None and max_new_tokens < 1:
        problems.append(f"--max-new-tokens must be at least 1, found {max_new_tokens}")
    if problems:
        raise EvaluationError(
            "; ".join(problems),
            "medqwen predict [BUNDLE] --image FILE --question TEXT [--choices A --choices B], "
            "or medqwen predict [BUNDLE] --data FILE.jsonl; see medqwen predict --help",
        )
    return cleaned


def _scores(prediction: Any) -> dict[str, float] | None:
    """choice -> probability of a likelihood answer (None for a generated one)."""
    if prediction.candidates is None or prediction.probabilities is None:
        return None
    return dict(zip(prediction.candidates, prediction.probabilities, strict=True))


def _image_record(path: Path, question: str, max_image_pixels: int, data_dir: Path) -> Any:
    """The one-question record of --image/--question, its image checked as readers check."""
    from medqwen_cli.data.images import ImageResolver
    from medqwen_cli.data.records import Record

    if not path.expanduser().is_file():
        what = "is a directory" if path.expanduser().is_dir() else "not found"
        raise DataError(f"--image {path}: {what}", "give the path of an image file")
    resolver = ImageResolver(Path.cwd(), cache_dir=data_dir, max_image_pixels=max_image_pixels)
    resolved = resolver.resolve_one(str(path.expanduser().resolve()), "--image", "image")
    return Record(
        id=path.stem or "image", type="vqa_open", images=[resolved], question=question.strip(),
        answer="-", source="--image", line=0,  # no reference: `answer` is never read
    )  # fmt: skip


def _data_records(data: Any, split: str, max_image_pixels: int, data_dir: Path) -> list[Any]:
    from medqwen_cli.data.readers import load_records
    from medqwen_cli.recipe import DatasetSpec

    path = str(data)
    if not path.startswith("builtin:"):
        if not Path(path).expanduser().exists():
            raise DataError(
                f"--data {path}: not found",
                "give a dataset file (JSONL, or any format train and evaluate read), a "
                "directory of splits, or builtin:NAME",
            )
        path = str(Path(path).expanduser().resolve())
    spec = DatasetSpec(path=path, split=split, eval_split=split)
    try:
        return load_records(
            spec, split, cache_dir=data_dir, max_image_pixels=max_image_pixels,
            answer_optional=True,
        )  # fmt: skip
    except DataError as exc:
        if "'answer'" not in exc.message or "missing" not in exc.message:
            raise
        raise DataError(
            exc.message,
            'only native JSONL/JSON records ({"image": ..., "question": ...}) may leave out '
            "the answer; this format is read as train and evaluate read it: give any "
            "placeholder answer (it is not used), or convert the questions to JSONL",
        ) from None
