"""The fetch stage against a local image server (tests/image_server.py): every drop reason and the exact
accounting, EXIF orientation, retries, the resize modes, determinism, the systemic network-down check,
the config-aware graph (fetch only with render.source=real, hashes untouched otherwise), config errors,
and one run through the runner with resume."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from editgen.cli.main import main as cli_main
from editgen.pipeline.config import build_config
from editgen.pipeline.registry import stage_names
from editgen.pipeline.runner import run_pipeline, stage_hashes
from editgen.sources.addresses import BlockedAddress, check_public, refusal
from editgen.sources.budget import DecodeBudget
from editgen.sources.http import opted_out
from editgen.sources.image import prepare_image
from editgen.stages.fetch import FetchStage, SystemicFetchError
from tests.image_server import (
    DripServer,
    ImageServer,
    captions_parquet,
    encode,
    gradient,
    png_bomb,
    tls_context,
)

FAST = {"timeout": 0.5, "max_seconds": 5, "retries": 1, "backoff": 0.01, "max_bytes": 4096,
        "max_pixels": 1_000_000, "threads": 8}
#: path -> (drop reason or None for kept, HTTP status, requests the server sees)
EXPECTED = {
    "photo.png": (None, 200, 2),  # once itself, once as the redirect's target
    "photo.jpg": (None, 200, 1),
    "octet.png": (None, 200, 1),
    "exif6.jpg": (None, 200, 1),
    "redirect": (None, 200, 1),
    "noai-other-bot.png": (None, 200, 1),
    "flaky.png": (None, 200, 2),  # 503, then 200 on the retry
    "missing.png": ("fetch_http_error", 404, 1),  # a 4xx is never retried
    "error.png": ("fetch_http_error", 500, 2),  # a 5xx is, retries times
    "slow.png": ("fetch_timeout", None, 2),
    "page.html": ("fetch_not_image", 200, 1),
    "text.png": ("fetch_not_image", 200, 1),
    "truncated.jpg": ("fetch_decode_error", 200, 1),
    "noai.png": ("fetch_opted_out", 200, 1),
    "noimageai-ours.png": ("fetch_opted_out", 200, 1),
    "pixel.png": ("fetch_too_small", 200, 1),
    "large.png": ("fetch_too_large", 200, 1),
    "large-stream.png": ("fetch_too_large", 200, 1),
    "many-pixels.png": ("fetch_too_large", 200, 1),
}
BAD_URLS = [None, "", "ftp://example.com/a.png", "not a url", "http://"]


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        yield s


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def real_cfg(**fetch):
    return build_config(profile="tiny", extra={"render": {"source": "real"}, "fetch": {**FAST, **fetch},
                                               "run": {"progress": False}})


def fetch_table(urls: list[str | None], **fetch) -> pa.Table:
    stage = FetchStage(real_cfg(**fetch))
    try:
        table = pa.table({"id": [f"r{i}" for i in range(len(urls))], "url": pa.array(urls, pa.string()),
                          "caption": [f"caption {i}" for i in range(len(urls))]})
        return stage.process_partition(table)
    finally:
        stage.teardown()


@pytest.fixture(scope="module")
def fetched(server) -> tuple[pa.Table, dict[str, int]]:
    urls = [server.url(n) for n in EXPECTED] + BAD_URLS + [f"http://127.0.0.1:{closed_port()}/gone.png"]
    before = {n: server.count(n) for n in EXPECTED}
    server.flaky_failures = server.count("flaky.png") + 1  # its next request answers 503
    table = fetch_table(urls)
    return table, {n: server.count(n) - before[n] for n in EXPECTED}


def test_every_row_kept_or_dropped_with_its_reason(fetched):
    table, counts = fetched
    rows = table.to_pylist()
    assert len(rows) == len(EXPECTED) + len(BAD_URLS) + 1
    for name, row in zip(EXPECTED, rows, strict=False):
        reason, status, requests = EXPECTED[name]
        assert (row["drop_reason"], row["http_status"], counts[name]) == (reason, status, requests), (name, row)
        assert row["status"] == ("kept" if reason is None else "dropped")
        assert (row["image"] is not None) == (reason is None) and (row["fetch_error"] is None) == (reason is None)
    tail = rows[len(EXPECTED):]
    assert [r["drop_reason"] for r in tail] == ["fetch_bad_url"] * len(BAD_URLS) + ["fetch_connection_error"]
    assert all(r["http_status"] is None for r in tail)
    assert sum(r["status"] == "kept" for r in rows) == 7
    assert [r["caption"] for r in rows] == [f"caption {i}" for i in range(len(rows))]  # inputs pass through


def test_kept_images_are_resized_encoded_and_hashed(fetched):
    import hashlib

    table, _ = fetched
    for row in table.to_pylist():
        if row["status"] != "kept":
            continue
        img = Image.open(io.BytesIO(row["image"]))
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 64))
        assert (row["fetch_format"], row["image_width"], row["image_height"]) == ("jpeg", 64, 64)
        assert row["image_sha256"] == hashlib.sha256(row["image"]).hexdigest()
    photo = table.to_pylist()[0]
    assert (photo["original_width"], photo["original_height"]) == (96, 64)


def test_exif_orientation_is_applied(fetched):
    row = next(r for r in fetched[0].to_pylist() if r["url"].endswith("exif6.jpg"))
    assert (row["original_width"], row["original_height"]) == (64, 96)  # stored 96x64, shown turned
    img = Image.open(io.BytesIO(row["image"])).convert("RGB")
    top, bottom = img.getpixel((32, 4)), img.getpixel((32, 59))
    assert top[0] > 200 and top[2] < 60, top  # red on top: rotated 90° clockwise, as EXIF 6 says
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_same_bytes_twice(server):
    urls = [server.url(n) for n in ("photo.png", "photo.jpg", "exif6.jpg")]
    a, b = fetch_table(urls), fetch_table(urls)
    assert a["image"].to_pylist() == b["image"].to_pylist()
    assert a["image_sha256"].to_pylist() == b["image_sha256"].to_pylist()


@pytest.mark.parametrize(("mode", "source", "want"), [
    ("center_crop", (128, 32), (64, 48)),
    ("border", (128, 32), (64, 48)),
    ("keep_ratio", (128, 32), (64, 16)),
    ("keep_ratio", (96, 64), (64, 40)),  # 64 x 42.7, rounded down to multiples of 8
    ("keep_ratio", (30, 40), (32, 48)),  # scaled up to fit, 36 -> 32
])
def test_resize_modes(mode, source, want):
    cfg = real_cfg(resize_mode=mode, border_color=[0, 255, 0])
    out = prepare_image(encode(gradient(*source)), cfg.fetch, (64, 48))
    assert out.reason is None and (out.width, out.height) == want
    img = Image.open(io.BytesIO(out.data))
    assert img.size == want
    if mode == "border":  # 128x32 fitted to 64x16, padded above and below with the border colour
        r, g, b = img.convert("RGB").getpixel((32, 2))
        assert g > 200 and r < 40 and b < 40


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_encode_formats(fmt):
    out = prepare_image(encode(gradient(80, 80)), real_cfg(encode_format=fmt).fetch, (64, 64))
    assert Image.open(io.BytesIO(out.data)).format == fmt.upper()


def test_opt_out_header_forms():
    bad = {"noai", "noimageai", "noindex", "noimageindex"}
    assert opted_out(["noai"], "editgen", bad) and opted_out(["NoIndex, nofollow"], "editgen", bad)
    assert opted_out(["editgen: noimageai"], "editgen", bad)
    assert not opted_out(["otherbot: noai"], "editgen", bad)
    assert not opted_out(["nofollow", "unavailable_after: 25 Jun 2030 15:00:00 PST"], "editgen", bad)
    assert opted_out(["otherbot: noai", "noindex"], "editgen", bad)  # header lines are read one by one


def test_network_down_fails_the_partition():
    port = closed_port()
    urls = [f"http://127.0.0.1:{port}/{i}.png" for i in range(4)] + [None]
    with pytest.raises(SystemicFetchError, match=r"4 of 4 URLs could not be connected to"):
        fetch_table(urls, retries=0)


def test_private_addresses_are_refused_unless_allowed(server):
    table = fetch_table([server.url("photo.png")], block_private_addresses=True)
    row = table.to_pylist()[0]
    assert row["drop_reason"] == "fetch_bad_url" and "non-public address" in row["fetch_error"]


def test_graph_is_config_aware():
    generated, real = build_config(profile="tiny"), real_cfg()
    assert stage_names(generated) == stage_names() == ["ingest", "instruct", "render", "filter", "shard"]
    assert stage_names(real) == ["ingest", "fetch", "instruct", "render", "filter", "shard"]
    assert "fetch" not in stage_hashes(generated)
    same_fetch = build_config(profile="tiny", overrides=["fetch.threads=3", "fetch.quality=50"])
    assert stage_hashes(same_fetch) == stage_hashes(generated)  # fetch settings matter only when it runs
    a, b = stage_hashes(real), stage_hashes(real_cfg(quality=50))
    assert a["ingest"] == b["ingest"] and all(a[n] != b[n] for n in ("fetch", "instruct", "render", "shard"))
    taller = stage_hashes(build_config(profile="tiny", overrides=["render.source=real", "render.height=128"]))
    assert taller["fetch"] != a["fetch"]  # the target size is read from render


@pytest.mark.parametrize(("override", "words"), [
    ("fetch.threads=0", "fetch.threads"),
    ("fetch.timeout=-1", "fetch.timeout"),
    ("fetch.resize_mode=stretch", "fetch.resize_mode"),
    ("fetch.encode_format=gif", "fetch.encode_format"),
    ("fetch.quality=101", "fetch.quality"),
    ("fetch.border_color=[0,0,300]", "fetch.border_color"),
    ("fetch.disallowed_header_directives=[no ai]", "fetch.disallowed_header_directives"),
    ("fetch.max_failed_fraction=2", "fetch.max_failed_fraction"),
    ("fetch.resources.num_gpus=1", "fetch.resources: fetch runs on CPUs only"),
    ("fetch.proxy=x", "unknown key 'fetch.proxy'"),
])
def test_bad_fetch_config_is_one_line_exit_2(override, words, capsys):
    assert cli_main(["config", "--profile", "tiny", "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("editgen: config: ") and words in err[0], err


@pytest.mark.parametrize("flag", ["--only", "--from", "--to"])
def test_fetch_flags_without_real_source(flag, tmp_path, capsys):
    rc = cli_main(["run", "--profile", "tiny", "--input", str(tmp_path / "x.parquet"), "--out",
                   str(tmp_path / "out"), flag, "fetch", "-q", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "render.source=real" in err[0], err
    assert not (tmp_path / "out" / "fetch").exists()


def test_through_the_runner_with_resume(ray_session, server, tmp_path):
    from editgen.cli.chain_check import check_chain
    from editgen.cli.status import collect
    from editgen.pipeline.config import out_config
    from editgen.pipeline.storage import Storage

    names = ["photo.png", "photo.jpg", "exif6.jpg", "wide.png", "missing.png", "noai.png", "pixel.png"]
    data = captions_parquet(tmp_path / "captions.parquet", server, names)
    cfg = build_config(profile="tiny", extra={
        "ingest": {"input": [str(data)], "rows_per_partition": 4}, "render": {"source": "real"},
        "fetch": FAST, "run": {"progress": False}})
    out = tmp_path / "out"
    res = run_pipeline(cfg, str(out), to_stage="instruct")
    assert [s.name for s in res.stages] == ["ingest", "fetch", "instruct"]
    ingest, fetch, instruct = res.stages
    assert (fetch.partitions, fetch.computed, fetch.rows_in) == (2, 2, ingest.rows_out) and ingest.rows_out == 7
    assert fetch.rows_out == 4 and fetch.dropped == {"fetch_http_error": 1, "fetch_opted_out": 1,
                                                     "fetch_too_small": 1}
    assert instruct.rows_in == 4
    part = pq.read_table(out / "instruct" / "part-00000.parquet")
    assert {"image", "image_sha256", "http_status", "instruction"} <= set(part.column_names)  # passed through
    status = {s["stage"]: s for s in collect(str(out))["stages"]}
    assert list(status)[:3] == ["ingest", "fetch", "instruct"] and status["fetch"]["rows_out"] == 4
    again = run_pipeline(cfg, str(out), to_stage="instruct")
    assert [s.computed for s in again.stages] == [0, 0, 0]
    storage = Storage(str(out))  # validate's chain check links instruct to fetch, not ingest
    assert check_chain(storage, stage_names(out_config(storage))[:3], {}, [])[0] == []
    wrong, _ = check_chain(storage, ["ingest", "instruct"], {}, [])
    assert any("instruct partition" in line and "ingest partition" in line for line in wrong), wrong


def test_tools_read_the_graph_from_out(tmp_path):
    """status and validate walk the graph of the run that wrote OUT (its config.yaml), a section that no
    longer validates falling back to its defaults."""
    from editgen.pipeline.config import out_config
    from editgen.pipeline.storage import Storage

    storage = Storage(str(tmp_path))
    assert stage_names(out_config(storage)) == stage_names()  # no config.yaml: the defaults
    storage.write_text("render:\n  source: real\ninstruct:\n  max_attempts: '***'\n", "config.yaml")
    assert stage_names(out_config(storage))[:3] == ["ingest", "fetch", "instruct"]


# ---- hostile servers (issue 19 item 2): one deadline for connect + TLS + headers + body + redirects ----
DEADLINE = {"timeout": 2.0, "max_seconds": 0.8, "retries": 0}  # each drip (0.2 s) and hop well within timeout


@pytest.mark.parametrize("name", ["drip-body.png", "drip-headers.png", "hop/5", "tls"])
def test_a_dripping_server_is_cut_at_max_seconds(server, name):
    """Bytes dripped into the body or the header block, slow redirects, a TLS handshake that never
    ends: each read is in time, the whole request is not. The old code kept the body drip after ~50 s,
    never ended the header drip, ended the TLS one at `timeout` (2 s) and the redirects after 1.5 s."""
    stage = FetchStage(real_cfg(**DEADLINE))
    stage.setup()  # the session, its TLS context and the pools exist before the clock starts
    try:
        with DripServer() as tls:
            url = f"https://127.0.0.1:{tls.port}/photo.png" if name == "tls" else server.url(name)
            hops = [server.count(f"hop/{i}") for i in range(6)]
            table = pa.table({"id": ["r0"], "url": [url]})
            t0 = time.monotonic()
            out = stage.process_partition(table)
            took = time.monotonic() - t0
            row = out.to_pylist()[0]
    finally:
        stage.teardown()
    assert row["drop_reason"] == "fetch_timeout" and "fetch.max_seconds=0.8" in row["fetch_error"], row
    assert 0.75 < took < 0.8 + 0.45, took
    if name == "hop/5":  # the deadline falls in the second hop
        assert sum(server.count(f"hop/{i}") - n for i, n in enumerate(hops)) == 2


def test_https_is_verified_and_bound_by_the_deadline(tmp_path):
    """TLS runs on the adapter's own context and deadline-bound socket class: a certificate from an
    unknown CA is still refused; once the CA is trusted the image comes through, and a body dripped
    over TLS is cut at max_seconds like one over plain HTTP."""
    pytest.importorskip("cryptography")
    context, ca = tls_context(tmp_path)
    stage = FetchStage(real_cfg(**DEADLINE))
    stage.setup()
    try:
        with ImageServer(tls=context) as https:
            table = pa.table({"id": ["a", "b"], "url": [https.url("photo.png"), https.url("drip-body.png")]})
            rows = stage.process_partition(table).to_pylist()
            for row in rows:
                assert row["drop_reason"] == "fetch_connection_error", row
                assert "CERTIFICATE_VERIFY_FAILED" in row["fetch_error"], row
            assert stage.fetcher is not None
            pool_kw = stage.fetcher.session.get_adapter("https://").poolmanager.connection_pool_kw
            pool_kw["ssl_context"].load_verify_locations(ca)
            t0 = time.monotonic()
            rows = stage.process_partition(table).to_pylist()
            took = time.monotonic() - t0
    finally:
        stage.teardown()
    assert rows[0]["status"] == "kept" and rows[0]["image_width"] == 64, rows[0]
    assert rows[1]["drop_reason"] == "fetch_timeout" and "fetch.max_seconds=0.8" in rows[1]["fetch_error"], rows[1]
    assert took < 0.8 + 0.45, took


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_thread_or_socket_outlives_the_stage(server):
    """Timed-out, refused and finished requests leave no socket and no thread behind once the worker is
    torn down (the drips' server threads end as their client hangs up)."""
    names = ["drip-body.png", "drip-headers.png", "hop/3", "photo.png", "redirect", "missing.png"]
    urls = [server.url(n) for n in names] + [f"http://localhost:{server.httpd.server_address[1]}/photo.png"]

    def settled(threads: int, fds: int) -> bool:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if threading.active_count() <= threads and _open_fds() <= fds:
                return True
            time.sleep(0.1)
        return False

    threads, fds = threading.active_count(), _open_fds()
    for _ in range(2):
        rows = fetch_table(urls, **DEADLINE).to_pylist()
        assert [r["drop_reason"] for r in rows][:3] == ["fetch_timeout"] * 3 and rows[3]["status"] == "kept"
    assert settled(threads, fds), (threading.enumerate(), _open_fds(), fds)


# ---- SSRF (issue 19 item 6): an address is judged by where it goes, IPv4 inside IPv6 included ----
REFUSED = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fe80::1%1", "fc00::1", "fd12:3456::1", "fec0::1",
    "ff02::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:10.0.0.1", "::ffff:a9fe:a9fe",  # IPv4-mapped
    "::ffff:0:10.0.0.1", "::ffff:0:a9fe:a9fe",  # IPv4-translated (SIIT)
    "::10.0.0.1", "::a00:1", "::127.0.0.1", "::a9fe:a9fe",  # IPv4-compatible
    "64:ff9b::10.0.0.1", "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1",  # NAT64 well-known
    "64:ff9b:1::a00:1", "64:ff9b:1::808:808", "64:ff9b:1:ffff::1",  # local-use NAT64: all of it
    "2002:a00:1::", "2002:a9fe:a9fe::1", "2002:7f00:1:1::1", "2002:c0a8:101::",  # 6to4
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1 (inverted)
    "2001:0:a00:1:8000:63bf:f7f7:f7f7",  # Teredo, server 10.0.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "2001:470:1::5efe:a00:1", "2001:470:1::200:5efe:a9fe:a9fe", "fe80::5efe:808:808",  # ISATAP
]
ALLOWED = ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:82a::200e",
           "64:ff9b::808:808", "64:ff9b::93.184.216.34", "2002:808:808::1", "2001:470:1::5efe:808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused_in_every_form(address):
    assert refusal(ipaddress.ip_address(address)), address


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address):
    """Not everything is refused: public hosts, and NAT64 / 6to4 forms of public IPv4 (in a DNS64
    network every IPv4-only host resolves to 64:ff9b::/96)."""
    assert refusal(ipaddress.ip_address(address)) is None


