"""The held-out eval split (`shard.eval_fraction`): which kept samples go to `eval-NNNNNN.tar` instead of the
training tars, decided by a hash so every rerun and machine draws the same split.

The unit of the draw is the pair, not the sample: a pair's id (the `<id>` stem of its sample keys), and for a
multi-turn session its first turn's id (the session id, docs/sessions.md). So every kept candidate of one pair
(near-identical images and the same instruction), its inverse pair (output.inverse) and every turn of a
session land in the same split: nothing in `eval` has a sibling in `train`. A unit is in eval when
sha256(unit) read as a number in [0, 1) is below the fraction; which units those are does not depend on the
other rows, so adding rows never moves an existing pair between the splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from editgen.pipeline.sessions import session_of
from editgen.pipeline.settings.shard import EVAL_PREFIX as EVAL_TARS

#: The eval tars' name prefix (OUT/shards/gen-<G>/eval-NNNNNN.tar; the settings refuse it as shard.prefix)
#: and the manifest section.
EVAL_PREFIX = EVAL_TARS
EVAL_SECTION = "eval"
#: Shard-stage metrics (what `editgen status` reports beside the kept count, which holds both splits).
EVAL_SAMPLES_METRIC, EVAL_SHARDS_METRIC = "eval_samples", "eval_shards"


def split_unit(row: Mapping[str, Any]) -> str:
    """What a row's split is drawn by: its session's id (the first turn's row id), else its own row id."""
    st = session_of(row)
    return st[0] if st is not None else str(row["id"])


def unit_fraction(unit: str) -> float:
    """sha256(unit) as a number in [0, 1): the first 64 bits over 2**64."""
    return int.from_bytes(hashlib.sha256(unit.encode("utf-8")).digest()[:8], "big") / 2.0**64


def in_eval(row: Mapping[str, Any], fraction: float) -> bool:
    """Whether a kept row's sample (and its inverse, its session) is held out for evaluation."""
    return fraction > 0 and unit_fraction(split_unit(row)) < fraction
