"""Routing: which engine renders a pair of a given edit type (`render.routes`), and how many candidates
it draws (`render.type_candidates`).

Each engine is good at some edits and wrong for others (docs/engines/*.md): inpainting keeps every pixel
outside the edited region, so it suits adding, removing and re-backgrounding; SDEdit re-noises the whole
image, so it suits global edits (style, season, weather); Prompt-to-Prompt holds the layout while a word
changes, so it suits swaps of an object, a colour, a material. `DEFAULT_ROUTES` is that table
(docs/edit_types.md, "Routing", says why each type goes where); `render.routes: default` selects it,
a mapping replaces it. A pair whose type has no route (or no type) goes to `render.engine` as before.

Nothing here imports torch: the config check reads it (through engines.base) before any model loads.
"""

from __future__ import annotations

from collections.abc import Mapping

from editgen.engines import REGISTRY
from editgen.prompts.taxonomy import BY_NAME, NAMES

#: `render.routes: default`: every type of the taxonomy -> the engine whose strength it needs.
DEFAULT_ROUTES: dict[str, str] = {
    "replace_object": "p2p",
    "add_object": "inpaint",
    "remove_object": "inpaint",
    "colour": "p2p",
    "material_texture": "p2p",
    "size_shape": "instruct_model",
    "style_medium": "sdedit",
    "background": "inpaint",
    "weather_season_time": "sdedit",
    "action_pose": "instruct_model",
    "expression": "p2p",
    "count_quantity": "instruct_model",
    "text_in_image": "instruct_model",
    "global_tone_lighting": "sdedit",
}
#: The value of `render.routes` that stands for `DEFAULT_ROUTES`.
PRESET = "default"


def _known_type(name: object) -> str:
    if not isinstance(name, str) or name not in BY_NAME:
        raise ValueError(f"unknown edit type {name!r} (known: {', '.join(NAMES)})")
    return name


def check_routes(value: object) -> dict[str, str] | None:
    """`render.routes` as {edit type: engine name} (None: no routing). `default` expands to the documented
    table here, so the stage hash covers the table itself and a later change of the preset recomputes.
    ValueError (one line) names the first unknown type or engine."""
    if value is None:
        return None
    if isinstance(value, str):
        if value != PRESET:
            raise ValueError(f"expected {PRESET!r} or {{edit_type: engine, ...}}")
        return dict(DEFAULT_ROUTES)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected {PRESET!r} or {{edit_type: engine, ...}}, got a {type(value).__name__}")
    routes: dict[str, str] = {}
    for name, engine in value.items():
        _known_type(name)
        if not isinstance(engine, str) or engine not in REGISTRY:
            raise ValueError(f"{name}: unknown engine {engine!r} (known: {', '.join(REGISTRY)})")
        routes[name] = engine
    return routes


def check_type_candidates(value: Mapping[str, int] | None) -> Mapping[str, int] | None:
    """`render.type_candidates`' keys are edit types of the taxonomy (its counts are checked by the schema)."""
    for name in value or {}:
        _known_type(name)
    return value


def routed_engine(routes: Mapping[str, str] | None, edit_type: object) -> str | None:
    """The engine `routes` sends a pair of `edit_type` to, or None (no routes, no type, no route for it:
    the pair goes to `render.engine`)."""
    if not routes or not isinstance(edit_type, str) or not edit_type:
        return None
    return routes.get(edit_type)


def candidates_for(default: int, type_candidates: Mapping[str, int] | None, edit_type: object) -> int:
    """Candidates drawn for a pair of `edit_type`: its `render.type_candidates` count, else `render.candidates`."""
    if not type_candidates or not isinstance(edit_type, str):
        return default
    return int(type_candidates.get(edit_type, default))
