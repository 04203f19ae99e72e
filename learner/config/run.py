"""A whole run (`TetherConfig`): the task and method sections plus training and runtime, its variants, and
validation with readable errors."""
from __future__ import annotations

import copy
import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from learner.config.base import ConfigError, Strict, format_errors
from learner.types import GROUP_ESTIMATORS, Algorithm
from learner.config.compose import ALGORITHM_SECTIONS, compose_dict, without_other_algorithms
from learner.config.methods import (
    ElasticResetConfig,
    EnsembleConfig,
    FDPGConfig,
    GenerationConfig,
    KLConfig,
    PPOConfig,
    QuarkConfig,
    ReferenceConfig,
)
from learner.config.task import GoldConfig, PolicyConfig, ProxyConfig, TaskConfig, TokenizerConfig
from learner.config.tracking import TrackingConfig


GUARD_SIGNALS = ("disagreement", "rank_agreement", "gain_per_kl", "gain_per_kl_ratio", "distinct2_ratio", "ppl_ratio", "repetition", "proxy_fit_beta")


class GuardConfig(Strict):
    """The gold-free over-optimisation guard (learner/guard.py). Its signals are computed and logged (guard/...) at every
    evaluation whatever ``enabled`` says; ``enabled`` arms the alarm and its action. Off by default here and in the papers'
    reproductions, on by default for runs submitted to the service."""

    enabled: bool = Field(False, description="Raise the alarm by the rule below and take `action` (signals are logged regardless).")
    action: Literal["alert", "stop", "reset"] = Field(
        "alert", description="alert: a guard/alarm metric, a warning in the log and a `guard` field on the service's run record (the page's banner). "
        "stop: also end the run and record the checkpoint the guard judges best (the last evaluation before the alarm). "
        "reset: also move the policy back: an Elastic Reset when elastic_reset is enabled, else the checkpoint the guard judges best; then re-arm.")
    signal: Literal[GUARD_SIGNALS] = Field("distinct2_ratio", description="The signal the rule watches (learner/guard.py lists them).")  # type: ignore[valid-type]
    threshold: float = Field(0.66, allow_inf_nan=False, description="Alarm when the signal crosses this (below it for ratios and rank agreement, above "
                             "for disagreement, repetition and proxy_fit_beta). Default: calibrated on seeds 0-1 of the reproduction's runs.")
    patience: int = Field(1, ge=1, le=100, description="Consecutive evaluations past the threshold before the alarm.")
    min_kl: float = Field(1.0, ge=0, allow_inf_nan=False, description="No alarm while KL from pi_0 is at most this (nats).")


class TrainConfig(Strict):
    iterations: int = Field(20, ge=1, description="PPO iterations.")
    eval_every: int = Field(2, ge=1, description="Gold evaluation on held-out prompts every N iterations.")
    eval_prompts: int = Field(64, ge=1, description="Held-out prompts per gold evaluation.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the training run (0 .. 2^31-1: every draw is seeded by seed*100003 + iteration).")
    threads: int | None = Field(None, ge=1, description="torch threads (None = free cores).")
    export_policy: bool = Field(True, description="At the end, write the final policy (and the guard's pick, when its checkpoint exists) "
                                "as Hugging Face folders run_dir/policy and run_dir/policy-guard-pick (`tether export RUN --step N` for any checkpoint).")


class RoleResources(Strict):
    num_cpus: float = Field(1.0, ge=0, description="Ray logical CPUs reserved for each actor of this role.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor of this role (0 on CPU machines).")
    threads: int = Field(1, ge=1, description="torch threads inside the actor (keep the sum across busy roles <= physical cores).")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each actor of this role needs, e.g. {node_b: 1} to put it on the nodes "
        "started with `ray start --resources '{\"node_b\": 1}'` (placement across nodes).")
    @field_validator("resources")
    @classmethod
    def _resources(cls, v: dict[str, float]) -> dict[str, float]:
        if len(v) > 16 or any(not re.match(r"^[A-Za-z0-9_.:-]{1,64}$", k) for k in v) or any(not 0 <= x <= 1e6 for x in v.values()):
            raise ValueError("resources: at most 16 custom Ray resources, names of 1-64 letters, digits and _.:- , amounts 0..1e6")
        return v

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the role's models and batches live: auto = the GPU Ray assigned when num_gpus > 0 and CUDA is "
        "present, else the CPU; cuda = the assigned GPU (an error without one); cpu. vLLM rollouts pick their device themselves.")


