"""The store every stage writes through: table schemas (``schema``), warehouse partitions
(``warehouse``), versioned model artifacts (``model_store``), the Spark SQL metastore
(``metastore``) and Zeek logs for joins (``zeek``). It imports no stage.
"""
