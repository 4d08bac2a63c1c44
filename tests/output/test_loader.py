"""Training loader: paired crops (same resize/crop/flip on both images), DataLoader workers (never more
than shards), diffusers' batch keys with a tokenizer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from editgen.output.loader import instruct_pix2pix_dataset, make_dataloader, paired_transform, shard_urls
from editgen.tiny.synthetic import encode
from tests.support import filter_partitions, write_shards

W, H = 48, 40  # non-square, so the resize and the crop both matter


def coord_image(w: int = W, h: int = H) -> np.ndarray:
    """R encodes x, G encodes y: any crop/flip is readable from the pixels."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = (np.arange(w) * 5)[None, :]
    img[..., 1] = (np.arange(h) * 6)[:, None]
    img[..., 2] = 128
    return img


def assert_paired(x0: torch.Tensor, x1: torch.Tensor) -> None:
    """edited = 255 - input pixelwise, so after an identical transform x1 == -x0 in [-1, 1]."""
    assert x0.shape == x1.shape and x0.dtype == torch.float32
    assert x0.min() >= -1 and x0.max() <= 1
    torch.testing.assert_close(x1, -x0, atol=1e-4, rtol=0)


def test_paired_transform_same_crop_and_flip():
    a = coord_image()
    pa_, pb = Image.fromarray(a), Image.fromarray(255 - a)
    g = torch.Generator().manual_seed(0)
    lefts, flips = set(), set()
    for _ in range(40):
        x0, x1 = paired_transform(pa_, pb, resolution=32, max_upscale=1.3, generator=g)
        assert x0.shape == (3, 32, 32)
        assert_paired(x0, x1)
        red = x0[0]
        flips.add(bool(red[0, 0] > red[0, -1]))
        lefts.add(round(float(red[:, 0].mean()), 2))
    assert flips == {True, False} and len(lefts) > 5  # flips happen, crops move


def test_center_crop_without_resize_is_exact():
    a = coord_image(40, 32)  # shorter side == resolution: no resize, crop columns 4..35
    x0, _ = paired_transform(Image.fromarray(a), Image.fromarray(a), resolution=32, center_crop=True,
                             random_flip=False)
    want = torch.from_numpy(a[:, 4:36]).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(x0, want)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    a = coord_image()

    def coordinates(t: pa.Table) -> pa.Table:
        t = t.set_column(t.column_names.index("input_image"), "input_image", pa.array([encode(a)] * t.num_rows))
        return t.set_column(t.column_names.index("edited_image"), "edited_image",
                            pa.array([encode(255 - a)] * t.num_rows))

    records = filter_partitions(root, parts=3, candidates=2, size=16, keep_fraction=1.0, edit=coordinates)
    write_shards(root, records, samples_per_shard=5)
    return root


def test_dataloader_with_workers_yields_paired_batches(shards):
    urls = shard_urls(str(shards))
    assert len(urls) == 5  # 24 samples / 5 per shard
    dl = make_dataloader(str(shards), batch_size=4, num_workers=2, resolution=32, max_upscale=1.2,
                         shuffle_buffer=8)
    seen = 0
    prompts = []
    for batch in dl:
        assert set(batch) >= {"input_image", "edit_prompt", "edited_image"}
        assert batch["input_image"].shape[1:] == (3, 32, 32)
        for x0, x1 in zip(batch["input_image"], batch["edited_image"], strict=True):
            assert_paired(x0, x1)
        prompts += batch["edit_prompt"]
        seen += len(batch["edit_prompt"])
    assert seen == 24  # each sample exactly once per epoch across workers
    assert all(p.startswith("add a red box") for p in prompts)


def test_dataset_from_shard_list(shards):
    ds = instruct_pix2pix_dataset(shard_urls(str(shards))[:1], resolution=16, shuffle_shards=False,
                                  shuffle_buffer=0)
    items = list(ds)
    assert len(items) == 5 and isinstance(items[0]["edit_prompt"], str)


def test_workers_capped_at_the_shard_count(shards, caplog):
    """Two workers on one shard: the second would read nothing, so only one is started, with a line saying
    why and how to get more shards; every sample is still read once."""
    one = shard_urls(str(shards))[:1]
    with caplog.at_level("WARNING", logger="editgen"):
        dl = make_dataloader(one, batch_size=2, num_workers=2, resolution=16, shuffle_buffer=0)
    assert dl.num_workers == 1
    assert "1 shard(s) for this node, so 1 DataLoader worker(s) instead of 2" in caplog.text
    assert "shard.samples_per_shard" in caplog.text
    assert sum(len(b["edit_prompt"]) for b in dl) == 5


def test_tokenizer_gives_the_keys_diffusers_loop_reads(shards):
    from editgen.tiny.clip_tokenizer import load_clip_tokenizer

    tok = load_clip_tokenizer()
    dl = make_dataloader(str(shards), batch_size=3, num_workers=0, resolution=16, shuffle_buffer=0, tokenizer=tok)
    batch = next(iter(dl))
    assert set(batch) == {"original_pixel_values", "edited_pixel_values", "input_ids", "__key__"}  # + the sample key
    assert batch["original_pixel_values"].shape == batch["edited_pixel_values"].shape == (3, 3, 16, 16)
    assert batch["input_ids"].shape == (3, tok.model_max_length) and batch["input_ids"][0, 0] == tok.bos_token_id
    for x0, x1 in zip(batch["original_pixel_values"], batch["edited_pixel_values"], strict=True):
        assert_paired(x0, x1)