class LearnerResources(RoleResources):
    ranks: int = Field(
        1, ge=1, le=1024, description="Learner processes in a data-parallel group (torch.distributed: gloo on CPU, NCCL on GPU), "
        "one actor each with these resources, in the run's placement group. Each takes its share of every batch; the weights "
        "stay identical on every rank (learner/parallel.py). The batch and minibatch sizes must divide by it.")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="The learner group's torch.distributed backend: auto = nccl when the learner is on a GPU, else gloo.")
    sharding: Literal["none", "fsdp2"] = Field(
        "none", description="none: every rank of the learner group holds the whole model (weights, gradients, Adam state). fsdp2: "
        "torch.distributed.fsdp.fully_shard over the group, each transformer block and the rest of the policy, value network and "
        "reference: each rank holds 1/ranks of them (learner/parallel.py). Checkpoints hold full tensors (gathered on rank 0), "
        "so a run resumes on any number of ranks; the weight sync gathers one tensor at a time into the rollout engines' file. "
        "With precision bf16 the blocks compute in bf16 (a MixedPrecisionPolicy; gradients reduced in fp32).")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="bf16: the learner's forward passes under bf16 autocast (weights, optimiser and gradients stay fp32). "
        "auto: bf16 where the learner's device computes bf16 natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX, "
        "as this project's machine), fp32 elsewhere; resolved on the learner's own machine (learner/models/device.py).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (Hugging Face gradient checkpointing): less memory, more compute.")
    compile: bool = Field(
        False, description="torch.compile the transformer bodies of the policy, the value network and the reference (in place: the "
        "weights' names do not change) when the learner starts. Pays on long runs: on a 2-core CPU the first step compiles for "
        "72-91 s (about 40 s with a warm on-disk cache), and then the learn phase is about 1.2x faster in fp32 and 1.3x in bf16 "
        "(make bench, matched work; bench/learn_phase.py --compile times it alone).")


