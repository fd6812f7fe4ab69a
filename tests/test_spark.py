from pipeline.schema import TABLES, spark_schema


def test_session_is_local_with_hive_catalog(spark):
    assert spark.sparkContext.master.startswith("local")
    assert spark.conf.get("spark.sql.catalogImplementation") == "hive"


def test_every_table_schema_converts_to_spark(spark):
    for name in TABLES:
        struct = spark_schema(name)
        assert [f.name for f in struct.fields] == TABLES[name].names
        assert spark.createDataFrame([], struct).count() == 0