def test_one_private_answer_among_public_ones_refuses_the_host():
    check_public("public.example", ["93.184.216.34", "2606:4700:4700::1111"])
    with pytest.raises(BlockedAddress, match=r"rebind\.example resolves to non-public address 64:ff9b::a9fe:a9fe"):
        check_public("rebind.example", ["93.184.216.34", "64:ff9b::a9fe:a9fe"])


def test_private_spellings_are_refused_through_the_fetch_path(server):
    """Every spelling of the test server's own address, literal or looked up (localhost), is refused
    before any connection, with block_private_addresses on; the server never sees a request."""
    port = server.httpd.server_address[1]
    hosts = ["127.0.0.1", "localhost", "2130706433", "0x7f000001", "0x7f.1", "0177.0.0.1", "127.1", "[::1]",
             "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]",
             "[2002:7f00:1::]", "[::ffff:0:127.0.0.1]", "[64:ff9b:1::7f00:1]"]
    before = server.count("photo.png")
    rows = fetch_table([f"http://{h}:{port}/photo.png" for h in hosts], block_private_addresses=True).to_pylist()
    for host, row in zip(hosts, rows, strict=True):
        assert row["drop_reason"] == "fetch_bad_url" and "non-public address" in row["fetch_error"], (host, row)
    assert server.count("photo.png") == before


