"""How many scoring actors, with which resources: decided from the Ray cluster, overridable in [run].

The rule that matters most on small machines: the actors must never take every CPU, or Ray Data's read
and write tasks never get one and the run hangs (seen with two 1-CPU actors on a 2-core machine).
"""

from __future__ import annotations

from dataclasses import dataclass

from precompute.config import ConfigError, RunConfig

# CPU of each of Ray Data's read and write tasks (they wait on I/O), and what the actors leave free for
# them: one read and one write task at a time at least. A read task at Ray's default of 1 CPU starved the
# writes of a 2-CPU cluster and the run stalled.
IO_TASK_CPUS = 0.25
RESERVED_CPUS = 2 * IO_TASK_CPUS


@dataclass(frozen=True)
class ActorPlan:
    device: str  # cpu | gpu
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    batch_size: int
    write_tasks: int | None
    max_actors: int | None = None  # an autoscaling pool actors..max_actors; None: a fixed pool

    def describe(self) -> str:
        gpu = f", {self.gpus_per_actor:g} GPU" if self.device == "gpu" else ""
        each = f"{self.cpus_per_actor:g} CPU{gpu}"
        count = f"{self.actors}..{self.max_actors}" if self.max_actors else str(self.actors)
        return f"{count} {self.device.upper()} actor(s) x ({each}), batch {self.batch_size}"


def plan_actors(run: RunConfig, cluster: dict[str, float]) -> ActorPlan:
    cpus = float(cluster.get("CPU", 0))
    gpus = float(cluster.get("GPU", 0))
    device = run.device
    if device == "auto":
        device = "gpu" if gpus >= 1 else "cpu"
    if device == "gpu":
        if gpus <= 0:
            raise ConfigError(
                '[run] device: "gpu" but the Ray cluster has no GPU. Fix: `device = "auto"` (or "cpu"), or join a '
                "cluster with GPU nodes through ray_address"
            )
        actors = run.actors or max(1, int(gpus // run.gpus_per_actor))
        cpus_per_actor = run.cpus_per_actor or (1.0 if cpus - RESERVED_CPUS >= actors else 0.25)
        gpus_per_actor = run.gpus_per_actor
        if actors * gpus_per_actor > gpus:
            raise ConfigError(
                f"[run] actors: {actors} actors x {gpus_per_actor:g} GPU need more than the cluster's {gpus:g} GPU(s). "
                "Fix: lower actors or gpus_per_actor"
            )
    else:
        # TensorFlow already spreads one batch over every core, so a few actors beat one per core.
        cpus_per_actor = run.cpus_per_actor or (0.5 if cpus < 4 else 1.0)
        actors = run.actors or max(1, min(4, int((cpus - RESERVED_CPUS) // max(cpus_per_actor, 1.0))))
        gpus_per_actor = 0.0
    if actors * cpus_per_actor > cpus - RESERVED_CPUS:
        raise ConfigError(
            f"[run] actors: {actors} actors x {cpus_per_actor:g} CPU leave no CPU of the cluster's {cpus:g} for "
            "reading and writing, and the run would hang. Fix: lower actors or cpus_per_actor (0.5 is fine)"
        )
    max_actors = run.max_actors
    if max_actors is not None and max_actors < actors:
        raise ConfigError(
            f"[run] max_actors: {max_actors} is fewer than the {actors} actors the pool starts with. Fix: raise "
            "max_actors, lower actors, or remove max_actors for a fixed pool"
        )
    if max_actors == actors:
        max_actors = None
    return ActorPlan(device, actors, cpus_per_actor, gpus_per_actor, run.batch_size, run.write_tasks, max_actors)