class RuntimeConfig(Strict):
    """How the roles are placed: in-process, or as Ray actors (rollout / reward / gold / learner)."""

    mode: Literal["ray", "local"] = Field("ray", description="ray: each role is a Ray actor (the design); local: every role in this process, no Ray (debugging).")
    engine: Literal["vllm", "transformers"] = Field("vllm", description="Rollout engine: vLLM, or transformers generate (fallback and test reference).")
    rollout_actors: int = Field(1, ge=1, description="Rollout actors generating in parallel; a batch's prompts are split between them.")
    weight_sync: Literal["auto", "tmpfs", "object_store", "collective"] = Field(
        "auto", description="auto: per rollout actor, tmpfs when it is on the learner's node, collective when it is on another. "
        "tmpfs: safetensors in /dev/shm + vLLM reload_weights (one node). object_store: through Ray's object store (across "
        "nodes). collective: the learner broadcasts to every rollout engine's workers in one process group (gloo on CPU, NCCL on GPU), "
        "bucket by bucket into vLLM's in-place reload, no file system (across nodes)."
    )
    vllm_engine_core: Literal["auto", "process", "in_actor"] = Field(
        "auto", description="Where each Ray rollout actor runs vLLM's engine core. in_actor = in the actor's process (no per-step IPC, and "
        "one process to start instead of three: an engine starts in ~3 s instead of ~19 s on 2 CPUs; measured in `make bench`); process = "
        "vLLM's own child processes (vLLM's default; every decoding step crosses a socket). auto = in_actor with runtime.mode: ray and "
        "engine: vllm, else process (a local run's engine lives in the driver, whose torch threads vLLM's CPU worker would take). "
        "in_actor needs runtime.mode: ray and engine: vllm.")
    weight_bucket_mb: float = Field(64.0, gt=0, le=65536, description="collective weight sync: tensors per broadcast, in MiB.")
    max_staleness: int = Field(
        0, ge=0,
        description="Rollouts stamped with a policy_version older than learner.version - max_staleness are dropped (synchronous on-policy PPO: 0).",
    )
    pipeline: bool = Field(
        False, description="One-step off-policy rollouts (opt-in, PPO): while the learner trains on batch i, the rollout engines "
        "generate batch i+1 with the weights from before that update; each batch records its staleness and PPO corrects the stale "
        "tokens with a truncated importance weight (ppo.offpolicy_is_cap). Needs max_staleness >= 1.")
    ray_address: str | None = Field(None, description="Ray cluster to join ('auto', 'ray://host:10001', host:port). None = env RAY_ADDRESS, else a local cluster.")
    local_num_cpus: int | None = Field(None, ge=1, description="CPUs of a locally started Ray cluster (None = all cores).")
    object_store_mb: int = Field(512, ge=64, description="Object store size of a locally started Ray cluster (keep modest on small machines).")
    max_restarts: int = Field(
        3, ge=0, le=1000, description="Times Ray restarts each actor after its process dies (0 = a lost actor ends the run). A restarted "
        "rollout, reward or gold actor gets the current weights and settings and the lost call is retried; a lost learner restarts "
        "from the latest checkpoint (every rank of a group), redoing the iterations since.")
    restart_timeout_s: float = Field(300.0, gt=0, description="Wait at most this long for Ray to bring a lost actor back.")
    connect_timeout_s: float = Field(30.0, gt=0, description="Give up joining a Ray cluster (or placing the actors) after this long, with a message.")
    kv_cache_gib: float = Field(1.0, gt=0, description="vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE).")
    rollout: RoleResources = Field(default_factory=lambda: RoleResources(num_cpus=0.5, threads=1), description="Per rollout actor.")
    reward: RoleResources = Field(default_factory=lambda: RoleResources(num_cpus=0.25, threads=1), description="The proxy-ensemble scorer.")
    gold: RoleResources = Field(default_factory=lambda: RoleResources(num_cpus=0.25, threads=1), description="The gold / drift evaluator.")
    learner: LearnerResources = Field(default_factory=lambda: LearnerResources(num_cpus=1.0, threads=2), description="The learner.")
    checkpoint_every: int = Field(8, ge=0, description="Save a full checkpoint every N iterations (0 = only at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept per run (oldest deleted).")


