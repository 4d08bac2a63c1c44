"""Chat prompts for the instruct stage: system prompt + a seeded few-shot sample + the caption.

Each row gets its own few-shot sample, drawn with a seed derived from (config seed, row id, attempt):
different rows see different examples (diversity of edits across the data set), while re-running the
same input with the same config reproduces every prompt byte for byte (determinism, resumability).
The system prompt is followed by the edit-type taxonomy (prompts/taxonomy.py). A row asked for a type
(`instruct.type_weights`) says so in its user turn ("Edit type: ..."), as every few-shot turn then does
for its own type, and its sample holds at least one example of that type. With `instruct.inverse`, the
system prompt ends with what `inverse_instruction` is, the few-shot examples are those that carry one
(the optional `inverse_instruction` of prompts/fewshot.jsonl) and their answers hold it, as the schema's.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from editgen.prompts.schema import INVERSE_FIELD
from editgen.prompts.taxonomy import BY_NAME, NAMES, prompt_section

REQUIRED_KEYS = ("caption", "instruction", "edited_caption", "edit_type")
#: Appended to the system prompt with `instruct.inverse` (rule 7 then names four keys).
INVERSE_SECTION = (
    'Inverse edit: also reply with "inverse_instruction": the instruction that undoes your edit, as a person '
    "would type it. Applied to the edited image it must give the input image back: \"make the car blue\" on a "
    'red car is undone by "make the car red", "add a hat" by "remove the hat", "remove the cookies" by "add '
    'cookies". It must differ from "instruction". Reply with exactly the keys "edit_type", "instruction", '
    '"edited_caption" and "inverse_instruction".'
)


@dataclass(frozen=True)
class LLMRequest:
    """One row's request: its chat messages, its sampling seed (the caption for rule backends) and the
    edit type it asks for (None: the model's choice). The messages stay out of repr: a judge's carry
    whole images as data URIs, and a logged request must not."""

    row_id: str
    caption: str
    messages: list[dict[str, Any]] = field(repr=False)
    seed: int
    edit_type: str | None = None


@dataclass(frozen=True)
class FewShot:
    """One hand-written example: its edit type (a taxonomy name) and its family, the group sampling spreads
    over (the type unless the line names another, such as keep_names)."""

    caption: str
    instruction: str
    edited_caption: str
    edit_type: str
    family: str
    inverse_instruction: str | None = None


def _bundled(name: str) -> str:
    return (importlib_resources.files("editgen.prompts") / name).read_text(encoding="utf-8")


def model_edit_neutral_prompts() -> list[str]:
    """The neutral prompts every model-edit report renders (prompts/model_edit_neutral.txt, one a line)."""
    return [line.strip() for line in _bundled("model_edit_neutral.txt").splitlines() if line.strip()]


def load_system_prompt(path: str | None = None) -> str:
    """The system prompt: `path`, or the bundled prompts/system.txt."""
    text = Path(path).read_text(encoding="utf-8") if path else _bundled("system.txt")
    return text.strip()


@lru_cache(maxsize=8)
def load_fewshot(path: str | None = None) -> tuple[FewShot, ...]:
    """The few-shot triplets (JSON lines); a malformed line raises naming its line number."""
    text = Path(path).read_text(encoding="utf-8") if path else _bundled("fewshot.jsonl")
    origin = path or "prompts/fewshot.jsonl"
    out: list[FewShot] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{origin}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{origin}:{lineno}: expected a JSON object")
        missing = [k for k in REQUIRED_KEYS if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if missing:
            raise ValueError(f"{origin}:{lineno}: missing or empty {', '.join(missing)}")
        if obj["edit_type"] not in BY_NAME:
            raise ValueError(f"{origin}:{lineno}: edit_type {obj['edit_type']!r} is not one of {', '.join(NAMES)}")
        family = obj.get("family") if isinstance(obj.get("family"), str) and obj["family"].strip() else None
        inverse = obj.get(INVERSE_FIELD)
        if inverse is not None and (not isinstance(inverse, str) or not inverse.strip()):
            raise ValueError(f"{origin}:{lineno}: {INVERSE_FIELD} is not a non-empty string")
        out.append(FewShot(**{k: obj[k] for k in REQUIRED_KEYS}, family=family or obj["edit_type"],
                           inverse_instruction=inverse))
    return tuple(out)


def row_seed(row_id: str, seed: int, attempt: int = 0) -> int:
    """A 31-bit seed from (config seed, row id, attempt): stable across runs, machines and batching."""
    digest = hashlib.sha256(f"{seed}\x1f{row_id}\x1f{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFFFFFF


def group_by_family(examples: tuple[FewShot, ...]) -> dict[str, list[FewShot]]:
    groups: dict[str, list[FewShot]] = {}
    for ex in examples:
        groups.setdefault(ex.family, []).append(ex)
    return dict(sorted(groups.items()))


def sample_fewshot(
    examples: tuple[FewShot, ...], k: int, rng: random.Random, groups: dict[str, list[FewShot]] | None = None
) -> list[FewShot]:
    """k examples spread over families (round-robin over shuffled families), in a shuffled order."""
    if k <= 0 or not examples:
        return []
    groups = groups if groups is not None else group_by_family(examples)
    families = list(groups)
    rng.shuffle(families)
    need = dict.fromkeys(families, 0)
    left, total = min(k, len(examples)), 0
    while total < left:
        for fam in families:
            if need[fam] < len(groups[fam]) and total < left:
                need[fam] += 1
                total += 1
    picked = [ex for fam in families if need[fam] for ex in rng.sample(groups[fam], need[fam])]
    rng.shuffle(picked)
    return picked


def user_message(caption: str, edit_type: str | None = None) -> str:
    """The user turn: the caption, and the type asked for when there is one."""
    return f"Caption: {caption}" if edit_type is None else f"Caption: {caption}\nEdit type: {edit_type}"


def assistant_message(instruction: str, edited_caption: str, edit_type: str, inverse: str | None = None) -> str:
    """An answer as the schema has it (prompts/schema.py: edit_type first, inverse_instruction last)."""
    answer = {"edit_type": edit_type, "instruction": instruction, "edited_caption": edited_caption}
    if inverse is not None:
        answer[INVERSE_FIELD] = inverse
    return json.dumps(answer, ensure_ascii=False)


def build_messages(
    system: str, shots: list[FewShot], caption: str, edit_type: str | None = None, inverse: bool = False
) -> list[dict[str, Any]]:
    """System turn, one user/assistant pair per few-shot example, then the caption to edit. With a
    requested `edit_type`, every user turn names its type (the examples' own), so the model sees the
    request followed; with `inverse`, every answer holds its inverse instruction."""
    asked = edit_type is not None
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for ex in shots:
        messages.append({"role": "user", "content": user_message(ex.caption, ex.edit_type if asked else None)})
        messages.append(
            {"role": "assistant", "content": assistant_message(
                ex.instruction, ex.edited_caption, ex.edit_type, ex.inverse_instruction if inverse else None)}
        )
    messages.append({"role": "user", "content": user_message(caption, edit_type)})
    return messages


def with_type_example(
    shots: list[FewShot], examples: tuple[FewShot, ...], edit_type: str, rng: random.Random
) -> list[FewShot]:
    """`shots` holding at least one example of `edit_type` (one shot swapped for one, at random)."""
    if not shots or any(s.edit_type == edit_type for s in shots):
        return shots
    of_type = [ex for ex in examples if ex.edit_type == edit_type and ex not in shots]
    if not of_type:
        return shots
    out = list(shots)
    out[rng.randrange(len(out))] = rng.choice(of_type)
    return out


class PromptBuilder:
    """Builds the per-row request; holds the loaded prompt files so a worker reads them once."""

    def __init__(
        self,
        seed: int = 0,
        k: int = 8,
        system_prompt_file: str | None = None,
        fewshot_file: str | None = None,
        inverse: bool = False,
    ) -> None:
        self.seed = seed
        self.k = k
        self.inverse = inverse
        self.system = load_system_prompt(system_prompt_file) + "\n\n" + prompt_section()
        self.examples = load_fewshot(fewshot_file)
        if inverse:  # only examples that show an inverse (a file without any: zero-shot would be a silent change)
            self.system += "\n\n" + INVERSE_SECTION
            self.examples = tuple(ex for ex in self.examples if ex.inverse_instruction)
            if k > 0 and not self.examples:
                raise ValueError(f"{fewshot_file or 'prompts/fewshot.jsonl'}: instruct.inverse needs few-shot "
                                 f"examples with {INVERSE_FIELD} (or instruct.fewshot_k=0)")
        self.groups = group_by_family(self.examples)

    def request(
        self, row_id: str, caption: str, attempt: int = 0, with_messages: bool = True, edit_type: str | None = None
    ) -> LLMRequest:
        """The row's request, asking for `edit_type` when given; `with_messages=False` skips prompt text for
        backends that ignore it."""
        s = row_seed(row_id, self.seed, attempt)
        if not with_messages:
            return LLMRequest(row_id=row_id, caption=caption, messages=[], seed=s, edit_type=edit_type)
        rng = random.Random(s)
        shots = sample_fewshot(self.examples, self.k, rng, self.groups)
        if edit_type is not None:
            shots = with_type_example(shots, self.examples, edit_type, rng)
        messages = build_messages(self.system, shots, caption, edit_type, self.inverse)
        return LLMRequest(row_id=row_id, caption=caption, messages=messages, seed=s, edit_type=edit_type)
