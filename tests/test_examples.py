"""The KubeRay example (examples/kuberay/) holds what its comments and docs/scale.md promise."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from precompute.adapters import backend_class
from precompute.config import load_config
from precompute.plan import plan_actors
from precompute.space import GridSpace

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "examples" / "kuberay"
JOB = KUBERAY / "job.toml"


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KUBERAY / "rayjob.yaml").read_text())
    return document


def head_container(rayjob: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
        "containers"
    ]
    assert len(containers) == 1
    return containers[0]


def workers(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return groups


def gpus(group: dict[str, Any]) -> int:
    return sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in group["template"]["spec"]["containers"])


def test_it_is_a_rayjob_that_cleans_up_and_cannot_hang(rayjob: dict[str, Any]) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int)
    assert spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["activeDeadlineSeconds"], int)
    assert spec["activeDeadlineSeconds"] > 0
    assert 0 <= spec["backoffLimit"] <= 3
    assert 0 <= spec["submitterConfig"]["backoffLimit"] <= 3


def test_the_entrypoint_runs_the_config_that_the_configmap_mounts(rayjob: dict[str, Any]) -> None:
    command = shlex.split(rayjob["spec"]["entrypoint"])
    assert command[:3] == ["precompute", "run", "--config"]
    assert len(command) == 4
    config = Path(command[3])
    head = head_container(rayjob)
    mounts = [m for m in head["volumeMounts"] if Path(m["mountPath"]) == config.parent]
    assert len(mounts) == 1
    volumes = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mounts[0]["name"]]
    items = {item["path"]: item["key"] for item in volume["configMap"]["items"]}
    assert items[config.name] == "job.toml"  # the key `kubectl create configmap --from-file=job.toml=...` makes
    assert volume["configMap"]["name"] in (KUBERAY / "README.md").read_text()


def test_the_head_takes_no_tasks_and_a_gpu_group_has_gpus(rayjob: dict[str, Any]) -> None:
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert any(gpus(group) == 1 for group in workers(rayjob))
    assert any(gpus(group) == 0 for group in workers(rayjob))  # the CPU group, for write tasks


def test_images_and_ray_match_the_release(rayjob: dict[str, Any]) -> None:
    pinned = re.search(r'"ray\[data\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned is not None
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == pinned.group(1)
    pods = [rayjob["spec"]["rayClusterSpec"]["headGroupSpec"], *workers(rayjob)]
    for pod in pods:
        for container in pod["template"]["spec"]["containers"]:
            assert container["image"].startswith("ghcr.io/OWNER/precompute:0.1.0")


def test_the_store_url_comes_from_a_secret(rayjob: dict[str, Any]) -> None:
    env = {e["name"]: e for e in head_container(rayjob)["env"]}
    assert "secretKeyRef" in env["PRECOMPUTE_STORE"]["valueFrom"]
    assert "value" not in env["PRECOMPUTE_STORE"]


def test_the_job_config_loads_and_joins_the_cluster_in_ray_address() -> None:
    config = load_config(JOB, env={})
    assert config.run.ray_address is None  # empty and no RAY_ADDRESS: a Ray of the run's own
    inside = load_config(JOB, env={"RAY_ADDRESS": "10.0.0.5:6379"})  # as Ray's job supervisor sets it
    assert inside.run.ray_address == "10.0.0.5:6379"
    assert not backend_class(config.store.url).local_only  # workers on other machines can write to it
    secret = "redis://:s3cret@10.0.0.3:6379/0"
    assert load_config(JOB, env={"PRECOMPUTE_STORE": secret}).store.url == secret


def test_the_job_is_the_babyweight_example_with_the_model_on_the_head() -> None:
    raw = tomllib.loads(JOB.read_text())
    assert Path(raw["model"]["path"]).is_absolute()  # in the head's image, not relative to the ConfigMap
    assert raw["run"]["ray_address"] == ""
    example = load_config(ROOT / "examples" / "babyweight" / "precompute.toml", env={}).space
    space = load_config(JOB, env={}).space
    assert isinstance(space, GridSpace)
    assert isinstance(example, GridSpace)
    assert (space.dimensions, space.template.text) == (example.dimensions, example.template.text)


def test_the_job_scores_on_the_gpu_group_when_it_has_nodes(rayjob: dict[str, Any]) -> None:
    run = load_config(JOB, env={}).run
    containers = [c for group in workers(rayjob) for c in group["template"]["spec"]["containers"]]
    cpus = sum(int(c["resources"]["limits"]["cpu"]) for c in containers)
    with_gpu = plan_actors(run, {"CPU": cpus, "GPU": sum(gpus(g) for g in workers(rayjob))})
    assert (with_gpu.device, with_gpu.actors) == ("gpu", 1)
    assert plan_actors(run, {"CPU": 16}).device == "cpu"  # the GPU group scaled to 0
