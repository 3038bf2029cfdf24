"""The plain-transformers snippet of docs/merge.md, run as written on a routed export: its greedy
answer equals `medqwen predict` on the bundle (the routed export is exact), so the doc cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image

from medqwen_cli.bundle import Bundle

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "recipes/debug/tiny.yaml")
SECTION = "## Answering with an export in plain transformers"


def _doc_snippet() -> str:
    text = (REPO / "docs/merge.md").read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_doc_snippet_answers_as_predict_does(tmp_path: Path) -> None:
    from medqwen_cli.evaluation.predict import predict
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.merge.export import merge_bundle
    from medqwen_cli.recipe import load_recipe

    root = tmp_path / "bundle"
    init_experts(load_recipe(TINY), root)
    bundle = Bundle.open(root)
    g = torch.Generator().manual_seed(1)
    adapter = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in bundle.read_adapter().items()}  # fmt: skip
    bundle.append_version(adapter, command="test", tasks=["xray"], recipe=bundle.manifest.recipe)
    export = tmp_path / "export"
    merge_bundle(root, export, evaluate=False)
    # 112 x 112: within the recipe's max_image_pixels and a multiple of 28, so medqwen and the
    # export's image processor see the same pixels
    image = tmp_path / "scan.png"
    Image.new("RGB", (112, 112), (90, 140, 60)).save(image)
    question = "Is there a nodule in the right upper lobe?"

    expected = predict(root, image=image, question=question, max_new_tokens=8).answers[0]
    namespace: dict = {}
    exec(compile(_doc_snippet(), "docs/merge.md", "exec"), namespace)
    got = namespace["answer"](str(export), str(image), question, max_new_tokens=8)
    assert expected.scoring == "generate" and expected.prediction  # a non-trivial answer
    assert got == expected.prediction
