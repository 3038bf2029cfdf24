"""Task metrics as `evaluate.Metric` subclasses that run offline (instantiate them directly).

    ClosedVqaAccuracy   accuracy, n, n_unparseable                       (kw: choices)
    OpenVqaOverlap      token_f1, token_recall, exact_match, n
    ReportBleu          bleu_1 .. bleu_4                                 (sacrebleu)
    ReportRougeL        rouge_l                                          (rouge_score, stemmed)
    CiderD              cider                                            (own CIDEr-D)
    FindingF1           finding_f1, finding_precision, finding_recall    (kw: findings)
    ClassificationScores accuracy, macro_f1, n, n_invalid, auc, auc_reason (kw: labels, scores)
    PopeScores          accuracy, precision, recall, f1, yes_ratio, n, n_unparseable

Each module's docstring states its definitions.

The classes load on first access (PEP 562): importing `evaluate` costs seconds (it imports
transformers' pipelines), so `medqwen_cli.evaluation.metrics._text` (answer parsing, used by the
runner and the CLI's import chain) stays free of it and a command that fails before scoring
never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medqwen_cli._lazy import lazy_exports

if TYPE_CHECKING:
    from medqwen_cli.evaluation.metrics.cider import CiderD
    from medqwen_cli.evaluation.metrics.classification import ClassificationScores
    from medqwen_cli.evaluation.metrics.pope import PopeScores
    from medqwen_cli.evaluation.metrics.report import FindingF1, ReportBleu, ReportRougeL
    from medqwen_cli.evaluation.metrics.vqa import ClosedVqaAccuracy, OpenVqaOverlap

_MODULE_OF = {
    "CiderD": "cider",
    "ClassificationScores": "classification",
    "ClosedVqaAccuracy": "vqa",
    "FindingF1": "report",
    "OpenVqaOverlap": "vqa",
    "PopeScores": "pope",
    "ReportBleu": "report",
    "ReportRougeL": "report",
}

__all__ = [
    "CiderD",
    "ClassificationScores",
    "ClosedVqaAccuracy",
    "FindingF1",
    "OpenVqaOverlap",
    "PopeScores",
    "ReportBleu",
    "ReportRougeL",
]


__getattr__ = lazy_exports(__name__, _MODULE_OF)