# ---- memory bombs (issue 19 item 9): decoded bytes are budgeted per worker, refused from the header ----
BOMB_SETTINGS = {"max_pixels": 20_000_000, "decode_memory_bytes": 64 * 2**20, "max_bytes": 1_000_000}


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """4000 x 4000 RGBA, 62 KB: under max_pixels, 64 MB decoded (~150 MB with its matte)."""
    data = png_bomb(4000, 4000)
    with Image.open(io.BytesIO(data)) as img:
        img.verify()  # a valid PNG: only its size is hostile
    return data


@pytest.mark.parametrize(("limit", "words"), [
    ({}, "fetch.decode_memory_bytes=67108864"),  # under max_pixels, over what a worker may decode
    ({"max_pixels": 10_000_000}, "fetch.max_pixels=10000000"),  # the old check decoded the PNG first
])
def test_a_png_bomb_is_refused_from_its_header(bomb, limit, words):
    """Refused from its header, before a single pixel buffer exists (Pillow creates none; Python
    allocates well under a megabyte). PngImageFile.getexif used to decode the whole image to look for
    an EXIF chunk after the pixels, so even the max_pixels check came after a full decode."""
    cfg = real_cfg(**{**BOMB_SETTINGS, **limit}).fetch
    stats = Image.core.get_stats()
    tracemalloc.start()
    try:
        out = prepare_image(bomb, cfg, (64, 64))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.reason == "fetch_too_large" and out.data is None and words in out.error, out
    assert (out.original_width, out.original_height) == (4000, 4000)
    after = Image.core.get_stats()
    assert (after["new_count"], after["allocated_blocks"]) == (stats["new_count"], stats["allocated_blocks"])
    assert peak < 2**20, peak


