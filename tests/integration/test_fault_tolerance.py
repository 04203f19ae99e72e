"""Actors that survive being killed: SIGKILL each role's process (found by the PID Ray's actor reports) during a
run in the default runtime (Ray actors + vLLM). The run finishes every iteration, each logged once, nothing that
was checkpointed is lost, and the metrics equal those of an uninterrupted run of the same seed: every call is
retried with its own seed, and a restarted learner redoes the iterations since its latest checkpoint."""
import os
import signal
import threading
import time

import pytest
import ray

from services.state.runlog import read_metrics
from services.driver.train import Trainer

pytestmark = pytest.mark.slow
ITERATIONS = 6  # an iteration takes ~0.3 s on the tiny task; each restart holds the run, so the two pairs of kills land apart
SAME = ("reward/proxy_mean", "reward/gold_mean", "kl/from_init", "kl/to_ref", "loss/policy", "loss/value", "kl/coef_next",
        "policy/version", "eval/gold_mean", "eval/kl_from_init_k3")


def _cfg(tiny_assets):
    base = tiny_assets[0]
    rt = base.runtime.model_copy(update={"mode": "ray", "engine": "vllm", "checkpoint_every": 1, "max_restarts": 1})  # one restart each: a death that loses two calls counts once
    return base.model_copy(update={"runtime": rt, "train": base.train.model_copy(update={"iterations": ITERATIONS, "eval_every": 2})})


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def test_killed_actors_come_back_and_the_run_matches_an_uninterrupted_one(tiny_assets, ray_cluster, tmp_path):
    cfg = _cfg(tiny_assets)
    ref = Trainer(cfg, tmp_path / "ref", progress=False)
    try:
        ref.run()
    finally:
        ref.close()
    want = {r["step"]: r for r in read_metrics(tmp_path / "ref") if "loss/policy" in r}

    tr = Trainer(cfg, tmp_path / "cut", progress=False)
    roles = tr.roles
    # role -> (process id, the iteration after which it is killed): during the next iteration's calls. Two at a time (their
    # restarts overlap): the rollout and the reward actor, later the gold and the learner (which redoes the iterations since
    # its checkpoint while the gold actor's call is retried)
    victims = {"rollout": (_pid(roles.rollout[0]), 1), "reward": (_pid(roles.reward), 1), "gold": (_pid(roles.gold), 3),
               "learner": (_pid(roles.learner), 3)}
    killed: dict[str, float] = {}

    def killer():
        deadline = time.time() + 900
        while time.time() < deadline and len(killed) < len(victims):
            done = len([r for r in read_metrics(tmp_path / "cut") if "loss/policy" in r]) if (tmp_path / "cut" / "metrics.jsonl").exists() else 0
            for role, (pid, after) in victims.items():
                if role not in killed and done >= after:
                    os.kill(pid, signal.SIGKILL)
                    killed[role] = time.time()
                    print(f"{time.strftime('%H:%M:%S')} killed the {role} actor (pid {pid}) after iteration {done}", flush=True)
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        summary = tr.run()
        new_pids = {"rollout": _pid(roles.rollout[0]), "reward": _pid(roles.reward), "gold": _pid(roles.gold), "learner": _pid(roles.learner)}
    finally:
        t.join(timeout=5)
        tr.close()
    assert set(killed) == set(victims), killed
    rows = read_metrics(tmp_path / "cut")
    steps = [r for r in rows if "loss/policy" in r]
    assert [r["step"] for r in steps] == list(range(1, ITERATIONS + 1))  # every iteration, each logged once
    assert summary["eval/gold_mean"] == pytest.approx(read_metrics(tmp_path / "ref")[-1]["eval/gold_mean"], rel=1e-3)
    for r in steps:
        for key in SAME:
            if key in want[r["step"]]:
                assert r[key] == pytest.approx(want[r["step"]][key], rel=1e-3, abs=1e-4), (r["step"], key)
    last = steps[-1]
    assert last.get("runtime/restarts_learner", 0) >= 1  # the learner was restarted and restored its checkpoint
    assert (tmp_path / "cut" / "checkpoints" / f"step-{ITERATIONS:06d}" / "driver.json").exists()
    assert all(new_pids[r] != victims[r][0] for r in victims), (new_pids, victims)  # each is a new process
