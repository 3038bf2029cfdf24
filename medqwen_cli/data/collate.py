"""Batches of Records for Qwen2-VL / Qwen2.5-VL, through the model's processor and chat template.

One sample is the chat `[user: <image>... question] [assistant: answer]`, rendered by the
processor's own chat template, so the model sees exactly the format it was tuned on:

    <|im_start|>system ...<|im_end|> <|im_start|>user <|vision_start|><|image_pad|>*N<|vision_end|>
    QUESTION<|im_end|> <|im_start|>assistant ANSWER<|im_end|> \\n
    |------------------- prefix (images) --------| question |---- suffix -----| answer | eot | tail

The template is rendered once per image count with sentinel strings, and split into prefix,
suffix, answer prefix and answer suffix; each piece is tokenized on its own (the pieces meet at
special tokens, so this equals tokenizing the whole). That gives:

- `labels` = -100 everywhere except the answer tokens and the end-of-turn token right after
  them (the first token of the template's answer suffix, e.g. <|im_end|>; the tokenizer's EOS
  when the template has none);
- `mm_token_type_ids` (0 text, 1 image) whenever the batch has images, as Qwen2-VL requires;
- images resized to at most `max_image_pixels`, both sides a multiple of patch x merge size
  (28 px), aspect kept (the same rule as the image processor, applied before it);
- the cap `max_length`: only the question's tokens are cut (from the left by default, keeping
  the end of the question next to the answer); image tokens, the template and the answer are
  never cut, and a record that cannot fit even with one question token left is a `DataError`
  naming its file and line;
- right padding for training; `for_generation=True` drops the answer, ends with the assistant
  generation prompt and pads on the left, so generated tokens start at `input_ids.shape[1]`.

Returns a dict of tensors: input_ids, attention_mask, labels (training), mm_token_type_ids,
pixel_values and image_grid_thw (when images are present).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from medqwen_cli.data.records import Record
from medqwen_cli.errors import DataError

IGNORE_INDEX = -100
_QUESTION = "MEDQWENQUESTIONSLOT"
_ANSWER = "MEDQWENANSWERSLOT"


@dataclass(frozen=True)
class _Template:
    prefix: str  # everything before the question (images included)
    suffix: str  # after the question, through the assistant generation prompt
    answer_prefix: str  # between the generation prompt and the answer (usually empty)
    answer_suffix: str  # after the answer: end-of-turn and whatever follows


@dataclass
class Encoded:
    """One tokenized sample (before padding)."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None


