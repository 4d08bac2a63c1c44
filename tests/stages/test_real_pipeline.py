"""The whole tiny pipeline with render.source=real against a local image server (issue 13 item 5):
every input row kept or dropped with a reason, valid shards whose input images are the served images
after the configured resize, a reconstruction member, poor_inversion accounting, resume."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from editgen.pipeline.config import build_config
from editgen.pipeline.runner import run_pipeline
from editgen.sources.image import prepare_image
from tests.image_server import ImageServer, captions_parquet
from tests.support import tar_files

NAMES = ["photo.png", "photo.jpg", "exif6.jpg", "wide.png", "missing.png", "noai.png", "pixel.png"]
FAST = {"timeout": 0.5, "max_seconds": 5, "retries": 1, "backoff": 0.01}


def _cfg(data, *overrides: str):
    return build_config(profile="tiny", overrides=[
        f"ingest.input=[{data}]", "ingest.rows_per_partition=4", "render.source=real", "render.steps=3",
        "render.candidates=2", "render.inversion.method=negative_prompt", "render.local_blend=true",
        "render.resources.concurrency=1", "filter.top_k=null", "run.progress=false",
        *[f"fetch.{k}={v}" for k, v in FAST.items()], *overrides])


def _samples(out) -> dict[str, dict[str, bytes]]:
    found: dict[str, dict[str, bytes]] = {}
    for path in tar_files(out):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                found.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return found


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("real")
    with ImageServer() as server:
        data = captions_parquet(tmp / "captions.parquet", server, NAMES)
        served = {server.url(n): server.routes[n].body for n in NAMES}
        cfg = _cfg(data)
        result = run_pipeline(cfg, str(tmp / "out"))
        again = run_pipeline(cfg, str(tmp / "out"))
    return tmp / "out", cfg, result, again, served


def test_accounting_and_resume(real_run):
    out, _, result, again, _ = real_run
    stages = {s.name: s for s in result.stages}
    assert list(stages) == ["ingest", "fetch", "instruct", "render", "filter", "shard"]
    fetch = stages["fetch"]
    assert fetch.rows_in == len(NAMES) and fetch.rows_out == 4
    assert fetch.dropped == {"fetch_http_error": 1, "fetch_opted_out": 1, "fetch_too_small": 1}
    assert stages["instruct"].rows_in == 4
    assert sum(stages["filter"].dropped.values()) + stages["filter"].rows_out == stages["render"].rows_out
    assert [s.computed for s in again.stages] == [0] * 6


def test_shards_hold_the_served_images_after_resize(real_run):
    out, cfg, _, _, served = real_run
    samples = _samples(out)
    assert samples, "some real-image samples were kept"
    for parts in samples.values():
        meta = json.loads(parts["json"])
        want = prepare_image(served[meta["url"]], cfg.fetch, (cfg.render.width, cfg.render.height))
        stored = np.asarray(Image.open(io.BytesIO(want.data)).convert("RGB"))
        got = np.asarray(Image.open(io.BytesIO(parts["input.png"])).convert("RGB"))
        assert np.array_equal(got, stored), meta["url"]
        assert "reconstruction.png" in parts and "edited.png" in parts
        assert meta["params"]["real_source"]["inversion"]["method"] == "negative_prompt"
        assert meta["recon_psnr"] is not None and "image" not in meta


def test_manifest_and_status_report_compute_per_kept_sample(real_run):
    from editgen.cli.status import collect, render_table
    from tests.support import manifest

    out, _, result, _, _ = real_run
    report = manifest(out)["compute"]
    shard = next(s for s in result.stages if s.name == "shard")
    assert report["kept_samples"] == shard.rows_out > 0
    assert report["unet_row_steps_per_kept"] == report["unet_row_steps"] / report["kept_samples"]
    assert report["inversion_row_steps"] > 0  # the inversions are charged too
    assert report["unet_row_steps"] > report["candidates"] * 4 * 3  # 2 prompts x CFG x 3 steps, + inversion
    assert report["gpu_seconds"] is None  # CPU run: no GPU seconds are invented
    status = collect(str(out))
    assert status["compute"]["unet_flops"] == report["unet_flops"]
    assert "compute per kept sample" in str(render_table(status).caption)


def test_poor_inversion_drops_with_its_reason(real_run, tmp_path):
    out, cfg, _, _, _ = real_run
    strict = cfg.model_copy(update={"filter": cfg.filter.model_copy(update={"min_reconstruction_psnr": 99.0})})
    res = run_pipeline(strict, str(out), from_stage="filter")
    filt = next(s for s in res.stages if s.name == "filter")
    assert filt.rows_out == 0 and set(filt.dropped) == {"poor_inversion"}
