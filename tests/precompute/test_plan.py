from __future__ import annotations

import pytest

from precompute.config import ConfigError, RunConfig
from precompute.plan import plan_actors


def test_two_core_machine_leaves_cpu_for_reads_and_writes() -> None:
    plan = plan_actors(RunConfig(), {"CPU": 2.0})
    assert plan.device == "cpu"
    assert plan.actors * plan.cpus_per_actor <= 1.5
    assert plan.gpus_per_actor == 0


def test_gpus_are_used_when_the_cluster_has_them() -> None:
    plan = plan_actors(RunConfig(), {"CPU": 16.0, "GPU": 4.0})
    assert (plan.device, plan.actors, plan.gpus_per_actor, plan.cpus_per_actor) == ("gpu", 4, 1.0, 1.0)
    shared = plan_actors(RunConfig(gpus_per_actor=0.5), {"CPU": 16.0, "GPU": 1.0})
    assert shared.actors == 2


def test_cpu_can_be_forced_on_a_gpu_cluster() -> None:
    plan = plan_actors(RunConfig(device="cpu"), {"CPU": 16.0, "GPU": 4.0})
    assert plan.device == "cpu"
    assert plan.gpus_per_actor == 0


def test_gpu_without_gpus_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="has no GPU"):
        plan_actors(RunConfig(device="gpu"), {"CPU": 2.0})


def test_actors_that_would_take_every_cpu_are_refused() -> None:
    with pytest.raises(ConfigError, match="would hang"):
        plan_actors(RunConfig(actors=2, cpus_per_actor=1.0), {"CPU": 2.0})


def test_an_autoscaling_pool_grows_from_actors_to_max_actors() -> None:
    plan = plan_actors(RunConfig(device="cpu", actors=2, max_actors=8), {"CPU": 16.0})
    assert (plan.actors, plan.max_actors) == (2, 8)
    assert plan.describe().startswith("2..8 CPU actor(s)")
    assert plan_actors(RunConfig(device="cpu", actors=2, max_actors=2), {"CPU": 16.0}).max_actors is None
    with pytest.raises(ConfigError, match=r"\[run\] max_actors: 1 is fewer than the 2 actors"):
        plan_actors(RunConfig(device="cpu", actors=2, max_actors=1), {"CPU": 16.0})
