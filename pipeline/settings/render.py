"""Config of the render stage: which edit engine(s) render the before/after candidates, and their settings.

`render.engine` names an engine (engines/: `p2p`, ...) or a weighted mix of them. Settings every engine
reads (model, device, dtype, size, steps, candidates, source, seed, ...) sit at the top of the section;
an engine's own settings sit in its own sub-section `render.<engine>` (a `Strict` model, listed in
pipeline/config.py's HASH_NEUTRAL_DEFAULTS so adding it leaves every existing hash as it was).
Prompt-to-Prompt's settings predate engines and stay at the top (p_range, guidance_range, tie_windows,
mode, self_max_res, local_blend, blend_*, max_rows_per_batch, shared_sources, inversion): moving them
would change every published hash and every config file.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from editgen.pipeline.settings.base import Resources, Seed, Strict
from editgen.pipeline.settings.model_edits import EditReportConfig, EditSet, ModelEdit

#: Largest image side the pipeline accepts (SD 1.5 is trained at 512, SDXL at 1024; beyond 4096 the
#: attention maps alone exceed any GPU). Model-specific limits are checked when the model is known.
MAX_SIDE = 4096
MAX_STEPS = 1000
Guidance = Annotated[float, Field(ge=0, le=100)]
Fraction = Annotated[float, Field(ge=0, le=1)]
MAX_WEIGHT = 1e6
EngineWeight = Annotated[float, Field(gt=0, le=MAX_WEIGHT)]
MAX_CANDIDATES = 10_000
CandidateCount = Annotated[int, Field(ge=1, le=MAX_CANDIDATES)]
Method = Literal["ddim", "null_text", "negative_prompt"]
METHODS: tuple[str, ...] = ("ddim", "null_text", "negative_prompt")


class DiffEditConfig(Strict):
    """DiffEdit mask settings (Couairon et al. 2022; diffusers' ``generate_mask`` defaults where sensible)."""

    n_draws: int = Field(10, ge=1, le=256, description="seeded noise draws averaged into the map")
    strength: float = Field(0.5, gt=0, le=1, description="noise level as a fraction of the training timesteps")
    threshold: float = Field(0.5, ge=0, lt=1, description="mask = normalised map > threshold")
    seed: Seed = 0


class InversionConfig(Strict):
    """How a real image is inverted (``render.inversion``; used when ``render.source`` is real)."""

    method: Method = Field(
        "negative_prompt", description="negative_prompt is near-free; null_text costs ~(3 + inner_steps)x the "
        "DDIM inversion (docs/inversion.md)",
    )
    inner_steps: int = Field(10, ge=1, le=1000, description="null_text: Adam steps per denoising step (max)")
    early_stop_epsilon: float = Field(1e-5, ge=0, le=1, description="null_text: stop a step when loss < this")
    early_stop_growth: float = Field(2e-5, ge=0, le=1, description="null_text: tolerance grows by this per step")
    lr: float = Field(1e-2, gt=0, le=1, description="null_text: Adam learning rate at step 0")
    lr_decay: float = Field(1e-2, ge=0, lt=1, description="null_text: lr_i = lr * (1 - lr_decay * i), as the paper")
    guidance: Guidance | None = Field(
        None, description="one CFG scale for every real-image candidate, so one inversion serves all of a "
        "pair's candidates (null_text's optimisation is per scale); None = each candidate's drawn scale",
    )
    mask: Literal["none", "local_blend", "diffedit"] = Field(
        "none", description="local_blend uses render.blend_threshold/blend_start; diffedit uses `diffedit`"
    )
    diffedit: DiffEditConfig = Field(default_factory=DiffEditConfig)


class SDEditConfig(Strict):
    """The sdedit engine's settings (`render.sdedit`; engines/sdedit.py, docs/engines/sdedit.md)."""

    strength_range: tuple[Fraction, Fraction] = Field(
        (0.5, 0.8), description="noise strength t0 ~ U(a, b): the share of the denoising schedule re-run under "
        "the edited caption (diffusers' img2img `strength`: int(steps x t0) steps); below ~0.5 a global edit "
        "barely shows, above ~0.8 the source's layout is lost (docs/engines/sdedit.md)",
    )
    guidance_range: tuple[Guidance, Guidance] = Field(
        (7.5, 15.0), description="CFG scale of the denoising under the edited caption ~ U(a, b) per candidate "
        "(a generated source uses the scale P2P draws from render.guidance_range, so it is P2P's source)",
    )

    @model_validator(mode="after")
    def _ranges(self) -> SDEditConfig:
        for name in ("strength_range", "guidance_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: lower bound {lo} is above upper bound {hi}")
        return self


class InstructModelConfig(Strict):
    """The `instruct_model` engine (engines/instruct_model.py, docs/engines/instruct_model.md): a diffusers
    instruction-edit pipeline turns the source image and the row's instruction into the edited image."""

    pipeline: Literal["ip2p", "flux_kontext", "qwen_image_edit"] = Field(
        "ip2p", description="ip2p = StableDiffusionInstructPix2PixPipeline, flux_kontext = FluxKontextPipeline, "
        "qwen_image_edit = QwenImageEditPipeline (the installed diffusers must have the class)",
    )
    model: str | None = Field(
        None, description="hub id or local diffusers folder (safetensors); 'tiny' builds the tiny IP2P test model; "
        "None = the pipeline's reference model (timbrooks/instruct-pix2pix, black-forest-labs/FLUX.1-Kontext-dev, "
        "Qwen/Qwen-Image-Edit), or the tiny IP2P when render.model is a tiny model",
    )
    guidance_range: tuple[Guidance, Guidance] | None = Field(
        None, description="text guidance ~ U(a, b) per candidate (ip2p: guidance_scale, flux_kontext: its distilled "
        "guidance_scale, qwen_image_edit: true_cfg_scale); None = (5, 10), (2.5, 2.5), (4, 4) respectively",
    )
    image_guidance_range: tuple[Guidance, Guidance] | None = Field(
        None, description="ip2p only: image_guidance_scale ~ U(a, b) per candidate; None = (1.2, 1.8)",
    )
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="edit-model steps (None = render.steps)")
    scheduler: Literal["model", "ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc"] = Field(
        "model", description="the edit model's sampler: model = the one it ships with (the only choice for "
        "flux_kontext and qwen_image_edit)",
    )
    negative_prompt: str | None = Field(
        None, description="ip2p: its negative prompt; qwen_image_edit: None = ' ' (true CFG needs one); "
        "flux_kontext: none (its guidance is distilled)",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto = render's dtype for ip2p; bfloat16 on GPU for flux_kontext and qwen_image_edit "
        "(float16 overflows them); float32 on CPU",
    )

    @model_validator(mode="after")
    def _ranges(self) -> InstructModelConfig:
        for name in ("guidance_range", "image_guidance_range"):
            value = getattr(self, name)
            if value is not None and value[0] > value[1]:
                raise ValueError(f"{name}: lower bound {value[0]} is above upper bound {value[1]}")
        return self


