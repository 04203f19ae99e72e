"""Which runs can share actors (actors/roleset.py::warm_key) and the pool that lends them (services/driver/warm.py),
without Ray: the real sets are tested in tests/integration/test_warm_sweep.py."""
import pytest

from actors.roleset import warm_key
from learner.config import load_config
from services.driver import warm
from services.driver.warm import WarmRoles
from tasks.contract import TaskPaths

PATHS = TaskPaths(policy="/d/policy", gold="/d/gold", proxies=["/d/p0", "/d/p1"], drift_policy="/d/policy")


def key(*over, paths=PATHS):
    return warm_key(load_config("default", list(over)), paths)


def test_runs_differing_in_what_rebind_hands_over_share_actors():
    k = key()
    assert k is not None
    for over in (["train.seed=3"], ["elastic_reset.enabled=true"], ["ppo.advantage=grpo", "generation.n_per_prompt=4"], ["generation.temperature=0.7"],
                 ["kl.coef=0.5"], ["ensemble.aggregation=wco"], ["runtime.checkpoint_every=3"], ["runtime.pipeline=true", "runtime.max_staleness=1"],
                 ["runtime.learner.precision=bf16"], ["train.iterations=7"], ["name=other"]):
        assert key(*over) == k, over


def test_runs_needing_other_actors_do_not():
    k = key()
    for over in (["runtime.rollout_actors=2"], ["runtime.engine=transformers"], ["runtime.kv_cache_gib=2"], ["runtime.rollout.threads=2"], ["runtime.reward.threads=2"], ["runtime.gold.threads=2"],
                 ["runtime.learner.num_cpus=0.5"], ["runtime.learner.ranks=2"], ["runtime.vllm_engine_core=process"]):
        assert key(*over) != k, over
    for p in (TaskPaths(policy="/d/soup", gold="/d/gold", proxies=["/d/p0", "/d/p1"]),
              TaskPaths(policy="/d/policy", gold="/d/gold", proxies=["/d/p0"], drift_policy="/d/policy"),
              TaskPaths(policy="/d/policy", gold="/d/gold2", proxies=["/d/p0", "/d/p1"], drift_policy="/d/policy")):
        assert key(paths=p) != k
    assert key("runtime.mode=local") is None and key("runtime.weight_sync=collective") is None


class FakeSet:
    made = 0

    def __init__(self, cfg, paths):
        FakeSet.made += 1
        self.key, self.restarts, self.collective_rollouts = warm_key(cfg, paths), {}, []
        self.bound, self.closed = [cfg.name], False

    @property
    def shareable(self):  # as RayRoleSet.shareable
        return self.key is not None and not self.restarts and not self.collective_rollouts

    def rebind(self, cfg, paths):
        if cfg.name == "unbindable":
            raise RuntimeError("actor gone")
        self.bound.append(cfg.name)

    def close(self):
        self.closed = True


@pytest.fixture
def fake(monkeypatch):
    import actors.roleset

    FakeSet.made = 0
    monkeypatch.setattr(actors.roleset, "make_roleset", FakeSet)
    return warm


def cfg(name, *over):
    return load_config("default", [f"name={name}", *over])


def test_the_pool_rebinds_equal_keys_and_starts_afresh_otherwise(fake):
    pool = WarmRoles()
    a = pool.acquire(cfg("a"), PATHS)
    pool.release(a, ok=True)
    b = pool.acquire(cfg("b", "train.seed=1"), PATHS)
    assert b is a and a.bound == ["a", "b"] and pool.counts == {"cold": 1, "warm": 1}
    pool.release(b, ok=True)
    c = pool.acquire(cfg("c", "runtime.rollout_actors=2"), PATHS)  # other actors: the held set is closed first
    assert c is not a and a.closed and pool.counts == {"cold": 2, "warm": 1}
    pool.release(c, ok=False)  # a failed run: closed, not kept
    assert c.closed and pool.roles is None
    d = pool.acquire(cfg("d", "runtime.rollout_actors=2"), PATHS)
    assert d is not c and FakeSet.made == 3
    d.restarts = {"rollout": 1}  # Ray's restart budget is per actor: a set that used some is not lent on
    pool.release(d, ok=True)
    assert d.closed and pool.roles is None
    e = pool.acquire(cfg("e"), PATHS)
    pool.release(e, ok=True)
    f = pool.acquire(cfg("unbindable"), PATHS)  # a rebind that fails: that set closed, a new one started
    assert f is not e and e.closed and pool.counts == {"cold": 5, "warm": 1}
    pool.release(f, ok=True)
    pool.close()
    assert f.closed and pool.roles is None


def test_a_local_run_is_never_kept(fake):
    pool = WarmRoles()
    a = pool.acquire(cfg("a", "runtime.mode=local"), PATHS)
    pool.release(a, ok=True)
    assert a.closed and pool.roles is None


def test_a_stage_that_cannot_share_actors_closes_the_held_ones_first(monkeypatch, tmp_path):
    """tether reproduce keeps one pool across stages: SALSA's and Quark's cells start their own actors, which the held set's
    placement group would keep from placing (2 CPUs here); their stage closes it first, and runs cold."""
    import services.experiments.sweep as sweep_pkg
    from services.experiments.reproduce import stages

    events = []

    class Pool:
        def close(self):
            events.append("close")

    def fake_run_sweep(spec, **kw):
        events.append(("sweep", Path(spec).stem, kw["warm"], kw["pool"] is not None))

        class R:
            statuses = {}
        return R()

    from pathlib import Path

    monkeypatch.setattr(stages, "_prepare_assets", lambda cells: None)
    monkeypatch.setattr(sweep_pkg, "run_sweep", fake_run_sweep)
    by = {s.name: s for s in stages.STAGES}
    pool = Pool()
    assert stages.run_stage(by["overopt"], tmp_path, None, pool=pool, say=lambda m: None) == "done"
    assert stages.run_stage(by["salsa"], tmp_path, None, pool=pool, say=lambda m: None) == "done"
    assert events == [("sweep", "overopt", True, True), "close", ("sweep", "salsa", False, False)]
    assert not by["quark"].warm and by["critic_free"].warm
