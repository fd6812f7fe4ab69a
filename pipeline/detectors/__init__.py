"""Stage 3, the detectors: one package per detector, each with a small face in its
``__init__`` (its config, ``train_<name>``, ``score_<name>``) and its internals behind it.

A detector plugs in with a Train/Score task pair in ``jobs/`` registered in
``jobs.scoring.SCORE_TASKS``; its scores are rows of ``flow_scores`` (schema in
``pipeline.store.schema``) and its evidence reaches the verdict through
``pipeline.verdict`` (see ``docs/architecture.md``). ``features`` and
``distributed_training`` are shared by every detector.
"""
