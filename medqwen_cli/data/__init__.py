"""Data: records (JSONL schema), readers for common medical formats, regimes, collate, synthetic.

    from medqwen_cli.data import load_records, RegimeSampler, RecordPool, generate_task
    from medqwen_cli.data.collate import Collator      # imports torch

`load_records(spec, split, cache_dir=...)` turns a `DatasetSpec` (a file, a directory or
`builtin:NAME`) into validated `Record`s; `RegimeSampler` mixes several datasets the way a
`RegimeConfig` says; `Collator(processor)` makes Qwen2-VL batches; `generate_task` writes a
built-in task. This package imports no torch (the collator does, on its own).
"""

from medqwen_cli.data.readers import DatasetLoad, detect_format, load_records, read_dataset
from medqwen_cli.data.records import TASK_TYPES, Record
from medqwen_cli.data.regimes import RecordPool, RegimeSampler
from medqwen_cli.data.synthetic import GENERATOR_VERSION, ensure_builtin, generate_task

__all__ = [
    "GENERATOR_VERSION",
    "TASK_TYPES",
    "DatasetLoad",
    "Record",
    "RecordPool",
    "RegimeSampler",
    "detect_format",
    "ensure_builtin",
    "generate_task",
    "load_records",
    "read_dataset",
]