def test_a_png_bomb_is_dropped_through_the_stage(server, bomb):
    url = server.add_image("bomb.png", bomb)
    row = fetch_table([url, server.url("photo.png")], **BOMB_SETTINGS).to_pylist()
    assert row[0]["drop_reason"] == "fetch_too_large" and "decode_memory_bytes" in row[0]["fetch_error"]
    assert row[1]["status"] == "kept"


def test_png_text_chunks_are_capped():
    """Pillow inflates a PNG's text chunks as it opens it (up to 64 MB an image by default): fetch caps
    them at 4 MB, so 5.4 MB of zTXt (a few KB of file) is a decode error, not 64 MB x threads."""
    info = PngImagePlugin.PngInfo()
    for i in range(6):  # each under Pillow's 1 MB a chunk
        info.add_text(f"Comment{i}", "a" * 900_000, zip=True)
    data = encode(gradient(80, 80), pnginfo=info)
    assert len(data) < 20_000
    out = prepare_image(data, real_cfg().fetch, (64, 64))
    assert out.reason == "fetch_decode_error" and "text chunks" in out.error, out


@pytest.mark.parametrize(("fmt", "reason"), [
    ("PNG", None), ("JPEG", None), ("GIF", None), ("WEBP", None), ("BMP", None), ("TIFF", None),
    ("PPM", "fetch_not_image"), ("TGA", "fetch_not_image"), ("PCX", "fetch_not_image"),
    ("SGI", "fetch_not_image"), ("EPS", "fetch_not_image"), ("ICO", "fetch_not_image"),
])
def test_only_web_image_formats_are_decoded(fmt, reason):
    """Pillow opens some forty formats (EPS through Ghostscript among them); fetch only the web's."""
    out = prepare_image(encode(gradient(80, 80), fmt), real_cfg().fetch, (64, 64))
    assert out.reason == reason, out
    if reason:
        assert "not an image in a format fetch decodes" in out.error


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_an_animation_gives_its_first_frame(fmt):
    red, blue = Image.new("RGB", (80, 80), (255, 0, 0)), Image.new("RGB", (80, 80), (0, 0, 255))
    data = encode(red, fmt, save_all=True, append_images=[blue] * 3)
    out = prepare_image(data, real_cfg(encode_format="png").fetch, (64, 64))
    r, g, b = Image.open(io.BytesIO(out.data)).convert("RGB").getpixel((32, 32))
    assert r > 200 and b < 50, (r, g, b)


