"""Whether a Serve config's replicas fit the Ray cluster they are deployed on, checked before
the deploy: Serve would otherwise wait forever for resources that never come (two CPU LLM
replicas and two ingress replicas on 2 cores: the ingress never starts, the app never serves).
"""

from collections.abc import Mapping

from pydantic import BaseModel
from ray.serve.schema import DeploymentSchema, ServeDeploySchema

from serve_app.core.config import AppConfig
from serve_app.core.constants import (
    INGRESS_DEPLOYMENT,
    INGRESS_REPLICAS,
    LLM_SERVER_DEPLOYMENT,
    SERVE_DEFAULT_REPLICA_CPUS,
)


class UnschedulableConfigError(RuntimeError):
    """The config's replicas need more CPUs or GPUs than the cluster has."""


class ReplicaCounts(BaseModel):
    """Replicas a deployment runs at start and at most."""

    start: int
    most: int


def replica_counts(section: DeploymentSchema | None) -> ReplicaCounts:
    """`num_replicas`, or the autoscaling bounds (Serve's default: one replica)."""
    if section is None:
        return ReplicaCounts(start=1, most=1)
    fields = section.model_fields_set
    if "num_replicas" in fields and isinstance(section.num_replicas, int):
        return ReplicaCounts(start=section.num_replicas, most=section.num_replicas)
    if "autoscaling_config" not in fields:
        return ReplicaCounts(start=1, most=1)
    scaling = section.autoscaling_config
    if not isinstance(scaling, Mapping):
        scaling = scaling.model_dump()
    least = int(scaling.get("min_replicas", 1))
    start = max(least, int(scaling.get("initial_replicas") or least))
    return ReplicaCounts(start=start, most=int(scaling.get("max_replicas", start)))


def check_fits(
    config: ServeDeploySchema,
    env: Mapping[str, str],
    cluster_cpus: float,
    cluster_gpus: float,
    fixed_cluster: bool,
) -> None:
    """Raise with the reason when the first application's LLM-server and ingress replicas
    cannot all run: at start, and on a `fixed_cluster` (no autoscaler adds nodes) also at
    the LLM server's `max_replicas`."""
    app = config.applications[0]
    args = AppConfig.from_args(app.args or {}, env)
    accelerator = args.resolve_accelerator(cluster_gpus)
    sections = {section.name: section for section in app.deployments}
    llm = replica_counts(sections.get(LLM_SERVER_DEPLOYMENT))
    ingress_section = sections.get(INGRESS_DEPLOYMENT)
    ingress = (
        replica_counts(ingress_section).start
        if ingress_section is not None and "num_replicas" in ingress_section.model_fields_set
        else INGRESS_REPLICAS[accelerator]
    )
    cpus_per_ingress = _cpus(ingress_section)
    llm_cpus = args.cpu_cores_per_replica if accelerator == "cpu" else 1
    llm_gpus = 0.0 if accelerator == "cpu" else args.tensor_parallel_size * args.gpu_fraction
    counts = {"at start": llm.start} | ({"at max_replicas": llm.most} if fixed_cluster else {})
    for moment, replicas in counts.items():
        cpus = replicas * llm_cpus + ingress * cpus_per_ingress
        gpus = replicas * llm_gpus
        if cpus > cluster_cpus:
            raise UnschedulableConfigError(
                f"{replicas} {LLM_SERVER_DEPLOYMENT} replicas ({moment}) x {llm_cpus:g} CPU + "
                f"{ingress} {INGRESS_DEPLOYMENT} replicas x {cpus_per_ingress:g} CPU "
                f"= {cpus:g} CPUs, but the Ray cluster has {cluster_cpus:g}: Serve would wait "
                "for them forever. Lower the replica counts or the ingress's num_cpus "
                f"(ray_actor_options), or set cpu_cores_per_replica lower."
            )
        if gpus > cluster_gpus:
            raise UnschedulableConfigError(
                f"{replicas} {LLM_SERVER_DEPLOYMENT} replicas ({moment}) x {llm_gpus:g} GPU "
                f"= {gpus:g} GPUs, but the Ray cluster has {cluster_gpus:g}. Lower the replica "
                "counts, or share GPUs with gpu_fraction (a test and benchmark mode)."
            )


def _cpus(section: DeploymentSchema | None) -> float:
    """CPUs one replica of the deployment reserves."""
    if section is None or "ray_actor_options" not in section.model_fields_set:
        return SERVE_DEFAULT_REPLICA_CPUS
    num_cpus = section.ray_actor_options.num_cpus
    return SERVE_DEFAULT_REPLICA_CPUS if num_cpus is None else float(num_cpus)