class RegionMaskConfig(Strict):
    """How the inpaint engine's region comes from the source's cross-attention maps of the changed words
    (p2p.masks.attention_region; threshold and dilation are LocalBlend's)."""

    threshold: Fraction = Field(0.3, description="region = normalised accumulated map > threshold")
    dilate: int = Field(3, ge=1, le=15, description="max-pool kernel on the attention grid (odd; 1 = none)")
    smooth: float = Field(1.0, ge=0, le=8, description="Gaussian sigma in attention-grid cells (0 = none)")
    normalize: Literal["max", "minmax"] = Field(
        "minmax", description="minmax: rescale the map's min..max to 0..1 (the threshold is a fraction of its "
        "range, whatever attention the words get everywhere); max: divide by the maximum (LocalBlend)")
    downscale: int | None = Field(
        None, ge=1, le=64, description="read the cross-attention layers whose grid is latent / downscale; "
        "None = the layers nearest 16x16 (SD 1.x at 512 px and SDXL at 1024 px: 4)")

    @field_validator("dilate")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"dilate must be odd (a centred max-pool kernel), got {value}")
        return value


class InpaintConfig(Strict):
    """The inpaint engine (`render.engine: inpaint`; docs/engines/inpaint.md)."""

    model: str | None = Field(
        "auto", description="inpainting UNet: hub id or local folder (its unet/), tiny-inpaint / tiny-sdxl-inpaint, "
        "auto (SD 1.x/2.x: stable-diffusion-v1-5/stable-diffusion-inpainting, SDXL: "
        "diffusers/stable-diffusion-xl-1.0-inpainting-0.1, tiny models: the tiny one), or null: latent "
        "blending with the base model",
    )
    guidance_range: tuple[Guidance, Guidance] = Field(
        (7.5, 15.0), description="CFG scale ~ U(a, b): each candidate's inpainting scale and, once per pair, "
        "the generated source's")
    mask: RegionMaskConfig = Field(default_factory=RegionMaskConfig)
    diffedit: DiffEditConfig = Field(default_factory=DiffEditConfig,
                                     description="the region of a real image (render.source=real): DiffEdit's")
    feather: float = Field(0.02, ge=0, le=0.25, description="paste-back ramp around the region, as a fraction "
                           "of the image's shorter side (0.02: 10 px at 512); pixels beyond it are the source's")
    min_area: Fraction = Field(0.01, description="pairs whose region covers less of the image are dropped "
                               "(inpaint_mask_too_small) before any inpainting UNet work")
    max_area: Fraction = Field(0.9, description="... or more (inpaint_mask_too_large)")

    @model_validator(mode="after")
    def _ranges(self) -> InpaintConfig:
        lo, hi = self.guidance_range
        if lo > hi:
            raise ValueError(f"guidance_range: lower bound {lo} is above upper bound {hi}")
        if self.min_area > self.max_area:
            raise ValueError(f"min_area {self.min_area} is above max_area {self.max_area}")
        return self


