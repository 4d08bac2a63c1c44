"""The edit-engine interface, the registry lookups and the per-pair engine choice.

The render stage asks the engines chosen by `render.engine` and `render.routes` for everything: what they
need (the fetch stage is in the graph only when one needs a fetched image), each pair's candidate records,
a batch's renders, each candidate's UNet work. Regeneration (`engines.regenerate`) finds the engine from the
record's `format`. Nothing here imports torch: the config check and the stage graph use this module.
"""

from __future__ import annotations

import hashlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from editgen.engines import REGISTRY
from editgen.engines.record import CandidateRecord, Compute
from editgen.engines.routes import candidates_for, routed_engine
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.settings.render import RenderConfig

if TYPE_CHECKING:
    import pyarrow as pa

    from editgen.engines.runtime import Runtime


#: `EditEngine.sessions`: all turns drawn and rendered together, or each turn from the previous turn's image.
GROUP, CHAIN = "group", "chain"


@dataclass(frozen=True)
class EngineNeeds:
    """What an engine needs to render a pair under given settings."""

    generated_source: bool = False  # it renders the source image itself, from the candidate's seed
    real_image: bool = False  # each pair's fetched photograph (the fetch stage's `image` column)
    mask: bool = False  # an edit mask before any UNet work (pairs without a usable one are dropped)

    def __or__(self, other: EngineNeeds) -> EngineNeeds:
        return EngineNeeds(*(a or b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[bool, bool, bool]:
        return (self.generated_source, self.real_image, self.mask)


class PairRejected(ValueError):
    """A pair the engine will not render, with the drop reason the render stage records (e.g.
    `render_edit_truncated`): raised by `draw` or `check`, before any UNet work is spent on it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class SessionDraw:
    """A multi-turn session's draw (docs/sessions.md): the records of each turn of the prefix the engine
    can render (`turns[t - 1]` for turn t, candidates in order), and why the next turn was refused, if
    one was (`rejected`: the refused turn is `len(turns) + 1`; it and every later turn are dropped)."""

    turns: list[list[CandidateRecord]]
    rejected: PairRejected | None = None


@dataclass
class RenderedCandidate:
    """One rendered candidate: its record and its encoded images. `extra_row_steps` is UNet work done
    for it beyond its own render (a real image's inversion, charged to the first candidate that used
    it); `result` is the engine's raw result (latents, masks) for tests and tools."""

    record: CandidateRecord
    input_image: bytes
    edited_image: bytes
    image_format: str = "png"
    mask: bytes | None = None
    reconstruction: bytes | None = None
    extra_row_steps: float = 0.0
    result: object | None = None


class EditEngine(ABC):
    """One render method. Subclasses live in their own module under engines/ and are named in
    `engines.REGISTRY`; `name` is the registry key and the record's `format` prefix, `version` the
    record version (bump it when the same record would render differently)."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    #: How it renders multi-turn sessions (`instruct.turns` > 1, docs/sessions.md): GROUP (`draw_session`
    #: draws every turn at once, `session_group` keeps a chain's records in one render call), CHAIN (the
    #: render stage asks for turn t as a pair whose photograph is turn t-1's output), or None (it cannot).
    sessions: ClassVar[str | None] = None

    def __init__(self, runtime: Runtime, settings: RenderConfig) -> None:
        self.runtime = runtime
        self.settings = settings
        self.metrics: dict[str, float] = {}

    # ---- what the engine is (class level: no model, no torch) ----------------------------------
    @classmethod
    @abstractmethod
    def needs(cls, settings: RenderConfig) -> EngineNeeds:
        """What it needs under `settings` (the stage graph and the render stage read it)."""

    @classmethod
    def reconstructs(cls, settings: RenderConfig) -> bool:
        """Whether its candidates carry a `reconstruction` of a real input (the filter scores its fidelity)."""
        return False

    @classmethod
    def check_settings(cls, settings: RenderConfig) -> None:
        """Raise ValueError (one line) for render settings this engine cannot run with; runs when the
        config is validated, for each chosen engine."""
        return None

    @classmethod
    def check_sessions(cls, settings: RenderConfig) -> None:
        """Raise ValueError (one line) for render settings it cannot render sessions with (only asked
        when `instruct.turns` > 1 and the engine has `sessions`)."""
        return None

    @classmethod
    def preflight(cls, settings: RenderConfig) -> None:
        """On the driver, before any stage runs: what it will load exists and can be loaded (a class the
        installed library lacks, a model that cannot be reached); raise ConfigError (one line)."""
        return None

    # ---- once per actor, once per partition ----------------------------------------------------
    def setup(self) -> None:
        """Load what it renders with (through the shared runtime) and check it can; once per actor."""
        return None

    def begin(self, table: pa.Table) -> None:
        """A new partition: per-partition caches and metrics start empty."""
        if self.needs(self.settings).real_image and "image" not in table.column_names:
            raise ConfigError(f"render.engine {self.name} with render.source=real needs the fetch stage's `image` "
                              "column (run with --from fetch)")
        self.metrics = {}

    def partition_metrics(self) -> dict[str, float]:
        """This partition's engine-specific counters (summed over engines into the stage's metrics)."""
        return dict(self.metrics)

    # ---- per pair and per batch ----------------------------------------------------------------
    @abstractmethod
    def draw(self, row: Mapping[str, Any], n: int, start: int = 0) -> list[CandidateRecord]:
        """Records of candidates `start`.. of a pair (at least `n`, whole groups of `group_size`), their
        parameters drawn from a per-(pair, candidate) RNG so a redone partition draws the same. Raises
        PairRejected (its reason is recorded) or ValueError/KeyError (`render_invalid_pair`)."""

    def draw_session(self, rows: Sequence[Mapping[str, Any]], n: int) -> SessionDraw:
        """Records of candidates 0..n-1 of every turn of a session (`rows`: its turns in order, turn 1
        first), so that candidate c of turn t starts from candidate c of turn t-1's edited image."""
        raise NotImplementedError(f"render.engine {self.name} does not render multi-turn sessions")

    def session_group(self, record: CandidateRecord) -> object | None:
        """A key shared by the records that render as one unit with it (a session's turns of one
        candidate), or None; a render call gets whole units."""
        return None

    @abstractmethod
    def request(self, record: CandidateRecord) -> object:
        """The UNet batch request (the engine's own type) a record stands for."""

    def check(self, record: CandidateRecord) -> None:
        """Validate a record against the loaded model before rendering (PairRejected / ValueError)."""
        return None

    @abstractmethod
    def render(self, records: Sequence[CandidateRecord]) -> list[RenderedCandidate]:
        """Render records of this engine (whole groups), one output each, in input order."""

    @abstractmethod
    def regenerate(self, record: CandidateRecord, image: bytes | None = None,
                   image_format: str = "png") -> RenderedCandidate:
        """Render one stored record again, bit for bit on the same device/dtype, from the record alone
        (plus, where `needs().real_image`, the source photograph's bytes). Reads no settings."""

    @abstractmethod
    def row_steps(self, record: CandidateRecord) -> float:
        """UNet row-steps of this candidate's own render: rows x UNet evaluations (a group's shared rows
        divided among its members); work done once for several candidates comes as `extra_row_steps`."""

    @abstractmethod
    def flops_per_row(self, record: CandidateRecord) -> int:
        """UNet FLOPs of one row-step of this record's render (the runtime measures them per size)."""

    def compute(self, out: RenderedCandidate) -> Compute:
        """The candidate's UNet work (row-steps and FLOPs), stored in its record's `compute`."""
        return Compute.of(self.row_steps(out.record) + out.extra_row_steps, self.flops_per_row(out.record))

    def mode(self, record: CandidateRecord) -> str:
        """What the `render_mode` column says of a candidate (default: the engine's name)."""
        return self.name

    def group_size(self) -> int:
        """Records that render as one unit: a render call gets whole groups."""
        return 1

    def model_label(self) -> str:
        """What the `render_model` column says (default: `render.model` as configured)."""
        return self.runtime.label


def known_engines() -> tuple[str, ...]:
    return tuple(REGISTRY)


def engine_class(name: str) -> type[EditEngine]:
    """The engine class registered as `name`; ValueError naming the known ones otherwise."""
    target = REGISTRY.get(name)
    if target is None:
        raise ValueError(f"unknown engine {name!r} (known: {', '.join(known_engines())})")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def engine_names(settings: RenderConfig) -> list[str]:
    """The engines a run uses, in name order: `render.engine`'s (every pair without a route goes there)
    and every engine `render.routes` sends a type to."""
    return sorted(set(settings.engine_weights()) | set((settings.routes or {}).values()))


def chosen_engines(settings: RenderConfig) -> list[type[EditEngine]]:
    """The engine classes of `engine_names`: what is set up, preflighted, fetched for and checked."""
    return [engine_class(n) for n in engine_names(settings)]


def needs_of(settings: RenderConfig) -> EngineNeeds:
    """What the chosen engines need together (fetch is in the graph when this says `real_image`)."""
    found = EngineNeeds()
    for cls in chosen_engines(settings):
        found = found | cls.needs(settings)
    return found


def reconstructs(settings: RenderConfig) -> bool:
    """Whether any chosen engine gives reconstructions (the filter then scores their fidelity)."""
    return any(cls.reconstructs(settings) for cls in chosen_engines(settings))


def check_sessions(turns: int, settings: RenderConfig) -> None:
    """ConfigError (one line) when `instruct.turns` > 1 and an engine the run uses cannot render sessions."""
    if turns <= 1:
        return
    if settings.early_stop:
        raise ConfigError("instruct.turns > 1: render.early_stop stops single pairs, not sessions; set it false")
    for cls in chosen_engines(settings):
        if not cls.sessions:
            able = [n for n in known_engines() if engine_class(n).sessions]
            raise ConfigError(f"instruct.turns={turns}: render.engine {cls.name} does not render multi-turn sessions "
                              f"yet (engines that do: {', '.join(able)}; docs/sessions.md)")
        try:
            cls.check_sessions(settings)
            if cls.sessions == CHAIN:  # turns after the first edit a picture: the engine's real-image path
                cls.check_settings(chained_settings(settings))
        except ValueError as exc:
            raise ConfigError(f"instruct.turns={turns} with render.engine {cls.name}: {exc}") from None


def chained_settings(settings: RenderConfig) -> RenderConfig:
    """The settings a CHAIN engine renders turns 2.. with: its source is a picture (the previous turn's)."""
    return settings.model_copy(update={"source": "real"})


def chain_row(row: Mapping[str, Any], candidate: int, image: bytes) -> dict[str, Any]:
    """Turn t's row as candidate `candidate`'s chain sees it: the previous turn's edited image as its
    photograph, and an id of its own (`<row id>@c<candidate>`: engines cache a pair's picture by its key,
    and each candidate's chain has another picture)."""
    return {**row, "id": f"{row['id']}@c{candidate}", "image": image}


def pair_key(row_id: str, seed: int) -> str:
    """The name a pair's draws hash: its row id, and `render.seed` when set (so the default seed 0
    draws what records drew before the seed setting existed)."""
    return row_id if seed == 0 else f"{row_id}/{seed}"


def choose_engine(pair_id: str, weights: Mapping[str, float]) -> str:
    """The engine of one pair under a weighted mix: a uniform draw from a hash of the pair key, so the
    choice is the same on every rerun and machine, and recorded in each record's `format`."""
    names = sorted(weights)
    if len(names) == 1:
        return names[0]
    u = int.from_bytes(hashlib.sha256(f"{pair_id}\x00engine".encode()).digest()[:8], "big") / 2.0**64
    total, acc = float(sum(weights.values())), 0.0
    for name in names:
        acc += weights[name] / total
        if u < acc:
            return name
    return names[-1]


def pair_engine(settings: RenderConfig, row: Mapping[str, Any]) -> tuple[str, str | None]:
    """A pair's engine and the route that chose it: `render.routes`' engine for the row's `edit_type`
    (the route is that type), else `render.engine`'s (a weighted draw from the pair key; no route)."""
    routed = routed_engine(settings.routes, row.get("edit_type"))
    if routed is not None:
        return routed, row["edit_type"]
    return choose_engine(pair_key(row["id"], settings.seed), settings.engine_weights()), None


def pair_candidates(settings: RenderConfig, row: Mapping[str, Any]) -> int:
    """Candidates drawn for a pair: `render.type_candidates` of its edit type, else `render.candidates`."""
    return candidates_for(settings.candidates, settings.type_candidates, row.get("edit_type"))


def with_compute(out: RenderedCandidate, compute: Compute) -> RenderedCandidate:
    return replace(out, record=replace(out.record, compute=compute))