def test_the_budget_makes_threads_wait_in_line():
    """Reservations wait (first come, first served) rather than exceed the budget, and are given back
    however the block ends."""
    budget = DecodeBudget(100)
    order: list[str] = []
    first = budget.reserve(60)
    first.__enter__()

    def take(name: str, nbytes: int) -> None:
        with budget.reserve(nbytes):
            order.append(name)
            time.sleep(0.05)

    big = threading.Thread(target=take, args=("big", 80))
    big.start()
    time.sleep(0.1)
    small = threading.Thread(target=take, args=("small", 10))  # fits now, but waits behind big
    small.start()
    time.sleep(0.1)
    assert order == [] and budget.free == 40
    first.__exit__(None, None, None)
    big.join(5)
    small.join(5)
    assert order == ["big", "small"] and budget.free == 100 and budget.peak == 90
    assert not budget.fits(101)
    with pytest.raises(RuntimeError), budget.reserve(100):
        raise RuntimeError("a decode that fails")
    assert budget.free == 100


#: Runs in a child process whose glibc returns large frees to the system at once (MALLOC_MMAP_THRESHOLD_),
#: so RSS follows what is really held. Each measurement forks: a forked child's peak RSS starts afresh.
MEMORY_PROBE = r"""
import json, os, resource, sys, threading
from editgen.pipeline.settings.fetch import FetchConfig
from editgen.sources.budget import DecodeBudget
from editgen.sources.image import decode_cost, open_image, prepare_image, scale_for_output, target_size, upright_size

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def forked(work):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        base = rss()
        result = work()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        os.write(write, json.dumps([peak, result]).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    return json.loads(os.read(read, 1 << 16))

mode, budget, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
cfg, size = FetchConfig(max_pixels=50_000_000, min_side=8, decode_memory_bytes=budget), (256, 256)
bodies = [open(p, "rb").read() for p in paths]
if mode == "each":
    out = []
    for data in bodies:
        img = open_image(data)
        stored, upright = img.size, upright_size(img)
        target = target_size(cfg, *upright, size)
        scale_for_output(img, cfg, target, upright)
        peak, reason = forked(lambda: prepare_image(data, cfg, size).reason)
        out.append([peak, decode_cost(img, stored, target), reason])
else:
    shared = DecodeBudget(budget)
    def run():
        reasons = []
        threads = [threading.Thread(target=lambda d=d: reasons.append(prepare_image(d, cfg, size, shared).reason))
                   for d in bodies]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return [reasons, shared.peak]
    out = forked(run)
print(json.dumps(out))
"""


