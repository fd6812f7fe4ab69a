"""A2GNN: graph contrastive embeddings of atoms, scored by the distance to the nearest
training anchor (``models.a2gnn``, ``models.a2gnn_training``).

The face: :class:`A2GNNConfig` (``[a2gnn]`` in ``conf/luigi.cfg``),
``train_a2gnn(spark, train_nights, config, out_dir) -> metrics`` and
``score_a2gnn(spark, flows_df, atoms_df, edges_df, artifact_dir, model_version) -> flow_scores
rows``, and ``benign_calibration(artifact_dir)`` (the benign statistics the verdict
calibrates A2GNN's evidence on). Behind it: ``graphs`` (Spark tables -> atom graphs),
``training`` and ``scoring``.
"""
from models.a2gnn_config import A2GNNConfig
from pipeline.detectors import lazy_face

__all__ = ["A2GNNConfig", "benign_calibration", "score_a2gnn", "train_a2gnn"]

__getattr__ = lazy_face(__name__, {
    "train_a2gnn": "pipeline.detectors.a2gnn.training",
    "score_a2gnn": "pipeline.detectors.a2gnn.scoring",
    "benign_calibration": "pipeline.detectors.a2gnn.scoring",
})
