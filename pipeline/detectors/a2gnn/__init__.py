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

__all__ = ["A2GNNConfig", "benign_calibration", "score_a2gnn", "train_a2gnn"]


def __getattr__(name: str):
    # imported when first asked for, so that reading the configuration stays light
    if name == "train_a2gnn":
        from pipeline.detectors.a2gnn.training import train_a2gnn

        return train_a2gnn
    if name == "score_a2gnn":
        from pipeline.detectors.a2gnn.scoring import score_a2gnn

        return score_a2gnn
    if name == "benign_calibration":
        from pipeline.detectors.a2gnn.scoring import benign_calibration

        return benign_calibration
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