class TetherConfig(Strict):
    """A whole run. Presets in configs/*.yaml are partial versions of this; unspecified fields take these defaults."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Run name (letters, digits, '_', '.', '-').")
    algorithm: Algorithm = Field(
        "ppo", description="ppo: PPO with a KL penalty (+ Elastic Reset via elastic_reset); fdpg: f-DPG (section fdpg); quark: Quark (section quark). "
        "SALSA is any of them with reference.kind: soup.",
    )
    data_dir: str = Field("data", description="Where task assets are cached (relative to the working directory unless absolute).")
    runs_dir: str = Field("runs", description="Where run folders are written.")
    task: TaskConfig = Field(default_factory=TaskConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    gold: GoldConfig = Field(default_factory=GoldConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    kl: KLConfig = Field(default_factory=KLConfig)
    elastic_reset: ElasticResetConfig = Field(default_factory=ElasticResetConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    fdpg: FDPGConfig = Field(default_factory=FDPGConfig)
    quark: QuarkConfig = Field(default_factory=QuarkConfig)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Opt-in experiment trackers (MLflow, Weights & Biases) "
                                     "beside metrics.jsonl and TensorBoard.")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Named partial overrides run one after another as a comparison (e.g. ppo_kl vs elastic_reset). Empty = a single run.",
    )

    @model_validator(mode="after")
    def _method_sections(self) -> "TetherConfig":
        own = set(ALGORITHM_SECTIONS[self.algorithm])
        for algo, sections in ALGORITHM_SECTIONS.items():
            for sec in sections:
                # a section at its defaults (e.g. in a full model_dump) sets nothing; a changed one is an error
                value = getattr(self, sec)
                if sec not in own and sec in self.model_fields_set and value.model_dump() != type(value)().model_dump():
                    raise ValueError(
                        f"section '{sec}' configures algorithm '{algo}' and does not apply to algorithm '{self.algorithm}'; "
                        f"remove it or set algorithm: {algo} (sections of '{self.algorithm}': {', '.join(ALGORITHM_SECTIONS[self.algorithm])})"
                    )
        return self

    @model_validator(mode="after")
    def _dataset_task(self) -> "TetherConfig":
        if self.task.name != "dataset":
            return self
        if not self.policy.name_or_path:
            raise ValueError("task.name 'dataset' needs policy.name_or_path: a Hugging Face causal LM (hub name or folder) to start from "
                             "(the locally built policy exists only for the imdb task)")
        if self.gold.kind not in ("scorer", "hf_classifier"):
            raise ValueError(f"task.name 'dataset' needs a gold that is a scorer: gold.kind 'scorer' (with gold.scorer) or 'hf_classifier'; "
                             f"'{self.gold.kind}' is built from the IMDB reviews")
        if self.reference.kind != "initial":
            raise ValueError("reference.kind 'sft' / 'soup' (SALSA) trains SFT models on the imdb task's text; a dataset task supports "
                             "reference.kind 'initial'")
        return self

    @model_validator(mode="after")
    def _sharding(self) -> "TetherConfig":
        lr = self.runtime.learner
        if lr.sharding == "none":
            return self
        if self.algorithm != "ppo":
            raise ValueError(f"runtime.learner.sharding 'fsdp2' applies to algorithm 'ppo' (every ppo.advantage) so far; this run uses "
                             f"'{self.algorithm}': set runtime.learner.sharding: none")
        if self.runtime.mode != "ray" or lr.ranks < 2:
            raise ValueError(f"runtime.learner.sharding 'fsdp2' shards over a learner group of Ray actors: it needs runtime.mode: ray and "
                             f"runtime.learner.ranks >= 2 (this run: mode {self.runtime.mode!r}, ranks {lr.ranks})")
        if self.kl.reference == "ema":
            raise ValueError("runtime.learner.sharding 'fsdp2' with kl.reference 'ema' is not supported yet: use kl.reference: initial")
        if self.runtime.weight_sync == "collective":
            raise ValueError("runtime.learner.sharding 'fsdp2' gathers the weights tensor by tensor into a file sync: use runtime.weight_sync "
                             "auto, tmpfs or object_store (not collective), with the rollout actors on the learner's node for auto")
        if lr.compile:
            raise ValueError("runtime.learner.sharding 'fsdp2' with runtime.learner.compile is not supported yet: set one of them off")
        return self

    @model_validator(mode="after")
    def _lora(self) -> "TetherConfig":
        if self.policy.lora is None:
            return self
        if self.algorithm != "ppo":
            raise ValueError(f"policy.lora applies to algorithm 'ppo' (every ppo.advantage); algorithm '{self.algorithm}' trains the whole "
                             "model: remove policy.lora or set algorithm: ppo")
        if self.kl.reference == "ema":
            raise ValueError("kl.reference 'ema' with policy.lora is not supported: the LoRA reference is the policy with its adapters off; "
                             "use kl.reference: initial")
        return self

    @model_validator(mode="after")
    def _learner_group(self) -> "TetherConfig":
        n = self.runtime.learner.ranks
        if n == 1:
            return self
        if self.runtime.mode != "ray":
            raise ValueError(f"runtime.learner.ranks is {n}: a learner group is {n} Ray actors; it needs runtime.mode: ray (local mode is one process)")
        sec = getattr(self, self.algorithm)
        for name in ("batch_size", "minibatch_size"):
            if getattr(sec, name) % n:
                raise ValueError(f"{self.algorithm}.{name} ({getattr(sec, name)}) must be a multiple of runtime.learner.ranks ({n}): "
                                 "every rank takes an equal share of each batch")
        return self

    @model_validator(mode="after")
    def _engine_core(self) -> "TetherConfig":
        r = self.runtime
        if r.vllm_engine_core == "in_actor" and (r.mode != "ray" or r.engine != "vllm"):
            raise ValueError(f"runtime.vllm_engine_core 'in_actor' puts vLLM's engine core in the Ray rollout actor: it needs runtime.mode: ray "
                             f"and runtime.engine: vllm (this run has mode {r.mode!r}, engine {r.engine!r}); use vllm_engine_core: process")
        return self

    @model_validator(mode="after")
    def _groups(self) -> "TetherConfig":
        n, p = self.generation.n_per_prompt, self.ppo
        if self.algorithm == "fdpg" and n != 1:
            raise ValueError(f"generation.n_per_prompt is {n}: f-DPG draws fdpg.samples_per_prompt samples per prompt "
                             f"({self.fdpg.samples_per_prompt}); set that instead and leave generation.n_per_prompt at 1")
        if self.rollout_batch_size % n:
            raise ValueError(f"{self.algorithm}.batch_size ({self.rollout_batch_size}) must be a multiple of generation.n_per_prompt "
                             f"({n}): each batch is whole groups of n_per_prompt samples of one prompt")
        if self.algorithm != "ppo":
            return self
        if p.advantage in GROUP_ESTIMATORS and n < 2:
            raise ValueError(f"ppo.advantage {p.advantage!r} compares the samples of one prompt: set generation.n_per_prompt >= 2 "
                             f"(it is {n}; GRPO papers use 4-64), or use ppo.advantage: gae or reinforce_pp")
        if p.drop_uniform_groups and n < 2:
            raise ValueError(f"ppo.drop_uniform_groups drops groups of identical scores: it needs generation.n_per_prompt >= 2 (it is {n})")
        return self

    @property
    def vllm_in_actor(self) -> bool:
        """Whether a Ray rollout actor runs vLLM's engine core in its own process (runtime.vllm_engine_core resolved)."""
        r = self.runtime
        return r.vllm_engine_core == "in_actor" or (r.vllm_engine_core == "auto" and r.mode == "ray" and r.engine == "vllm")

    @model_validator(mode="after")
    def _pipeline(self) -> "TetherConfig":
        r = self.runtime
        if not r.pipeline:
            return self
        if self.algorithm != "ppo":
            raise ValueError(f"runtime.pipeline applies to algorithm 'ppo' (its importance correction is PPO's); this run uses "
                             f"'{self.algorithm}': set runtime.pipeline: false")
        if r.max_staleness < 1:
            raise ValueError(f"runtime.pipeline generates each batch with the weights from one update before: set runtime.max_staleness "
                             f">= 1 (it is {r.max_staleness}), or runtime.pipeline: false")
        return self

    @property
    def rollout_batch_size(self) -> int:
        """Rollouts sampled per iteration, from the chosen algorithm's section."""
        return {"ppo": self.ppo.batch_size, "fdpg": self.fdpg.batch_size, "quark": self.quark.batch_size}[self.algorithm]

    @property
    def samples_per_prompt(self) -> int:
        """Rollouts per distinct prompt: fdpg.samples_per_prompt for f-DPG (its Z per prompt), else generation.n_per_prompt."""
        return self.fdpg.samples_per_prompt if self.algorithm == "fdpg" else self.generation.n_per_prompt

    def dump(self) -> dict:
        """The fields that were set (what a YAML round-trips), so re-validation sees the same sections."""
        return self.model_dump(mode="json", exclude_unset=True)


    def expand(self) -> list["TetherConfig"]:
        """One config per variant (name suffixed), or [self] when there are none.

        Each variant is composed like every other layer (`compose_dict`): a variant that switches
        ``algorithm`` does not inherit the base's sections of the other algorithm (they were written for
        the base's method); a variant that sets such a section itself is rejected.
        """
        if not self.variants:
            return [self]
        base = self.model_dump(exclude={"variants"}, exclude_unset=True)
        return [validate_dict(compose_dict(base, over, {} if "name" in over else {"name": f"{self.name}-{vname}"}),
                              source=f"variant '{vname}'")
                for vname, over in self.variants.items()]


def validate_dict(data: dict, *, source: str) -> TetherConfig:
    """A TetherConfig from a config mapping; ConfigError naming ``source``, each bad field and what is accepted."""
    try:
        return TetherConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source, TetherConfig)) from None


def config_from_dump(data: dict) -> TetherConfig:
    """Validate a stored config, also a full ``model_dump`` (every section present): the sections of
    algorithms other than its own are dropped first, as they only hold defaults there."""
    return TetherConfig.model_validate(without_other_algorithms(copy.deepcopy(data), data.get("algorithm", "ppo")))
