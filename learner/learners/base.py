"""What every learner shares (the ``Learner`` contract of learner/types.py), and the hooks through which the
driver prepares an algorithm's policy and conditions its sampling without naming the algorithm.

The learners (``learner.learners.ppo``, ``.fdpg``, ``.quark``) import from here, never from the package's
``__init__`` (which builds them), so the package has no import circle.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from learner.config import TetherConfig
from learner.models.device import autocast, model_device, to_device
from learner.models.policy import pad_batch
from learner.parallel import DataParallel

QUARK_META = "tether_quark.json"


class NotApplicable(ValueError):
    """A command or setting that the run's algorithm does not have (e.g. an Elastic Reset for f-DPG)."""


def load_reference(paths: list, weights: list[float], init_lm: torch.nn.Module) -> torch.nn.Module:
    """The KL reference: a copy of the start policy, or the weight soup of ``paths`` (SALSA)."""
    if not paths:
        return copy.deepcopy(init_lm)
    from learner.models.policy import load_soup as soup

    return soup(paths, weights)


def by_name_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, sd: dict) -> dict:
    """torch.optim's state dict (parameters by index, in the optimiser's order) keyed by parameter name instead: the form
    torch.distributed.checkpoint's set_optimizer_state_dict reads (an unsharded run's checkpoint restored sharded)."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    groups, i = [], 0
    for g in sd["param_groups"]:
        groups.append({**g, "params": [order[j] for j in range(i, i + len(g["params"]))]})
        i += len(g["params"])
    return {"state": {order[k]: v for k, v in sd["state"].items()}, "param_groups": groups}


class LearnerBase:
    """The skeleton of every learner: seeding, the frozen KL reference, counters, the seeded minibatch order,
    the NotApplicable reset, and checkpoints of the common state (model, optimiser, counters, torch RNG).

    A subclass builds ``self.model`` and ``self.opt`` after ``super().__init__`` (the order of random draws is
    the seed's, then the subclass's), implements ``step``, and adds its own state with ``extra_state`` /
    ``load_extra_state``.
    """

    algorithm = "?"

    def __init__(self, cfg: TetherConfig, init_lm: torch.nn.Module, *, pad_id: int, ref_lm: torch.nn.Module | None = None):
        self.cfg, self.pad_id = cfg, pad_id
        self.device = model_device(init_lm)  # the device make_learner put pi_0 on; every tensor of a step follows it
        self.dp = DataParallel()  # this rank's view of a learner group (learner/parallel.py); a group of one by default
        torch.manual_seed(cfg.train.seed)
        # pi_0, or a SALSA soup (ref_lm); frozen
        self.ref = (copy.deepcopy(init_lm) if ref_lm is None else ref_lm).eval().requires_grad_(False)
        self.iteration = 0
        self.version = 0
        self.kl_ctl = None
        self.model: torch.nn.Module
        self.opt: torch.optim.Optimizer

    # -- hooks for the driver (class-level: called before any learner exists) ---------------------
    @classmethod
    def build(cls, cfg: TetherConfig, init_lm: torch.nn.Module, *, pad_id: int, ref_lm: torch.nn.Module, policy_path: Path) -> "LearnerBase":
        """The learner make_learner builds for this policy folder (a learner that needs more than the model reads it here)."""
        return cls(cfg, init_lm, pad_id=pad_id, ref_lm=ref_lm)

    @classmethod
    def prepare_policy(cls, cfg: TetherConfig, policy_path: Path, run_dir: Path) -> tuple[Path, list[int]]:
        """The policy folder every role loads, and the control-token ids sampling may be conditioned on."""
        return Path(policy_path), []

    @classmethod
    def sampling_prefix(cls, control_ids: list[int], iteration: int) -> list[int] | None:
        """Token ids to put before every prompt at this iteration (None: sample the plain policy)."""
        return None

    @classmethod
    def resets_elastically(cls, cfg: TetherConfig) -> bool:
        """Whether this run's learner makes Elastic Resets (the driver evaluates before each one and resets on the guard's alarm)."""
        return False

    # -- shared behaviour -------------------------------------------------------------------------
    def minibatch_rng(self) -> np.random.Generator:
        """The seeded draw of this iteration's minibatch order: (seed, iteration) alone fix it, so a resumed run
        replays an uninterrupted one."""
        return np.random.default_rng(self.cfg.train.seed * 100003 + self.iteration)

    def batch(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """A left-padded batch (models.policy.pad_batch) on the learner's device."""
        return to_device(pad_batch(prompt_ids, response_ids, self.pad_id), self.device)

    def tensor(self, data, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A tensor of plain numbers on the learner's device."""
        return torch.as_tensor(data, dtype=dtype, device=self.device)

    def autocast(self):
        """The forward passes' precision context (runtime.learner.precision: fp32, or bf16 autocast)."""
        return autocast(self.device, self.cfg.runtime.learner.precision)

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights the rollout engines sample with."""
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def reset_now(self) -> None:
        raise NotApplicable(f"reset is Elastic Reset, which applies only to algorithm 'ppo'; this run uses '{self.algorithm}'")

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, sd: dict) -> None:
        pass

    @property
    def sharded(self) -> bool:
        return getattr(self, "_sharded", False)

    def shard(self) -> None:
        raise NotImplementedError(f"runtime.learner.sharding fsdp2 is not built for algorithm '{self.algorithm}'")

    def model_state(self) -> dict:
        """The model's checkpointed weights: all of them; with policy.lora only those that train (the adapters, a value head).
        Sharded (fsdp2) a collective: full tensors gathered one at a time, on rank 0 (the others get {})."""
        lora = self.cfg.policy.lora is not None
        if self.sharded and not lora:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not lora:
            return self.model.state_dict()
        from learner.models.lora import adapter_names
        from learner.parallel import full

        keep = adapter_names(self.model)
        sd = {n: full(p.detach()).cpu() if self.sharded else p.detach() for n, p in self.model.named_parameters() if n in keep}
        return {} if self.sharded and self.dp.rank != 0 else sd

    def load_model_state(self, sd: dict, *, check_only: bool = False) -> None:
        if self.cfg.policy.lora is None:
            self.model.load_state_dict(sd)
            return
        from learner.models.lora import adapter_names

        want, have = adapter_names(self.model), dict(self.model.named_parameters())
        shapes = sorted(k for k in set(sd) & want if tuple(sd[k].shape) != tuple(have[k].shape))
        if set(sd) != want or shapes:
            raise ValueError(f"checkpoint does not hold this LoRA policy's trainable weights (policy.lora changed?): missing "
                             f"{sorted(want - set(sd))[:3]}, unexpected {sorted(set(sd) - want)[:3]}, other shapes {shapes[:3]}")
        if not check_only:
            self.model.load_state_dict(sd, strict=False)

    def state_dict(self) -> dict:
        """The checkpoint. Sharded (fsdp2) it is a collective, every rank calling it in turn: full tensors, on rank 0 only
        (the others get empty model and optimiser states), in the format of an unsharded run (the optimiser's by name)."""
        lora = self.cfg.policy.lora
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opt = get_optimizer_state_dict(self.model, self.opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            opt = self.opt.state_dict()
        return {"model": self.model_state(), "opt": opt, **self.extra_state(),
                **({"lora": lora.model_dump()} if lora is not None else {}),
                "iteration": self.iteration, "version": self.version, "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {})}

    def load_state_dict(self, sd: dict) -> None:
        by_name = isinstance(sd["opt"].get("state"), dict) and all(isinstance(k, str) for k in sd["opt"]["state"])
        if self.sharded or by_name:  # a sharded run's checkpoint (optimiser state by parameter name), or a sharded learner
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

            lora = self.cfg.policy.lora is not None
            if self.sharded:
                if lora:
                    self.load_model_state(sd["model"], check_only=True)
                set_model_state_dict(self.model, sd["model"], options=StateDictOptions(full_state_dict=True, strict=not lora))
            else:
                self.load_model_state(sd["model"])
            opt = sd["opt"] if by_name else by_name_optimizer_state(self.model, self.opt, sd["opt"])
            set_optimizer_state_dict(self.model, self.opt, opt, options=StateDictOptions(full_state_dict=True))
        else:
            self.load_model_state(sd["model"])
            self.opt.load_state_dict(sd["opt"])
        self.load_extra_state(sd)
        self.iteration, self.version = sd["iteration"], sd["version"]
        if "torch_rng" in sd:
            torch.set_rng_state(sd["torch_rng"])
        if "cuda_rng" in sd and self.device.type == "cuda":
            torch.cuda.set_rng_state(sd["cuda_rng"], self.device)
