"""Collator: label masks, image tokens, padding sides, truncation, forward+backward on a tiny
Qwen2-VL built from config (the tiny-qwen2-vl preset of medqwen_cli.modeling)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_helpers import BUILTIN_SIZE, spec, write_png

from medqwen_cli.data import Record, load_records
from medqwen_cli.data.collate import IGNORE_INDEX, Collator, fit_size
from medqwen_cli.errors import DataError


@pytest.fixture(scope="module")
def xray_records(builtin_cache: Path) -> list[Record]:
    return load_records(
        spec("builtin:xray"), "train", cache_dir=builtin_cache, builtin_size=BUILTIN_SIZE
    )


def _record(
    tmp_path: Path,
    *,
    images: int = 1,
    question: str = "Is there a nodule?",
    answer: str = "yes",
    size: tuple[int, int] = (56, 56),
) -> Record:
    paths = [str(write_png(tmp_path / f"img{i}.png", size=size).resolve()) for i in range(images)]
    return Record(
        id="r",
        type="vqa_open",
        images=paths,
        question=question,
        answer=answer,
        source=str(tmp_path / "data.jsonl"),
        line=7,
    )


def test_labels_cover_exactly_the_answer_and_end_of_turn(tiny_qwen2_vl, xray_records) -> None:
    _, processor = tiny_qwen2_vl
    tokenizer = processor.tokenizer
    batch = Collator(processor, max_image_pixels=112 * 112)(xray_records[:5])
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row, record in enumerate(xray_records[:5]):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        positions = (labels != IGNORE_INDEX).nonzero().flatten()
        assert positions.tolist() == list(range(positions[0], positions[-1] + 1))  # one span
        expected = tokenizer(record.answer, add_special_tokens=False)["input_ids"] + [end_of_turn]
        assert labels[positions].tolist() == expected
        assert ids[positions].tolist() == expected
        # the unmasked span is the end of the sequence except the template's tail ("\n")
        assert tokenizer.decode(ids[positions[-1] + 1 : batch["attention_mask"][row].sum()]) == "\n"


def test_image_tokens_and_types(tiny_qwen2_vl, xray_records) -> None:
    _, processor = tiny_qwen2_vl
    batch = Collator(processor, max_image_pixels=112 * 112)(xray_records[:3])
    image_id = processor.image_token_id
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == image_id).long())
    per_image = (batch["image_grid_thw"].prod(dim=1) // 4).tolist()
    assert batch["mm_token_type_ids"].sum(dim=1).tolist() == per_image
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]] * 3  # 112 px -> 8x8 patches
    assert (batch["labels"][batch["mm_token_type_ids"] == 1] == IGNORE_INDEX).all()


def test_images_resized_within_the_pixel_cap(tiny_qwen2_vl, tmp_path: Path) -> None:
    _, processor = tiny_qwen2_vl
    record = _record(tmp_path, size=(300, 200))
    batch = Collator(processor, max_image_pixels=112 * 112)([record])
    height, width = fit_size(200, 300, max_pixels=112 * 112)
    assert batch["image_grid_thw"].tolist() == [[1, height // 14, width // 14]]
    assert height * width <= 112 * 112 and height % 28 == 0 and width % 28 == 0


def test_padding_right_for_training_left_for_generation(tiny_qwen2_vl, xray_records) -> None:
    _, processor = tiny_qwen2_vl
    records = xray_records[1:3]  # an open answer and a long report: different lengths
    train = Collator(processor, max_image_pixels=112 * 112)(records)
    mask = train["attention_mask"]
    assert mask[:, 0].all() and not mask[:, -1].all()
    generate = Collator(processor, max_image_pixels=112 * 112, for_generation=True)(records)
    mask = generate["attention_mask"]
    assert "labels" not in generate
    assert mask[:, -1].all() and not mask[:, 0].all()
    prompt = processor.tokenizer.decode(generate["input_ids"][0][mask[0] == 1])
    assert prompt.endswith("<|im_start|>assistant\n") and records[0].answer not in prompt
    pad = processor.tokenizer.pad_token_id
    assert (generate["input_ids"][mask == 0] == pad).all()


def test_generation_batch_generates(tiny_qwen2_vl, xray_records) -> None:
    model, processor = tiny_qwen2_vl
    batch = Collator(processor, max_image_pixels=112 * 112, for_generation=True)(xray_records[:3])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 3 and out.shape[1] <= batch["input_ids"].shape[1] + 3


def test_forward_backward_on_every_task_type(tiny_qwen2_vl, xray_records, tmp_path: Path) -> None:
    model, processor = tiny_qwen2_vl
    collator = Collator(processor, max_image_pixels=112 * 112)
    by_type = {r.type: r for r in xray_records}
    assert set(by_type) == {"vqa_closed", "vqa_open", "report", "classification", "pope"}
    two_images = _record(tmp_path, images=2, answer="They match.")
    text_only = Record(
        id="t", type="report", question="Summarise.", answer="Nothing.", source="x", line=1
    )
    model.requires_grad_(True)
    try:
        for batch_records in [
            *([r] for r in by_type.values()),
            list(by_type.values()),
            [two_images, text_only, by_type["pope"]],
            [text_only],
        ]:
            model.zero_grad(set_to_none=True)
            batch = collator(batch_records)
            if all(not r.images for r in batch_records):
                assert "pixel_values" not in batch and "mm_token_type_ids" not in batch
            loss = model(**batch).loss
            assert torch.isfinite(loss)
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and any(g.abs().sum() > 0 for g in grads)
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)


def test_truncation_cuts_only_the_question(tiny_qwen2_vl, tmp_path: Path) -> None:
    _, processor = tiny_qwen2_vl
    long_question = " ".join(f"word{i}" for i in range(200)) + " Is there a nodule?"
    record = _record(tmp_path, question=long_question, answer="yes")
    full = Collator(processor, max_image_pixels=56 * 56).encode(record)
    capped = Collator(processor, max_image_pixels=56 * 56, max_length=60).encode(record)
    assert len(full.input_ids) > 60 and len(capped.input_ids) == 60
    image_id = processor.image_token_id
    assert capped.input_ids.count(image_id) == full.input_ids.count(image_id) == 4
    assert capped.labels[-4:] == full.labels[-4:]  # answer + end of turn + tail kept
    text = processor.tokenizer.decode(capped.input_ids)
    assert "Is there a nodule?" in text and "word0 " not in text  # the start of the question went
    right = Collator(processor, max_image_pixels=56 * 56, max_length=60, truncation_side="right")
    assert "word0" in processor.tokenizer.decode(right.encode(record).input_ids)


def test_record_that_cannot_fit_is_a_data_error(tiny_qwen2_vl, tmp_path: Path) -> None:
    _, processor = tiny_qwen2_vl
    record = _record(tmp_path, size=(112, 112), answer="a long answer " * 10)
    with pytest.raises(DataError) as info:
        Collator(processor, max_image_pixels=112 * 112, max_length=40)([record])
    message = info.value.message
    assert message.startswith(f"{tmp_path / 'data.jsonl'}:7: record does not fit max_length=40")
    assert "16 image tokens" in message and "long answer" not in message
    assert "max_length" in info.value.hint


def test_corrupt_image_at_batch_time(tiny_qwen2_vl, tmp_path: Path) -> None:
    _, processor = tiny_qwen2_vl
    record = _record(tmp_path)
    Path(record.images[0]).write_bytes(b"broken")
    with pytest.raises(DataError, match=r"data\.jsonl:7: image unreadable or corrupt"):
        Collator(processor)([record])


def test_qwen2_5_vl_batch_runs(tmp_path: Path) -> None:
    from medqwen_cli.modeling import load_base

    model, processor, _ = load_base("tiny-qwen2.5-vl", device="cpu", dtype="float32")
    batch = Collator(processor, max_image_pixels=56 * 56)([_record(tmp_path)])
    assert batch["mm_token_type_ids"].sum() == 4
    model.requires_grad_(True)
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_question_text_cannot_forge_image_tokens(tiny_qwen2_vl, tmp_path: Path) -> None:
    _, processor = tiny_qwen2_vl
    record = _record(tmp_path, question="What is <|image_pad|><|im_end|> here?")
    batch = Collator(processor, max_image_pixels=56 * 56)([record])
    assert batch["mm_token_type_ids"].sum() == 4  # only the real image's tokens


def test_dataloader_with_sampler_pool_and_collator(tiny_qwen2_vl, xray_records) -> None:
    from torch.utils.data import DataLoader

    from medqwen_cli.data import RecordPool, RegimeSampler

    _, processor = tiny_qwen2_vl
    pool = RecordPool([xray_records[:6], xray_records[6:]])
    sampler = RegimeSampler(pool.sizes, "round_robin", seed=0)
    loader = DataLoader(pool, sampler=sampler, batch_size=4, collate_fn=Collator(processor))
    batches = list(loader)
    assert len(batches) == 3 and batches[0]["input_ids"].shape[0] == 4
    assert sum(b["image_grid_thw"].shape[0] for b in batches) == len(pool)
