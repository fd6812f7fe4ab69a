import torch

from pipeline.store import model_store


def _writer(value):
    def write(directory):
        model_store.save_tensors(directory / "weights.safetensors", {"w": torch.full((2, 2), value)})
        model_store.save_json(directory / "config.json", {"value": value})
        return {"loss": value}
    return write


def test_same_inputs_give_same_version_and_rerun_reuses_artifact(tmp_path):
    v1 = model_store.model_version("a2gnn", ["2026-01-01", "2026-01-02"], {"lr": 1e-3})
    v2 = model_store.model_version("a2gnn", ["2026-01-02", "2026-01-01"], {"lr": 1e-3})
    assert v1 == v2 and v1.startswith("2026-01-02-")
    first = model_store.write_artifact(tmp_path, "a2gnn", v1, _writer(1.0))
    second = model_store.write_artifact(tmp_path, "a2gnn", v1, _writer(2.0))
    assert first == second
    assert model_store.load_tensors(first / "weights.safetensors")["w"][0, 0] == 1.0


def test_new_config_is_a_new_version_and_latest_is_newest(tmp_path):
    v1 = model_store.model_version("rearview", ["2026-01-01"], {"lr": 1e-3})
    v2 = model_store.model_version("rearview", ["2026-01-01"], {"lr": 1e-4})
    assert v1 != v2
    model_store.write_artifact(tmp_path, "rearview", v1, _writer(1.0))
    model_store.write_artifact(tmp_path, "rearview", v2, _writer(2.0))
    assert [m["version"] for m in model_store.list_versions(tmp_path, "rearview")][-1] == v2
    assert model_store.latest_version(tmp_path, "rearview")["metrics"] == {"loss": 2.0}


def test_failed_training_leaves_no_version(tmp_path):
    def broken(directory):
        raise RuntimeError("diverged")
    try:
        model_store.write_artifact(tmp_path, "a2gnn", "v", broken)
    except RuntimeError:
        pass
    assert model_store.list_versions(tmp_path, "a2gnn") == []
    assert not any((tmp_path / "models" / "a2gnn").iterdir())
