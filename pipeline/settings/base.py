"""Shared building blocks of the config schema."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler
from pydantic_core import CoreSchema

#: Seeds: numpy and torch take any non-negative integer below 2**63 (a negative one raises mid-run).
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


#: Core-schema types validated strictly wherever they occur (fields, tuple items, list items, unions).
STRICT_TYPES = ("int", "float", "bool")


def _strict_numbers(schema: Any) -> Any:
    """Mark every int/float/bool validator in a core schema strict, in place.

    Lax pydantic takes `true` as 1, `yes` (YAML's true) as 1, `1.0` as 1 and "8" as 8, so a typo'd
    `--set render.steps=true` rendered one step. Strict: an int is an int (never a bool, a float or a
    string), a float is an int or a float (never a bool or a string: YAML's `1` stays a valid float),
    a bool is a bool. Other types (tuples from YAML lists, literals) keep their usual validation."""
    if isinstance(schema, dict):
        if schema.get("type") in STRICT_TYPES:
            schema["strict"] = True
        for value in schema.values():
            _strict_numbers(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict_numbers(value)
    return schema


class StrictTypes(BaseModel):
    """Numbers and booleans are validated strictly in every subclass (see `_strict_numbers`)."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: type[BaseModel], handler: GetCoreSchemaHandler) -> CoreSchema:
        return _strict_numbers(handler(source))


class Strict(StrictTypes):
    """Base for every config section: unknown keys and wrong types are errors, never ignored; NaN and
    infinity are never valid settings (a NaN guidance scale silently writes NaN images)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


class Resources(Strict):
    """How a stage is scheduled on Ray. Excluded from the config hash: it never changes results."""

    num_cpus: float = Field(1.0, ge=0, le=4096)
    num_gpus: float = Field(0.0, ge=0, le=1024)
    concurrency: int = Field(1, ge=0, le=100_000,
                             description="number of actors (workers); 0 = as many as the cluster fits")
    batch_size: int = Field(256, ge=1, le=10_000_000, description="rows handed to the batch function at once")
    max_retries: int = Field(3, ge=0, le=1000, description="re-runs of a partition after a worker crash "
                             "or after its worker was killed for making no progress")
    progress_timeout_s: float | None = Field(
        None, gt=0, le=7 * 86400,
        description="seconds a running partition (or task) may go without progress (a finished batch, a "
        "reported row, its end) before its worker counts as wedged: the worker is killed and the partition "
        "retried elsewhere (one attempt). None = automatic: progress_factor x the longest wait between "
        "progress seen in this step of this run, at least progress_floor_s. Worker start-up (model loading) "
        "is bounded by run.worker_start_timeout_s instead")
    progress_floor_s: float = Field(600.0, gt=0, le=7 * 86400,
                                    description="the automatic progress deadline's minimum (and its value "
                                    "until a first batch or partition of the step has been timed)")
    progress_factor: float = Field(10.0, ge=1, le=1000,
                                   description="the automatic progress deadline in multiples of the longest "
                                   "wait between progress seen so far in the step")
