from pipeline.store.schema import TABLES, spark_schema


def test_session_is_local_with_hive_catalog(spark):
    assert spark.sparkContext.master.startswith("local")
    assert spark.conf.get("spark.sql.catalogImplementation") == "hive"


def test_every_table_schema_converts_to_spark(spark):
    for name in TABLES:
        struct = spark_schema(name)
        assert [f.name for f in struct.fields] == TABLES[name].names
        assert spark.createDataFrame([], struct).count() == 0


def test_a_fixed_driver_heap_is_the_configured_memory_from_the_start(tmp_path):
    from pipeline.spark import FIXED_HEAP_KEY, session_settings

    conf = tmp_path / "spark.conf"
    conf.write_text("spark.driver.memory 3g\nspark.driver.extraJavaOptions -XX:+UseParallelGC\n"
                    f"{FIXED_HEAP_KEY} true\n")
    settings = session_settings(tmp_path, conf)
    assert settings["spark.driver.extraJavaOptions"] == "-XX:+UseParallelGC -Xms3g -XX:+AlwaysPreTouch"
    assert FIXED_HEAP_KEY not in settings  # ours, never handed to Spark
    conf.write_text("spark.driver.memory 3g\nspark.driver.extraJavaOptions -XX:+UseParallelGC\n")
    assert session_settings(tmp_path, conf)["spark.driver.extraJavaOptions"] == "-XX:+UseParallelGC"


def test_the_session_runs_with_the_fixed_heap_of_conf(spark):
    options = spark.sparkContext.getConf().get("spark.driver.extraJavaOptions")
    memory = spark.sparkContext.getConf().get("spark.driver.memory")
    assert f"-Xms{memory}" in options and "-XX:+AlwaysPreTouch" in options
