"""Nearest-anchor candidates through a faiss IVF-Flat index (A2GNN scoring at many anchors).

The exact search (:func:`models.a2gnn_training.nearest_anchor`) costs ``N x A x D`` per
night: 520 s for 1M flows against 219k anchors (docs/benchmarks.md). An inverted-file
index (faiss ``IndexIVFFlat``, L2) splits the anchors into ``lists`` k-means cells and
compares a flow exactly with the anchors of the ``probes`` cells whose centroids lie
nearest to it, so a flow costs about ``(lists + SCANNED_ANCHORS) x D``, ``lists ~ sqrt(A)``:

* ``lists = round(LISTS_PER_SQRT_ANCHOR x sqrt(A))`` (4 sqrt(A): 894 cells at 50k
  anchors, 1,789 at 200k), at most ``A / MIN_ANCHORS_PER_LIST`` (faiss's minimum of 39
  k-means points per centroid);
* ``probes = ceil(lists x SCANNED_ANCHORS / A)``: cells holding about 16,384 anchors.

Why these: on A2GNN embeddings of generated nights (32-d, 8k-200k anchors, 20k-50k flows
each), how often the index found the exact nearest anchor depended mostly on how many
anchors it scanned, little on the number of cells (4 or 8 sqrt(A) alike): scanning
4,096 gave 99.85-100 % up to 98k anchors; at 197k anchors 8,192 gave 99.90-99.92 %
(a flow up to 4 % farther), 16,384 gave 99.986-99.998 % (at most 1.8 % farther) and
24,576 gave 100 %. 16,384 keeps a margin over 99.9 % at the largest measured set;
beyond 200k anchors agreement is unmeasured (rerun ``bench/bench_a2gnn.py
--anchor-search --anchors N``). A fixed share of the anchors (1/16) was not enough at
16k-50k anchors (98.3-99.5 %). HNSW (M 16-32, efSearch up to 128) found the exact
anchor for only 58-85 % of the flows at 98k anchors and was dropped. Below
``EXACT_BELOW_ANCHORS`` (2 x 16,384) the index would scan over half of the anchors;
``auto`` searches exactly there.

The index is an approximation: a flow may get a slightly farther anchor. Agreement and
the largest relative distance difference measured on 1M flows are in docs/benchmarks.md
('## A2GNN: exact vs indexed anchor search'); tests/test_anchor_index.py holds it to
>= 99.9 % on clustered embeddings. :func:`models.a2gnn_training.nearest_anchor`
recomputes the returned distance exactly in float64 for the chosen anchor, as for the
exact search.

Deterministic: k-means runs ``KMEANS_ITERATIONS`` from a fixed seed (``KMEANS_SEED``) on
all anchors (faiss samples only above 256 anchors per cell, i.e. above 1M anchors, and
then with the same seed); a search treats every flow independently. The same anchors,
flows and thread count give identical candidates run to run (1 and 2 threads gave the
same too, tests/test_anchor_index.py). ``threads`` sets faiss's OpenMP threads for the
call; A2GNN passes torch's thread count: 1 in a Spark scoring task
(``pipeline.detectors.a2gnn.scoring.score_frame``), ``cpu_threads`` in training.

Building costs seconds at 100k-200k anchors, so :func:`anchor_index` keeps the last few
indexes, keyed by the anchors array itself (a Spark worker scores many buckets against
one broadcast artifact).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

ANCHOR_SEARCHES = ("exact", "index", "auto")
"""``exact``: blocked GEMM over every anchor; ``index``: IVF-Flat candidates;
``auto``: the index from ``EXACT_BELOW_ANCHORS`` anchors on, exact below."""

SCANNED_ANCHORS = 16_384
"""About this many anchors are compared exactly with each flow (module doc)."""

EXACT_BELOW_ANCHORS = 2 * SCANNED_ANCHORS
"""``auto`` searches exactly below this many anchors (see :func:`uses_index`)."""

LISTS_PER_SQRT_ANCHOR = 4
MIN_ANCHORS_PER_LIST = 39
KMEANS_ITERATIONS = 10
KMEANS_SEED = 1234
INDEX_CACHE_SIZE = 4


@dataclass(frozen=True)
class IVFParameters:
    """``lists`` k-means cells of the index and ``probes`` of them searched per flow."""

    lists: int
    probes: int


def ivf_parameters(num_anchors: int) -> IVFParameters:
    """Cells and probes for ``num_anchors`` anchors (module doc: 4 sqrt(A) cells, as many
    probed as hold about ``SCANNED_ANCHORS`` anchors)."""
    lists = max(1, min(round(LISTS_PER_SQRT_ANCHOR * math.sqrt(num_anchors)),
                       num_anchors // MIN_ANCHORS_PER_LIST))
    return IVFParameters(lists=lists, probes=min(lists, math.ceil(lists * SCANNED_ANCHORS / max(num_anchors, 1))))


def uses_index(search: str, num_anchors: int) -> bool:
    """Whether ``search`` (one of ``ANCHOR_SEARCHES``) goes through the index at ``num_anchors``.

    ``auto`` uses it from ``EXACT_BELOW_ANCHORS`` anchors on: below, the index would scan
    over half of the anchors and the GEMM over every anchor is exact.
    """
    if search not in ANCHOR_SEARCHES:
        raise ValueError(f"anchor search {search!r} is not one of {ANCHOR_SEARCHES}")
    return search == "index" or (search == "auto" and num_anchors >= EXACT_BELOW_ANCHORS)


def build_anchor_index(anchors: np.ndarray, threads: int = 1):
    """A trained ``faiss.IndexIVFFlat`` (L2) holding ``anchors [A, D]`` (ids = row numbers)."""
    import faiss

    anchors = np.ascontiguousarray(anchors, dtype=np.float32)
    parameters = ivf_parameters(anchors.shape[0])
    faiss.omp_set_num_threads(max(1, threads))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(anchors.shape[1]), anchors.shape[1], parameters.lists)
    index.cp.seed = KMEANS_SEED
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.verbose = False
    index.train(anchors)
    index.add(anchors)
    index.nprobe = parameters.probes
    return index


_INDEX_CACHE: OrderedDict[int, tuple[np.ndarray, object]] = OrderedDict()


def anchor_index(anchors: np.ndarray, threads: int = 1):
    """:func:`build_anchor_index` of ``anchors``, built once per anchors array.

    The cache holds the array with its index (at most ``INDEX_CACHE_SIZE``, least
    recently used dropped), so an id cannot be reused by another array while cached;
    an array changed in place after its index was built is not noticed (anchors are
    never edited in place).
    """
    key = id(anchors)
    cached = _INDEX_CACHE.get(key)
    if cached is not None and cached[0] is anchors:
        _INDEX_CACHE.move_to_end(key)
        return cached[1]
    index = build_anchor_index(anchors, threads)
    _INDEX_CACHE[key] = (anchors, index)
    while len(_INDEX_CACHE) > INDEX_CACHE_SIZE:
        _INDEX_CACHE.popitem(last=False)
    return index


def candidate_anchors(embeddings: np.ndarray, anchors: np.ndarray, count: int, threads: int = 1) -> np.ndarray:
    """``[N, count]`` int64 anchor rows nearest first as the index finds them; -1 where the
    probed cells held fewer than ``count`` anchors.

    ``embeddings [N, D]``, ``anchors [A, D]``; ``threads``: faiss OpenMP threads.
    """
    import faiss

    index = anchor_index(anchors, threads)
    faiss.omp_set_num_threads(max(1, threads))
    _, found = index.search(np.ascontiguousarray(embeddings, dtype=np.float32), count)
    return found.astype(np.int64, copy=False)
