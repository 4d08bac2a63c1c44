"""py3langid's classify() for many texts at once, with bit-identical results.

Per caption, py3langid walks a byte DFA in a Python loop and then does a handful of small numpy calls;
that was half of ingest's map phase. Here the DFA walk runs for a whole batch in lockstep (one numpy
gather per byte position), features are counted for the batch with one np.unique, and only the final
scoring runs per text, with exactly the numpy operations (same dtypes, shapes and feature order)
py3langid uses, so every language and confidence is the same to the last bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from py3langid.langid import RAW_FLOOR

#: Texts walked together; sorted by length first, so padding stays small.
CHUNK = 512


class BatchClassifier:
    def __init__(self, ident: Any) -> None:
        self.ident = ident
        nm = ident.tk_nextmove
        self.nm = np.frombuffer(nm, dtype=np.dtype(nm.typecode))  # a view: no copy of the 40 MB table
        self.rowbase = np.asarray(ident._rowbase, np.int64)
        self.out = np.asarray(ident.tk_output, np.int64)

    def classify(self, texts: list[str]) -> list[tuple[str, float]]:
        encoded = [self.ident._encode(t) for t in texts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        result: list[tuple[str, float]] = [("", 0.0)] * len(texts)
        for lo in range(0, len(order), CHUNK):
            idx = order[lo:lo + CHUNK]
            for i, res in zip(idx, self._chunk([encoded[i] for i in idx]), strict=True):
                result[i] = res
        return result

    def _walk(self, data: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(row, feature) of every DFA output, rows in order and each row's features in byte order."""
        lens = np.fromiter((len(d) for d in data), np.int64, len(data))
        width = int(lens.max()) if len(data) else 0
        grid = np.zeros((len(data), width), np.int64)
        if width:
            flat = np.frombuffer(b"".join(data), np.uint8)
            rows = np.repeat(np.arange(len(data)), lens)
            cols = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
            grid[rows, cols] = flat
        feats = np.empty((len(data), width), np.int64)
        state = np.zeros(len(data), np.int64)
        for t in range(width):
            state = self.nm[self.rowbase[state] + grid[:, t]]
            feats[:, t] = self.out[state]
        valid = (np.arange(width)[None, :] < lens[:, None]) & (feats >= 0)
        rows = np.nonzero(valid)[0]
        return rows, feats[valid]

    def _chunk(self, data: list[bytes]) -> list[tuple[str, float]]:
        rows, feats = self._walk(data)
        n_feat = len(self.out) + 1
        keys, first, counts = np.unique(rows * n_feat + feats, return_index=True, return_counts=True)
        order = np.lexsort((first, keys // n_feat))  # per row, features in first-occurrence order
        keys, counts = keys[order], counts[order]
        krow = keys // n_feat
        bounds = np.searchsorted(krow, np.arange(len(data) + 1)).tolist()
        feats, weights = keys % n_feat, np.log1p(counts.astype(np.float32))  # elementwise: as per text
        ptc, pc = self.ident.nb_ptc, self.ident.nb_pc
        empty = np.full(len(self.ident.nb_classes), 0.0 if self.ident._norm_probs else RAW_FLOOR, dtype=np.float32)
        # per text py3langid's _raw_score: the same gather and vector-matrix product
        raw = [weights[a:b] @ ptc[feats[a:b]] + pc if b > a else empty.copy()
               for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return self._decide(data, np.stack(raw)) if raw else []

    def _decide(self, data: list[bytes], scores: np.ndarray) -> list[tuple[str, float]]:
        """py3langid's _decide + classify, row-wise on the batch: only elementwise operations and
        per-row max/sum, which give each row exactly what they give one text."""
        ident = self.ident
        if ident._norm_probs:
            scale = np.array([1.0 / math.sqrt(len(d) or 1) for d in data], np.float64).astype(np.float32)
            scores *= scale[:, None]
            np.exp(scores - scores.max(axis=1, keepdims=True), out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
        for i, j in ident._alias_pairs:
            if ident._norm_probs:
                scores[:, i] += scores[:, j]
                scores[:, j] = 0.0
            else:
                scores[:, i] = np.maximum(scores[:, i], scores[:, j])
                scores[:, j] = RAW_FLOOR
        best = scores.argmax(axis=1)
        conf = scores[np.arange(len(data)), best].tolist()
        out = []
        for i, c in zip(best.tolist(), conf, strict=True):
            if ident.min_confidence is not None and c < ident.min_confidence:
                out.append(("und", c))
            else:
                out.append((ident.nb_classes[i], c))
        return out
