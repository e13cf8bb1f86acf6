"""The deployment examples hold what their comments and docs promise: the KubeRay job (examples/kuberay/,
docs/scale.md), and the image, Deployment and CronJob of examples/deploy/ (checked against the Kubernetes
schemas too)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from precompute.adapters import backend_class
from precompute.cli import Exit
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


DEPLOY = ROOT / "examples" / "deploy"
#: The oldest Kubernetes whose schemas hold every field the manifests use (podFailurePolicy is GA in 1.31).
KUBERNETES = "1.31"


def manifests(name: str) -> dict[str, dict[str, Any]]:
    """The objects of one manifest file, by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / name).read_text())}


def only_container(pod: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod["containers"]
    assert len(containers) == 1
    return containers[0]


def config_path(container: dict[str, Any]) -> Path:
    args: list[str] = container["args"]
    return Path(args[args.index("--config") + 1])


def mounted_config(pod: dict[str, Any], container: dict[str, Any]) -> str:
    """The ConfigMap the container's --config file comes from (and that its key is precompute.toml)."""
    config = config_path(container)
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config.parent]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert {item["path"]: item["key"] for item in volume["configMap"]["items"]} == {config.name: "precompute.toml"}
    name: str = volume["configMap"]["name"]
    return name


def store_secret(container: dict[str, Any]) -> str:
    env = {e["name"]: e for e in container["env"]}
    assert "value" not in env["PRECOMPUTE_STORE"]
    name: str = env["PRECOMPUTE_STORE"]["valueFrom"]["secretKeyRef"]["name"]
    return name


@pytest.mark.parametrize("name", ["deployment.yaml", "cronjob.yaml"])
def test_the_manifests_are_valid_kubernetes_objects(name: str) -> None:
    documents = list(yaml.safe_load_all((DEPLOY / name).read_text()))
    assert documents
    for document in documents:  # strict: a misspelt or misplaced field is an error too
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_deployment_probes_readiness_and_liveness_and_matches_workers_to_its_cpu_limit() -> None:
    objects = manifests("deployment.yaml")
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    serve = only_container(pod)
    args = serve["args"]
    assert args[:3] == ["serve", "--config", "/etc/precompute/precompute.toml"]
    resources = serve["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert {"cpu", "memory"} <= set(resources["limits"])
    assert args[args.index("--workers") + 1] == resources["limits"]["cpu"] == resources["requests"]["cpu"]

    config = load_config(DEPLOY / "precompute.toml", env={})
    (port,) = serve["ports"]
    assert (port["containerPort"], config.serve.host) == (config.serve.port, "0.0.0.0")
    assert serve["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert serve["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    assert objects["Service"]["spec"]["selector"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]

    pause = int(serve["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pause + config.serve.shutdown_seconds  # requests in flight finish
    if serve["securityContext"].get("readOnlyRootFilesystem"):  # the workers' shared files need a writable /tmp
        assert any(m["mountPath"] == "/tmp" for m in serve["volumeMounts"])
    assert mounted_config(pod, serve) in (DEPLOY / "README.md").read_text()
    assert store_secret(serve) in (DEPLOY / "README.md").read_text()
    assert not backend_class(config.store.url).local_only  # the CronJob's pod and these share it


def test_the_cronjob_never_overlaps_never_hangs_and_retries_only_what_a_retry_can_fix() -> None:
    cronjob = manifests("cronjob.yaml")["CronJob"]
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert isinstance(job["activeDeadlineSeconds"], int)
    assert job["activeDeadlineSeconds"] > 0
    assert 1 <= job["backoffLimit"] <= 5
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    run = only_container(pod)
    assert run["args"] == ["run", "--config", "/etc/precompute/precompute.toml"]

    actions: dict[str, set[int]] = {}
    for rule in job["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == run["name"]
            assert rule["onExitCodes"]["operator"] == "In"
            actions.setdefault(rule["action"], set()).update(rule["onExitCodes"]["values"])
    assert actions["Count"] == {Exit.LOCKED, Exit.STORE}  # retried later
    assert actions["FailJob"] == {Exit.CONFIG, Exit.MODEL, Exit.VERIFY, Exit.FULL}  # a retry fails the same way

    serve_pod = manifests("deployment.yaml")["Deployment"]["spec"]["template"]["spec"]
    serve = only_container(serve_pod)
    assert run["image"] == serve["image"]  # one image for both
    assert mounted_config(pod, run) == mounted_config(serve_pod, serve)
    assert store_secret(run) == store_secret(serve)


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and not line.startswith("#"))
    ]


def test_the_image_installs_the_package_and_runs_precompute_as_a_user() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installs = [re.search(r'pip install "\.\[([a-z,]+)\]"', args) for kind, args in steps if kind == "RUN"]
    (extras,) = [set(found.group(1).split(",")) for found in installs if found]
    assert {"cpu", "redis"} <= extras <= set(project["optional-dependencies"])

    copied = {args.split()[0].rstrip("/") for kind, args in steps if kind == "COPY"}
    linked = {
        path.resolve().relative_to(ROOT).as_posix() for path in (ROOT / "precompute").iterdir() if path.is_symlink()
    }
    assert linked
    assert linked | {"pyproject.toml", "precompute"} <= copied

    (entrypoint,) = [json.loads(args) for kind, args in steps if kind == "ENTRYPOINT"]
    assert entrypoint == ["precompute"]
    assert "precompute" in project["scripts"]
    (command,) = [json.loads(args) for kind, args in steps if kind == "CMD"]
    assert command[:2] == ["serve", "--config"]
    serve = only_container(manifests("deployment.yaml")["Deployment"]["spec"]["template"]["spec"])
    assert Path(command[2]) == config_path(serve)

    users = [args for kind, args in steps if kind == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
    pod_user = manifests("deployment.yaml")["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert users[-1] == str(pod_user)
    model = load_config(DEPLOY / "precompute.toml", env={}).model.path
    assert any(kind == "COPY" and args.split()[-1].rstrip("/") == str(model) for kind, args in steps)
