"""Chat-style datasets: LLaVA / ShareGPT `conversations` and OpenAI-style `messages`.

LLaVA / ShareGPT item::

    {"id": "x", "image": "a.png" | "images": [...],
     "conversations": [{"from": "human", "value": "<image>\\nQuestion"},
                       {"from": "gpt", "value": "Answer"}, ...]}

OpenAI-style item::

    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": [{"type": "image", "image": "a.png"},
                                               {"type": "text", "text": "Question"}]},
                  {"role": "assistant", "content": "Answer"}],
     "images": [...]}   # optional, for string contents with <image> placeholders

Each (user, assistant) pair becomes one Record with every image of the conversation (ids
`<id>#<k>` when there are several pairs); `<image>` placeholders are removed from the question
and must match the number of images when present. System turns are dropped (a Record has no
system prompt; the collator uses the model's default). Type: the item's `type`, else yes/no
answers are vqa_closed and everything else vqa_open, unless the dataset forces a type.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from medqwen_cli.data.records import Record, data_error, make_record

PLACEHOLDER = re.compile(r"<image>\s*")
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant", "bot", "model")


def chat_item(
    obj: Any,
    *,
    layout: Literal["llava", "messages"],
    path: Path,
    line: int,
    resolve: Callable[[Any, str], list[str]],
    default_type: str | None,
    default_id: str,
) -> list[Record]:
    """The Records of one chat item in either layout: only the turns are read differently."""
    where = f"{path}:{line}"
    turns, raw_images = _TURNS[layout](obj, where)
    images = resolve(raw_images, where)
    return _pairs(
        obj, turns, images, path=path, line=line, default_type=default_type, default_id=default_id
    )


def _llava_turns(obj: Any, where: str) -> tuple[list[tuple[str, Any]], Any]:
    """(role, value) turns and the unresolved image field of a LLaVA / ShareGPT item."""
    if not isinstance(obj, dict) or not isinstance(obj.get("conversations"), list):
        raise data_error(where, "expected an object with a 'conversations' list (LLaVA format)")
    turns = []
    for k, turn in enumerate(obj["conversations"]):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise data_error(where, f"conversations[{k}] needs 'from' and 'value'")
        turns.append((str(turn["from"]).lower(), turn["value"]))
    return turns, obj.get("images", obj.get("image"))


def _messages_turns(obj: Any, where: str) -> tuple[list[tuple[str, Any]], Any]:
    """(role, text) turns and the unresolved images of an OpenAI-style item: its image parts,
    else its `images` field."""
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise data_error(where, "expected an object with a 'messages' list")
    turns: list[tuple[str, Any]] = []
    part_images: list[str] = []
    for k, message in enumerate(obj["messages"]):
        if not isinstance(message, dict) or "role" not in message:
            raise data_error(where, f"messages[{k}] needs 'role' and 'content'")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict):
                    raise data_error(where, f"messages[{k}].content parts must be objects")
                kind = part.get("type")
                if kind == "text" or (kind is None and "text" in part):
                    texts.append(str(part.get("text") or ""))
                elif kind in ("image", "image_url") or "image" in part:
                    ref = part.get("image") or part.get("path") or part.get("image_url")
                    if isinstance(ref, dict):
                        ref = ref.get("url")
                    if isinstance(ref, str) and ref.startswith("file://"):
                        ref = ref[len("file://") :]
                    if not isinstance(ref, str) or not ref:
                        raise data_error(where, f"messages[{k}] has an image part without a path")
                    part_images.append(ref)
                else:
                    raise data_error(where, f"messages[{k}] has a content part of unknown type")
            content = "".join(texts)
        turns.append((str(message["role"]).lower(), content))
    return turns, part_images or obj.get("images", obj.get("image"))


_TURNS = {"llava": _llava_turns, "messages": _messages_turns}


def _pairs(
    obj: dict[str, Any],
    turns: list[tuple[str, Any]],
    images: list[str],
    *,
    path: Path,
    line: int,
    default_type: str | None,
    default_id: str,
) -> list[Record]:
    where = f"{path}:{line}"
    turns = [t for t in turns if t[0] != "system"]
    placeholders = sum(
        len(PLACEHOLDER.findall(str(value))) for role, value in turns if role in USER_ROLES
    )
    if placeholders and placeholders != len(images):
        raise data_error(
            where,
            f"{placeholders} <image> placeholders but {len(images)} images",
            "give one image path per <image> placeholder",
        )
    records = []
    pairs = []
    k = 0
    while k < len(turns):
        role, value = turns[k]
        if role not in USER_ROLES:
            raise data_error(where, f"turn {k + 1} has role {role[:20]!r} where a user turn is due")
        if k + 1 >= len(turns) or turns[k + 1][0] not in ASSISTANT_ROLES:
            raise data_error(
                where,
                f"turn {k + 1} (user) has no assistant answer after it: field 'answer' missing",
                "every user turn needs an assistant turn with the answer",
            )
        pairs.append((value, turns[k + 1][1]))
        k += 2
    if not pairs:
        raise data_error(where, "no user/assistant turns: field 'answer' missing")
    base_id = obj.get("id")
    base = str(base_id) if base_id is not None else default_id
    for number, (question, answer) in enumerate(pairs):
        question_text = (
            PLACEHOLDER.sub("", question).strip() if isinstance(question, str) else question
        )
        record_id = base if len(pairs) == 1 else f"{base}#{number}"
        records.append(
            make_record(
                where_file=str(path),
                line=line,
                record_id=record_id,
                task_type=obj.get("type"),
                question=question_text,
                answer=answer,
                images=images,
                default_type=default_type,
            )
        )
    return records
