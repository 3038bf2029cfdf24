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
"""

from medqwen_cli.evaluation.metrics.cider import CiderD
from medqwen_cli.evaluation.metrics.classification import ClassificationScores
from medqwen_cli.evaluation.metrics.pope import PopeScores
from medqwen_cli.evaluation.metrics.report import FindingF1, ReportBleu, ReportRougeL
from medqwen_cli.evaluation.metrics.vqa import ClosedVqaAccuracy, OpenVqaOverlap

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