def _probe(mode: str, budget: int, paths: list[Path]) -> Any:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, mode, str(budget), *map(str, paths)],
                          capture_output=True, text=True, env=env, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> dict[str, Path]:
    """One 2.4 MP image per decode path the cost model distinguishes, as files for the probe."""
    tmp_path = tmp_path_factory.mktemp("kinds")
    grey = Image.linear_gradient("L").resize((1600, 1500))
    rgb = Image.merge("RGB", [grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey])
    rgba = Image.merge("RGBA", [*rgb.split(), grey.transpose(Image.Transpose.FLIP_TOP_BOTTOM)])
    exif = Image.Exif()
    exif[0x0112] = 6
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    kinds = {
        "png-rgb": encode(rgb), "png-rgba": encode(rgba), "png-la": encode(Image.merge("LA", [grey, grey])),
        "png-p-transparent": encode(rgb.quantize(64), transparency=3), "png-grey": encode(grey),
        "png-16bit": encode(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)),
        "png-exif-rotated": encode(rgba, exif=exif.tobytes()), "png-icc": encode(rgb, icc_profile=icc),
        "jpeg-progressive-444": encode(rgb, "JPEG", quality=90, progressive=True, subsampling=0),
        "jpeg-cmyk": encode(rgb.convert("CMYK"), "JPEG"), "webp": encode(rgba, "WEBP"),
        "webp-animated": encode(rgb, "WEBP", save_all=True, append_images=[rgb.rotate(5)]),
        "gif-animated": encode(rgb.quantize(128), "GIF", save_all=True, append_images=[rgb.quantize(64)]),
        "tiff": encode(rgb, "TIFF", compression="tiff_deflate"), "bmp": encode(rgb, "BMP"),
    }
    for name, data in kinds.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in kinds}


