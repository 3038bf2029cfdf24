"""The recipe's `acceptance:` section: criteria fixed before a version is trained.

A `continue` run scores the new version on every task of its lineage; the criteria say which of
those scores a version must reach to become the bundle's default version. Three scopes:

    new_task        the task(s) the version trained, scored right after training
    earlier_tasks   every task trained by an earlier version of the lineage
    tasks.NAME      one task, whether new or earlier (in addition to the two above)

With R[v][j] the headline score of task j after version v and t(j) the version that first
trained j (docs/forgetting.md):

    min_score   R[v][j] >= value
    min_metric  score of metric m (e.g. `vqa_closed.accuracy`) after v >= value, per metric
    min_kept    R[v][j] / R[t(j)][j] >= value        earlier tasks only (kept share)
    max_drop    R[t(j)][j] - R[v][j] <= value         earlier tasks only (absolute drop)
    max_records_lost  per metric m that is a share of records (accuracy, exact match), scored on
                the same records: records right after t(j) and wrong after v <= value (from
                each evaluation's per-record outcomes; net from the scores when they lack them)

`notes` states, in advance, the known limits and risks of the model; the report prints them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# metrics that are a share of the records scored: share x n counts records answered right
SHARE_METRICS = (".accuracy", ".exact_match")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewTaskCriteria(_Strict):
    min_score: float | None = Field(
        None, description="Least headline score of the task, scored after the version trained."
    )
    min_metric: dict[str, float] = Field(
        default_factory=dict,
        description="Least value per metric `evaluate` records (`vqa_closed.accuracy: 0.6`).",
    )


class TaskCriteria(NewTaskCriteria):
    min_kept: float | None = Field(
        None,
        gt=0,
        description="Earlier task: least share of its score kept, score now / score right after "
        "the version that trained it (0.95: at most 5 % of it lost).",
    )
    max_drop: float | None = Field(
        None,
        ge=0,
        description="Earlier task: largest drop of its headline score since the version that "
        "trained it.",
    )
    max_records_lost: dict[str, int] = Field(
        default_factory=dict,
        description="Earlier task: per share-of-records metric (`*.accuracy`, `*.exact_match`), "
        "the most records answered right after it was trained and wrong now, on the same "
        "records.",
    )

    @field_validator("max_records_lost")
    @classmethod
    def _share_metrics(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [m for m in value if not m.endswith(SHARE_METRICS)]
        if bad:
            raise ValueError(
                f"max_records_lost counts records from a share of records: {', '.join(bad)} is not "
                f"one (use a metric ending in {' or '.join(SHARE_METRICS)}, e.g. "
                "vqa_closed.accuracy)"
            )
        if any(v < 0 for v in value.values()):
            raise ValueError("max_records_lost takes counts >= 0")
        return value


class AcceptanceConfig(_Strict):
    new_task: NewTaskCriteria | None = Field(
        None, description="Criteria on the task(s) the version trained."
    )
    earlier_tasks: TaskCriteria | None = Field(
        None, description="Criteria on every task an earlier version of the lineage trained."
    )
    tasks: dict[str, TaskCriteria] = Field(
        default_factory=dict,
        description="Criteria on one task by name (new or earlier), in addition to the above.",
    )
    notes: list[str] = Field(
        default_factory=list,
        description="Known limits and risks of the model, stated in advance; `medqwen report` "
        "prints them.",
    )

    def in_force(self) -> bool:
        """Whether any criterion is set (notes alone judge nothing)."""
        return any(
            c is not None and any(v not in (None, {}) for v in c.model_dump().values())
            for c in (self.new_task, self.earlier_tasks, *self.tasks.values())
        )
