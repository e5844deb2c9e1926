"""Launch arguments for the local tritonserver and the built-repository check."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import TritonConfig
from services.common.triton_server import TritonNotFoundError, launch_spec, repository_problems, served_trunk

REPOSITORY = Path(__file__).resolve().parents[3] / "triton_models"


def test_launch_spec_points_at_repository_backends_and_ports() -> None:
    if repository_problems(REPOSITORY):
        pytest.fail("model repository not built (run `make models`)", pytrace=False)
    config = TritonConfig(http_port=18000, grpc_port=18001, metrics_port=18002, model_repository=REPOSITORY)
    spec = launch_spec(config)
    assert spec.argv[0].endswith("tritonserver")
    args = " ".join(spec.argv)
    for expected in (f"--model-repository={REPOSITORY}", "--grpc-port=18001", "--http-port=18000",
                     "--metrics-port=18002", "--strict-model-config=true", "triton-backends"):
        assert expected in args
    assert "nvidia_pytriton.libs" in spec.env["LD_LIBRARY_PATH"]


def test_unbuilt_repository_is_reported(tmp_path) -> None:
    problems = repository_problems(tmp_path, tmp_path / "backends")
    assert any("trunk" in p for p in problems) and any("model.py" in p for p in problems)
    with pytest.raises(TritonNotFoundError, match="switchyard models build"):
        launch_spec(TritonConfig(model_repository=tmp_path))


def test_a_repository_built_for_the_other_trunk_is_reported(tmp_path) -> None:
    (tmp_path / "trunk").mkdir()
    (tmp_path / "trunk" / "variant").write_text("small")
    assert served_trunk(tmp_path) == "small"
    problems = repository_problems(tmp_path, tmp_path / "backends", trunk="base")
    assert "serves the small trunk but models.trunk is base" in problems[0]
    assert "switchyard models build --trunk base" in problems[0]
    assert not any("models.trunk" in p for p in repository_problems(tmp_path, tmp_path / "backends", trunk="small"))


def test_an_unknown_trunk_is_a_build_error(tmp_path) -> None:
    from services.models.build import BuildError, build_repository
    from services.models.paths import ModelPaths

    with pytest.raises(BuildError, match="unknown trunk 'large'"):
        build_repository(ModelPaths(repository=tmp_path / "repo", work_dir=tmp_path), trunk="large")