class RenderConfig(Strict):
    model: str = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="hub id or local diffusers folder (safetensors); 'tiny' / 'tiny-sdxl' build random test models",
    )
    engine: str | dict[str, EngineWeight] = Field(
        "p2p", description="the edit engine (engines/: p2p, ...) or {engine: weight, ...}: each pair's engine "
        "drawn from a hash of its id and render.seed (recorded in each record's format)",
    )
    routes: dict[str, str] | None = Field(
        None, description="{edit_type: engine}: a pair of a routed type goes to that engine, any other pair "
        "(no route for its type, or no type) to render.engine; `default` = the documented table "
        "(docs/edit_types.md, Routing; stored expanded, so the hash covers the table); None = no routing",
    )
    type_candidates: dict[str, CandidateCount] | None = Field(
        None, description="{edit_type: n}: candidates drawn per pair of that type instead of render.candidates",
    )
    source: Literal["generated", "real"] = Field(
        "generated", description="real = edit the row's fetched LAION image (fetch stage) instead of a "
        "source the engine generates"
    )
    inversion: InversionConfig = Field(default_factory=InversionConfig)
    instruct_model: InstructModelConfig = Field(default_factory=InstructModelConfig)
    sdedit: SDEditConfig = Field(default_factory=SDEditConfig, description="the sdedit engine's settings")
    inpaint: InpaintConfig = Field(default_factory=InpaintConfig, description="the inpaint engine's settings")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when the actor has a GPU")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto = float16 on GPU, float32 on CPU"
    )
    compile: bool = Field(False, description="torch.compile the UNet once per actor")
    scheduler: Literal["ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "lcm",
                       "euler_a_trailing"] = Field(
        "ddim", description="sampler; lcm and euler_a_trailing (SD/SDXL-Turbo) are the few-step ones, whose P2P "
                            "windows follow the few-step rule (docs/fewstep.md)")
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    height: int = Field(512, ge=8, le=MAX_SIDE, multiple_of=8)
    width: int = Field(512, ge=8, le=MAX_SIDE, multiple_of=8)
    candidates: int = Field(4, ge=1, le=MAX_CANDIDATES,
                            description="candidates drawn per pair (InstructPix2Pix drew up to 100)")
    p_range: tuple[Fraction, Fraction] = Field((0.1, 0.9), description="P2P window fraction p ~ U(a, b)")
    guidance_range: tuple[Guidance, Guidance] = Field((7.5, 15.0), description="CFG scale ~ U(a, b)")
    tie_windows: bool = Field(True, description="one p for the cross- and self-attention windows")
    mode: Literal["auto", "replace", "refine", "reweight", "ip2p"] = Field(
        "auto", description="auto = the instruct stage's edit kind (replace when word counts match, else refine)"
    )
    self_max_res: int | None = Field(32, ge=1, description="self-attention injected only at <= N x N layers")
    local_blend: bool = Field(False, description="LocalBlend on the changed words; the mask is stored")
    blend_threshold: float = Field(0.3, ge=0, le=1)
    blend_start: float = Field(0.2, ge=0, le=1)
    negative_prompt: str | None = None
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)
    max_rows_per_batch: int = Field(
        0, ge=0, le=100_000, description="pack several pairs into one UNet batch of up to N rows per CFG half "
        "(GPU profiles: 16); a packed record stores its batch and regenerate replays it (0 = one pair per batch)"
    )
    shared_sources: int = Field(
        1, ge=1, le=64, description="k candidates of a pair share one source image (same seed and guidance, "
        "their own P2P windows) in one group: 2(1+k) UNet rows per k candidates instead of 4k; candidates must "
        "be a multiple of k (engines/p2p_records.py)",
    )
    early_stop: bool = Field(False, description="score candidates as they finish and stop a pair once "
                             "filter.top_k pass filter thresholds")
    early_stop_min_candidates: int = Field(0, ge=0)
    max_failed_fraction: float = Field(
        0.5, ge=0, le=1, description="a partition where more pairs than this fraction fail to render fails "
        "(retried, then the stage fails, resumable) instead of dropping them all as render_failed"
    )
    seed: Seed = Field(0, description="changes every candidate's sampled seed and parameters")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads per actor (default: its num_cpus)")
    model_edits: list[ModelEdit] = Field(
        default_factory=list, description="cross-attention edits applied once per actor after "
        "loading: {kind: time, source, destination} | {kind: erase, concept, anchor} | "
        "{kind: debias, concept, attributes, weights} (closed form) | {kind: forget, concept, steps, lr, images, "
        "seed, ...} (Forget-Me-Not, gradient based) (docs/model_edits.md)",
    )
    model_edit_lambda: float = Field(0.1, gt=0, description="λ of the closed form: pull towards the old weights")
    model_edit_preserve: list[str] = Field(default_factory=list, description="prompts whose projections must not move")
    model_edit_report: EditReportConfig = Field(
        default_factory=EditReportConfig, description="the report `editgen run` writes to OUT/model_edits/ after "
        "a run with model edits (docs/model_edits.md); not part of the render hash: it changes no image",
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(num_gpus=1, concurrency=0, batch_size=8),
        description="concurrency 0 = one actor per GPU (or per CPU slot) in the cluster",
    )

    @model_validator(mode="after")
    def _ranges(self) -> RenderConfig:
        for name in ("p_range", "guidance_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: lower bound {lo} is above upper bound {hi}")
        if not 0 <= self.p_range[0] <= self.p_range[1] <= 1:
            raise ValueError("p_range must lie within [0, 1]")
        for cls in _engines().chosen_engines(self):
            cls.check_settings(self)
        self._check_type_counts()
        return self

    def _check_type_counts(self) -> None:
        """Each `type_candidates` count passes the checks of the engines its type's pairs may go to (its
        route's, else render.engine's) as if it were render.candidates (e.g. a multiple of shared_sources)."""
        base = _engines()
        for name, n in (self.type_candidates or {}).items():
            routed = (self.routes or {}).get(name)
            as_count = self.model_copy(update={"candidates": n})
            for engine in [routed] if routed else sorted(self.engine_weights()):
                try:
                    base.engine_class(engine).check_settings(as_count)
                except ValueError as exc:
                    raise ValueError(f"type_candidates: {name}: {exc}") from None

    @field_validator("routes", mode="before")
    @classmethod
    def _routes(cls, value: object) -> object:
        """`default` -> the documented table; known types and engines (one line naming the first bad one)."""
        return _routes().check_routes(value)

    @field_validator("type_candidates")
    @classmethod
    def _type_names(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        return _routes().check_type_candidates(value)

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_shape(cls, value: object) -> object:
        """One line for a wrong shape (instead of one per member of the union)."""
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and all(isinstance(k, str) for k in value) and all(
                isinstance(w, int | float) and not isinstance(w, bool) and 0 < w <= MAX_WEIGHT for w in value.values()):
            return value
        raise ValueError(f"expected an engine name or {{engine: weight, ...}} with weights in (0, {MAX_WEIGHT:g}]")

    @field_validator("engine")
    @classmethod
    def _known_engines(cls, value: str | dict[str, float]) -> str | dict[str, float]:
        names = [value] if isinstance(value, str) else list(value)
        known = list(_engines().known_engines())
        if not names:
            raise ValueError(f"name at least one engine (known: {', '.join(known)})")
        for name in names:
            if name not in known:
                raise ValueError(f"unknown engine {name!r} (known: {', '.join(known)})")
        return names[0] if len(names) == 1 else value  # {p2p: 1} is p2p: the same hash, the same run

    def engine_weights(self) -> dict[str, float]:
        """`render.engine` as {engine name: weight} (one name: weight 1)."""
        return {self.engine: 1.0} if isinstance(self.engine, str) else dict(self.engine)

    def edit_set(self) -> EditSet | None:
        """The model edits as one solve, or None when there are none (preserve alone moves nothing)."""
        if not self.model_edits:
            return None
        preserve = list(self.model_edit_preserve)
        return EditSet(edits=list(self.model_edits), lam=self.model_edit_lambda, preserve=preserve)


def _engines() -> ModuleType:
    """engines.base, imported by name: the engine registry and each engine's own settings checks live
    with the engines, above the core, like the stage graph (pipeline/registry.py)."""
    return importlib.import_module(ENGINES_MODULE)


def _routes() -> ModuleType:
    """engines.routes, imported by name (as `_engines`): the routing table and its checks of edit types
    (prompts.taxonomy) and engine names."""
    return importlib.import_module(ROUTES_MODULE)


#: Where the engine registry and its lookups live (imported by name: engines sit above the core).
ENGINES_MODULE = "editgen.engines.base"
ROUTES_MODULE = "editgen.engines.routes"


def check_values(flags: dict[str, str], **values: object) -> None:
    """Validate hand-given render values (e.g. `editgen pair` arguments) by the config's own rules;
    raises ValueError with one line naming the flag given for the bad key (`flags`: key -> flag)."""
    try:
        RenderConfig.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else ""
        raise ValueError(f"{flags.get(key, key)}: {err['msg'].lower()} (got {err.get('input')!r})") from None
