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
from pipeline.detectors import lazy_face
from pipeline.detectors.rearview.config import RearViewConfig

__all__ = ["RearViewConfig", "benign_calibration", "score_rearview", "train_rearview"]

# training imports torch (~8 s), which reading the configuration must not pay
__getattr__ = lazy_face(__name__, {
    "train_rearview": "pipeline.detectors.rearview.training",
    "score_rearview": "pipeline.detectors.rearview.scoring",
    "benign_calibration": "pipeline.detectors.rearview.inference",
})
