"""Stage 1, ingest: an archive night's capture files -> ``flows``, ``ingest_stats``,
``ingest_errors``.

``capture`` reads the files (formats, link types, bulk decoding), ``flows`` assembles
decoded packets into flows, ``extract`` runs a night (one Spark task per file).
"""
