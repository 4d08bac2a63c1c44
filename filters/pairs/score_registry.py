"""Which stored columns are scores of a pair, which way is better, and which settings threshold them.

One declared list (`SCORES`) so that tools reading scores back (`editgen judge-agreement`, docs/calibration.md)
need no per-score code: a new score (DINOv2, SSIM, a VLM judge's) is one `ScoreColumn` line here, and the
stage whose partitions hold it one entry in `SOURCE_STAGES`. Import-light on purpose (no torch): the
column names are spelled here, and tests/filters/test_agreement.py checks them against the modules
that compute them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from editgen.pipeline.config import EditgenConfig


@dataclass(frozen=True)
class ScoreColumn:
    """A stored per-pair score. `minimum` / `maximum`: dotted config paths (`filter.min_sim_image`) of the
    settings a pair must clear (score >= minimum, score <= maximum; a null setting is no check)."""

    name: str
    higher_is_better: bool = True
    minimum: str | None = None
    maximum: str | None = None
    what: str = ""


#: Every score a pair may carry, in the order tools show them. Extend here (and SOURCE_STAGES).
SCORES: tuple[ScoreColumn, ...] = (
    ScoreColumn("sim_direction", True, "filter.min_sim_direction", what="CLIP cos(I1-I0, T1-T0)"),
    ScoreColumn("sim_image", True, "filter.min_sim_image", what="CLIP cos(I0, I1)"),
    ScoreColumn("sim_0", True, "filter.min_sim_0", what="CLIP cos(I0, T0)"),
    ScoreColumn("sim_1", True, "filter.min_sim_1", what="CLIP cos(I1, T1)"),
    ScoreColumn("recon_psnr", True, "filter.min_reconstruction_psnr", what="real image vs reconstruction, dB"),
    ScoreColumn("recon_ssim", True, "filter.min_reconstruction_ssim", what="real image vs reconstruction, SSIM"),
    ScoreColumn("outside_mask_l1", False, maximum="filter.max_outside_mask_l1", what="change outside the mask"),
    ScoreColumn("outside_mask_ssim", True, "filter.min_outside_mask_ssim", what="SSIM outside the mask"),
    ScoreColumn("dinov2_sim", True, "filter.min_dinov2", "filter.max_dinov2", what="DINOv2 cos(I0, I1)"),
    ScoreColumn("ssim", True, "filter.min_ssim", "filter.max_ssim", what="SSIM(I0, I1), whole image"),
    ScoreColumn("judge_instruction", True, "judge.min_instruction", what="VLM judge: instruction following 0-10"),
    ScoreColumn("judge_preservation", True, "judge.min_preservation", what="VLM judge: preservation 0-10"),
    ScoreColumn("judge_quality", True, "judge.min_quality", what="VLM judge: visual quality 0-10"),
    ScoreColumn("judge_score", True, what="VLM judge: the weighted combined score (judge.weights)"),
)

#: Stages whose partitions hold every candidate's scores, read in this order (a later stage's value of a
#: column replaces an earlier one's for the same sample key).
SOURCE_STAGES: tuple[str, ...] = ("filter", "judge")

#: "CLIP alone": InstructPix2Pix's rule, the four CLIP thresholds, ranked by direction similarity.
CLIP_RULE: tuple[str, ...] = ("sim_image", "sim_direction", "sim_0", "sim_1")
CLIP_RANK = "sim_direction"


def by_name() -> dict[str, ScoreColumn]:
    return {s.name: s for s in SCORES}


def setting(cfg: EditgenConfig, path: str | None) -> float | None:
    """The value of a dotted config path (None when unset, or when the config has no such setting:
    a score whose stage this checkout's config does not know yet)."""
    if path is None:
        return None
    node: object = cfg
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def thresholds(cfg: EditgenConfig, score: ScoreColumn) -> tuple[float | None, float | None]:
    """(minimum, maximum) the run's config set for this score."""
    return setting(cfg, score.minimum), setting(cfg, score.maximum)
