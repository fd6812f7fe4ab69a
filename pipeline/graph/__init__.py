"""Stage 2, the graph: a night's flows -> ``graph_vertices`` / ``graph_edges`` -> ``atoms``.

``signatures`` (packet-length signatures), ``build`` (the heterogeneous interaction graph,
fan-in history), ``engine`` (graph algorithms behind two engines) and ``partition``
(Leiden atoms per connected component).
"""