def test_decode_cost_bounds_the_real_peak(kinds):
    """The header estimate is an upper bound of the memory a decode really takes (peak RSS of a child
    process), for every mode, format and step the model counts; and not wildly above it for the
    common PNG/GIF/BMP cases, so the budget is not wasted."""
    measured = _probe("each", 2**30, list(kinds.values()))
    for name, (peak, cost, reason) in zip(kinds, measured, strict=True):
        assert reason is None, (name, reason)
        assert peak <= cost, f"{name}: peak {peak / 2**20:.1f} MiB > estimate {cost / 2**20:.1f} MiB"
        if name.startswith(("png-rgb", "png-rgba", "gif", "bmp")):
            assert cost < 2 * peak, f"{name}: estimate {cost / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB"


def test_concurrent_decodes_stay_within_the_budget(kinds):
    """Eight threads decoding eight RGBA PNGs at once hold no more than the budget (about two and a
    half decodes' worth), though without it they take far more; every image is still kept."""
    paths = [kinds["png-rgba"]] * 8
    one = _probe("each", 2**30, paths[:1])[0][1]
    budget = int(2.5 * one)
    peak, (reasons, reserved) = _probe("threads", budget, paths)
    assert reasons == [None] * 8 and one * 2 <= reserved <= budget
    assert peak <= budget, f"peak {peak / 2**20:.1f} MiB > budget {budget / 2**20:.1f} MiB"
    free_peak, _ = _probe("threads", 100 * one, paths)
    assert free_peak > 1.5 * budget, f"without the budget: {free_peak / 2**20:.1f} MiB"
