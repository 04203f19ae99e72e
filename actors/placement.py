"""Ray start-up and placement: every role's resources become one placement group, here and nowhere else."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import ray
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.errors import RuntimeSetupError  # noqa: F401 - raised here, and importable from here as before
from actors.runtime_env import actor_env_vars, job_env_vars  # noqa: F401 - importable from here as before
from learner.config import RoleResources, RuntimeConfig

log = logging.getLogger(__name__)


def job_runtime_env() -> dict:
    """The runtime env of the Ray job this process runs in ({} outside a job). Ray injects it as JSON in
    RAY_JOB_CONFIG_JSON_ENV_VAR and merges it with ray.init's runtime env, refusing any key set by both."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}


def driver_runtime_env() -> dict:
    """ray.init's runtime env: the actors' env vars minus those the enclosing Ray job already sets (the job's
    value wins: it is what the submitter asked for), so Ray's merge never meets the same key twice."""
    taken = set((job_runtime_env().get("env_vars") or {}))
    env = {k: v for k, v in actor_env_vars().items() if k not in taken}
    return {"env_vars": env} if env else {}


def connect(rt: RuntimeConfig) -> str:
    """Join RAY_ADDRESS / runtime.ray_address, or start a local cluster. Fails fast, never hangs."""
    if ray.is_initialized():
        return "already connected"
    address = rt.ray_address or os.environ.get("RAY_ADDRESS")
    env = driver_runtime_env()
    if address:
        _check_reachable(address, rt.connect_timeout_s)
        try:
            ray.init(address=address, runtime_env=env, log_to_driver=True)
        except Exception as e:  # noqa: BLE001 - re-raised with what to change
            raise RuntimeSetupError(
                f"could not join the Ray cluster at {address!r} ({type(e).__name__}: {e}). Check RAY_ADDRESS / runtime.ray_address, "
                "or unset both to start a local cluster."
            ) from None
        return f"joined {address}"
    ray.init(
        num_cpus=rt.local_num_cpus or os.cpu_count(), object_store_memory=rt.object_store_mb * 1024 * 1024,
        include_dashboard=False, runtime_env=env, log_to_driver=True,
    )
    return "started a local Ray cluster"


def _check_reachable(address: str, timeout: float) -> None:
    """A TCP probe before ray.init, which otherwise retries for a long time against a dead address."""
    import socket

    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RuntimeSetupError(f"Ray address {address!r} is not host:port, ray://host:port or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=min(timeout, 5.0)):
            pass
    except OSError as e:
        raise RuntimeSetupError(
            f"no Ray cluster answers at {address!r} ({e}). Start one (`ray start --head`), fix RAY_ADDRESS / runtime.ray_address, "
            "or unset both to start a local cluster."
        ) from None


ROLES = ("rollout", "reward", "gold", "learner")


@dataclass
class Placement:
    pg: PlacementGroup
    bundle_of: dict[str, list[int]]  # role -> bundle indices (one per actor)

    def options(self, role: str, i: int, res: RoleResources) -> dict:
        return {
            "num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "resources": dict(res.resources),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=self.pg, placement_group_bundle_index=self.bundle_of[role][i]),
        }

    def remove(self) -> None:
        remove_placement_group(self.pg)


def bundles(rt: RuntimeConfig) -> tuple[list[dict], dict[str, list[int]]]:
    out, idx = [], {}
    for role in ROLES:
        res: RoleResources = getattr(rt, role)
        n = rt.rollout_actors if role == "rollout" else rt.learner.ranks if role == "learner" else 1
        idx[role] = []
        for _ in range(n):
            b = {"CPU": res.num_cpus, **res.resources}
            if res.num_gpus:
                b["GPU"] = res.num_gpus
            idx[role].append(len(out))
            out.append(b)
    return out, idx


def place(rt: RuntimeConfig) -> Placement:
    """One PACK placement group for all roles; raise (not hang) if the cluster cannot hold it."""
    bs, idx = bundles(rt)
    need_cpu = sum(b.get("CPU", 0) for b in bs)
    need_gpu = sum(b.get("GPU", 0) for b in bs)
    have = ray.cluster_resources()
    if need_cpu > have.get("CPU", 0) or need_gpu > have.get("GPU", 0):
        raise RuntimeSetupError(
            f"the actors need {need_cpu:g} CPUs and {need_gpu:g} GPUs in all ({rt.rollout_actors} rollout actors x {rt.rollout.num_cpus:g} CPU, "
            f"reward {rt.reward.num_cpus:g}, gold {rt.gold.num_cpus:g}, {rt.learner.ranks} learner rank(s) x {rt.learner.num_cpus:g}); the cluster has "
            f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs. Lower runtime.<role>.num_cpus/num_gpus or runtime.rollout_actors, or add nodes."
        )
    custom = {k for b in bs for k in b if k not in ("CPU", "GPU")}
    for k in sorted(custom):
        need = sum(b.get(k, 0) for b in bs)
        if need > have.get(k, 0):
            roles = ", ".join(sorted({r for r in ROLES if k in getattr(rt, r).resources}))
            raise RuntimeSetupError(
                f"runtime.<role>.resources asks for {need:g} of the custom resource {k!r} ({roles}); the cluster has {have.get(k, 0):g}. "
                f"Start nodes with `ray start --resources '{{\"{k}\": N}}'`, or remove it from runtime.{roles.split(', ')[0]}.resources."
            )
    pg = placement_group(bs, strategy="PACK", name=f"tether-{os.getpid()}")
    ready, _ = ray.wait([pg.ready()], timeout=rt.connect_timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise RuntimeSetupError(
            f"the placement group {bs} could not be placed within {rt.connect_timeout_s:g}s (resources exist in total but not free, "
            "or fragmented across nodes). Free the cluster, lower runtime.<role> resources, or raise runtime.connect_timeout_s."
        )
    return Placement(pg, idx)
