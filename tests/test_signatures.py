"""Packet-length signatures: Daubechies-4 wavelet statistics, normalised on training flows."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.graph import signatures
from pipeline.store.schema import SPLT_LENGTH


def _flows(sequences, packets):
    return pd.DataFrame({"splt_signed_ps": sequences, "bidirectional_packets": packets})


def test_signature_has_one_value_per_named_statistic():
    sizes = np.random.default_rng(1).integers(-1500, 1500, size=(7, SPLT_LENGTH))
    assert signatures.wavelet_signatures(sizes).shape == (7, len(signatures.SIGNATURE_FEATURES))
    assert len(signatures.SIGNATURE_FEATURES) == 15


def test_short_and_missing_sequences_are_zero_padded():
    matrix = signatures.splt_matrix([[100, -60], None, list(range(40))])
    assert matrix.shape == (3, SPLT_LENGTH)
    assert matrix[0, :3].tolist() == [100.0, -60.0, 0.0]
    assert not matrix[1].any()
    assert matrix[2, -1] == 31.0  # truncated to the first SPLT_LENGTH sizes


def test_identical_packet_sequences_correlate_perfectly_and_different_ones_do_not():
    rng = np.random.default_rng(2)
    base = rng.integers(40, 1500, size=SPLT_LENGTH) * rng.choice([-1, 1], size=SPLT_LENGTH)
    other = rng.integers(40, 1500, size=SPLT_LENGTH) * rng.choice([-1, 1], size=SPLT_LENGTH)
    train = _flows([rng.integers(-1500, 1500, size=SPLT_LENGTH) for _ in range(50)], [20] * 50)
    stats = signatures.fit_signature_normalisation(train)
    unit = signatures.correlation_ready(
        signatures.normalised_signatures(np.vstack([base, base, other]), stats)
    )
    assert unit[0] @ unit[1] == pytest.approx(1.0)
    assert unit[0] @ unit[2] < 0.95


def test_normalisation_is_fitted_only_on_flows_with_enough_packets_and_is_json():
    rng = np.random.default_rng(3)
    big = [rng.integers(-1500, 1500, size=SPLT_LENGTH) for _ in range(20)]
    small = [np.full(4, 9999) for _ in range(20)]
    stats = signatures.fit_signature_normalisation(_flows(big + small, [20] * 20 + [4] * 20))
    only_big = signatures.fit_signature_normalisation(_flows(big, [20] * 20))
    assert stats["flows"] == 20
    assert stats["mean"] == pytest.approx(only_big["mean"])
    assert json.loads(json.dumps(stats)) == stats


def test_fitting_without_any_eligible_flow_says_why():
    with pytest.raises(ValueError, match="more than 8 packets"):
        signatures.fit_signature_normalisation(_flows([[1, 2]], [2]))


def test_stats_from_another_wavelet_setup_are_refused():
    stats = signatures.fit_signature_normalisation(_flows([list(range(32))] * 3, [20] * 3))
    with pytest.raises(ValueError, match="wavelet"):
        signatures.check_signature_stats({**stats, "wavelet": "haar"})


def test_spark_and_pandas_fits_agree(spark):
    rng = np.random.default_rng(4)
    pdf = _flows(
        [rng.integers(-1500, 1500, size=int(rng.integers(5, 40))).astype(np.int32).tolist() for _ in range(60)],
        rng.integers(1, 40, size=60).tolist(),
    )
    df = spark.createDataFrame(pdf, "splt_signed_ps array<int>, bidirectional_packets long").repartition(3)
    from_spark = signatures.fit_signature_normalisation(df)
    from_pandas = signatures.fit_signature_normalisation(pdf)
    assert from_spark["flows"] == from_pandas["flows"]
    assert from_spark["mean"] == pytest.approx(from_pandas["mean"])
    assert from_spark["std"] == pytest.approx(from_pandas["std"])