@dataclass
class Collator:
    """`collator(records) -> dict of tensors` (see the module docstring)."""

    processor: Any
    max_image_pixels: int = 224 * 224
    max_length: int = 2048
    for_generation: bool = False
    truncation_side: Literal["left", "right"] = "left"
    system_prompt: str | None = None
    _templates: dict[int, _Template] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.tokenizer = self.processor.tokenizer
        image_processor = getattr(self.processor, "image_processor", None)
        patch = int(getattr(image_processor, "patch_size", 14) or 14)
        merge = int(getattr(image_processor, "merge_size", 2) or 2)
        self.factor = patch * merge
        size = getattr(image_processor, "size", None) or {}
        self.min_pixels = int(size.get("shortest_edge") or size.get("min_pixels") or 56 * 56)
        self.image_token_id = _image_token_id(self.processor)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)

    # ------------------------------------------------------------------ public

    def __call__(self, records: Sequence[Record]) -> dict[str, torch.Tensor]:
        if not records:
            raise ValueError("cannot collate an empty batch")
        return self.pad([self.encode(r) for r in records])

    def encode(self, record: Record) -> Encoded:
        """Tokenize one record (images included), with labels and the length cap applied."""
        images = [
            load_image(
                path,
                max_pixels=self.max_image_pixels,
                factor=self.factor,
                min_pixels=self.min_pixels,
                where=record.where,
            )
            for path in record.images
        ]
        template = self._template(len(images))
        if images:
            out = self.processor(text=[template.prefix], images=images, return_tensors="pt")
            prefix = out["input_ids"][0].tolist()
            pixel_values, grid = out["pixel_values"], out["image_grid_thw"]
        else:
            prefix = self._tokens(template.prefix, special=True)
            pixel_values = grid = None
        question = self._tokens(record.question, user=True)
        suffix = self._tokens(template.suffix)
        if self.for_generation:
            answer, end, tail = [], [], []
        else:
            answer = self._tokens(template.answer_prefix) + self._tokens(record.answer, user=True)
            after = self._tokens(template.answer_suffix)
            if not after:
                eos = self.tokenizer.eos_token_id
                after = [int(eos)] if eos is not None else []
            end, tail = after[:1], after[1:]
        fixed = len(prefix) + len(suffix) + len(answer) + len(end) + len(tail)
        budget = self.max_length - fixed
        if len(question) > budget:
            if budget < 1:
                n_image = sum(1 for t in prefix if t == self.image_token_id)
                raise DataError(
                    f"{record.where}: record does not fit max_length={self.max_length}: "
                    f"{fixed} tokens without the question ({n_image} image tokens, "
                    f"{len(answer)} answer tokens)",
                    "raise train.max_length, or lower train.max_image_pixels to use fewer "
                    "image tokens",
                )
            question = question[-budget:] if self.truncation_side == "left" else question[:budget]
        prompt = prefix + question + suffix
        input_ids = prompt + answer + end + tail
        labels = [IGNORE_INDEX] * len(prompt) + answer + end + [IGNORE_INDEX] * len(tail)
        return Encoded(input_ids, labels, pixel_values, grid)

    def pad(self, samples: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        """Pad a list of encoded samples into a batch (left for generation, else right)."""
        length = max(len(s.input_ids) for s in samples)
        ids = torch.full((len(samples), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample.input_ids)
            span = slice(length - n, length) if self.for_generation else slice(0, n)
            ids[row, span] = torch.tensor(sample.input_ids, dtype=torch.long)
            labels[row, span] = torch.tensor(sample.labels, dtype=torch.long)
            mask[row, span] = 1
        batch: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
        if not self.for_generation:
            batch["labels"] = labels
        with_images = [s for s in samples if s.pixel_values is not None]
        if with_images:
            # (B, L): 1 on image placeholder tokens; padding is text (0)
            batch["mm_token_type_ids"] = ((ids == self.image_token_id) & (mask == 1)).long()
            batch["pixel_values"] = torch.cat([s.pixel_values for s in with_images], dim=0)
            batch["image_grid_thw"] = torch.cat([s.image_grid_thw for s in with_images], dim=0)
        return batch

    # ------------------------------------------------------------------ template

    def _template(self, n_images: int) -> _Template:
        if n_images not in self._templates:
            self._templates[n_images] = self._render(n_images)
        return self._templates[n_images]

    def _render(self, n_images: int) -> _Template:
        content: list[dict[str, str]] = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": _QUESTION})
        messages: list[dict[str, Any]] = []
        if self.system_prompt is not None:
            messages.append(
                {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}
            )
        messages.append({"role": "user", "content": content})
        prompt = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        full = self.processor.apply_chat_template(
            [*messages, {"role": "assistant", "content": [{"type": "text", "text": _ANSWER}]}],
            tokenize=False,
        )
        if prompt.count(_QUESTION) != 1 or not full.startswith(prompt) or full.count(_ANSWER) != 1:
            raise DataError(
                "the processor's chat template cannot be split into prompt and answer "
                "(the rendered prompt is not a prefix of the rendered conversation)",
                "use a Qwen2-VL style chat template (see medqwen_cli.modeling)",
            )
        prefix, suffix = prompt.split(_QUESTION)
        answer_prefix, answer_suffix = full[len(prompt) :].split(_ANSWER)
        return _Template(prefix, suffix, answer_prefix, answer_suffix)

    def _tokens(self, text: str, *, special: bool = False, user: bool = False) -> list[int]:
        """Token ids of `text`; `user` text never yields special tokens (a question that
        contains "<|image_pad|>" must not forge image placeholders)."""
        if not text:
            return []
        kwargs = {"split_special_tokens": True} if user else {}
        return list(self.tokenizer(text, add_special_tokens=special, **kwargs)["input_ids"])


def _image_token_id(processor: Any) -> int:
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None:
        token = getattr(processor, "image_token", "<|image_pad|>")
        token_id = processor.tokenizer.convert_tokens_to_ids(token)
    return int(token_id)


# --------------------------------------------------------------------------- images


def fit_size(
    height: int, width: int, *, max_pixels: int, factor: int = 28, min_pixels: int = 56 * 56
) -> tuple[int, int]:
    """(height, width): multiples of `factor`, area within [min_pixels, max_pixels], aspect
    kept (Qwen2-VL's smart_resize rule)."""
    if max(height, width) / max(1, min(height, width)) > 200:
        raise ValueError("aspect ratio above 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def load_image(
    path: str,
    *,
    max_pixels: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    where: str = "",
) -> Image.Image:
    """An RGB PIL image resized by `fit_size`; DataError naming `where` if it cannot be read."""
    try:
        with Image.open(path) as handle:
            image = ImageOps.exif_transpose(handle)
            image = _to_rgb(image)
    except (FileNotFoundError, UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"{where}: image unreadable or corrupt ({type(exc).__name__}): {path}",
            "re-export the image as PNG or JPEG; check that the file is complete",
        ) from None
    try:
        height, width = fit_size(
            image.height, image.width, max_pixels=max_pixels, factor=factor, min_pixels=min_pixels
        )
    except ValueError:
        raise DataError(
            f"{where}: image {image.width}x{image.height} is too elongated (aspect ratio > 200): "
            f"{path}",
            "crop or pad the image",
        ) from None
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), Image.BICUBIC)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float greyscale
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), "L")
    return image.convert("RGB")
