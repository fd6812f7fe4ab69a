"""RearView: screening by a conditional VAE, refinement by GraphSAGE over FIFO session
graphs, decided on benign validation flows (Liu et al., "RearView", adapted; see
``docs/benchmarks.md``).

The face: :class:`RearViewConfig` (``[rearview]`` in ``conf/luigi.cfg``),
``train_rearview(spark, flows_df, config, out_dir) -> metrics`` and
``score_rearview(spark, flows_df, artifact_dir, model_version) -> flow_scores rows`` and
``benign_calibration(artifact_dir)`` (the benign validation flows' evidence).
Behind it: ``conditions`` (triplets, novelty, validation split), ``session`` (windows,
screening, edge embeddings), ``decision`` (refinement ensemble, tails, decision rules),
``training``, ``inference`` (one process) and ``scoring`` (Spark tasks); ``windows`` and
``bursts`` are the FIFO queue's arithmetic.
"""
from pipeline.detectors.rearview.config import RearViewConfig

__all__ = ["RearViewConfig", "benign_calibration", "score_rearview", "train_rearview"]


def __getattr__(name: str):
    # Training and scoring are imported when first asked for: training imports torch (~8 s),
    # which reading the configuration (every luigi process) must not pay.
    if name == "train_rearview":
        from pipeline.detectors.rearview.training import train_rearview

        return train_rearview
    if name == "score_rearview":
        from pipeline.detectors.rearview.scoring import score_rearview

        return score_rearview
    if name == "benign_calibration":
        from pipeline.detectors.rearview.inference import benign_calibration

        return benign_calibration
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
