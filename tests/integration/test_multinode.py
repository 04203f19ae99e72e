"""Multi-node placement on a real two-node Ray cluster on this machine (ray.cluster_utils.Cluster: two raylets,
each a node with its own id and a custom resource). The rollout actor is placed on the second node, the learner
(and the reward and gold actors) on the first; with weight_sync: auto the cross-node rollout actor gets its
weights through the collective group (gloo, no file written), and vLLM then samples with exactly the learner's weights.
This is also the end-to-end run of the collective sync (tests/integration/test_weight_sync_collective.py holds its parts:
buckets, the broadcast between real processes, and weight_sync: collective choosing it on one node)."""
import pytest
import ray

from actors.placement import driver_runtime_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"node_a": 8},
                                                            "object_store_memory": 200 * 2**20, "include_dashboard": False})
    node_b = cluster.add_node(num_cpus=2, resources={"node_b": 8}, object_store_memory=200 * 2**20)
    ray.init(address=cluster.address, runtime_env=driver_runtime_env())
    cluster.wait_for_nodes()
    yield cluster, node_b
    ray.shutdown()
    cluster.shutdown()


def test_rollouts_on_another_node_sync_through_the_collective_group(tiny_assets, two_nodes, tmp_path):
    from services.state.runlog import read_metrics
    from services.driver.train import Trainer

    cluster, node_b = two_nodes
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    base = tiny_assets[0]
    rt = base.runtime
    on = lambda role, node: getattr(rt, role).model_copy(update={"resources": {node: 1}})  # noqa: E731
    rt = rt.model_copy(update={"mode": "ray", "engine": "vllm", "weight_sync": "auto", "checkpoint_every": 0,
                               "rollout": on("rollout", "node_b"), "learner": on("learner", "node_a"),
                               "reward": on("reward", "node_a"), "gold": on("gold", "node_a")})
    cfg = base.model_copy(update={"runtime": rt, "train": base.train.model_copy(update={"iterations": 2})})
    tr = Trainer(cfg, tmp_path / "two-nodes", progress=False)
    try:
        nodes = tr.roles.nodes
        assert nodes["rollout-0"] == node_b.node_id != nodes["learner"]  # where each actor ran
        assert nodes["learner"] == cluster.head_node.node_id
        assert len(tr.roles.collective_rollouts) == 1 and tr.roles.file_rollouts == []  # auto chose the cross-node path
        assert tr.roles._weight_group["backend"] == "gloo" and tr.roles._weight_group["world"] == 2
        before = tr.roles.generate(["This movie was", "I did not"], seed=1)
        tr.run()
        rows = [r for r in read_metrics(tmp_path / "two-nodes") if "loss/policy" in r]
        assert len(rows) == 2
        for r in rows:
            assert r["sync/collective_receivers"] == 1 and r["sync/file_receivers"] == 0
            assert r["rollout/behaviour_logp_gap"] < 1e-3 and r["rollout/staleness"] == 0  # the remote engine's log-probs are the learner's
            assert r["time_s/sync_send"] > 0
        after = tr.roles.generate(["This movie was", "I did not"], seed=1)
        assert after.policy_version == tr.roles.learner_version() == 2 and after.response_ids != before.response_ids
        # nothing went through a file: the engine's own tmpfs folder never got a version
        assert ray.get(tr.roles.rollout[0].__ray_call__.remote(lambda self: self.engine._sync.versions())) == []
    finally:
        tr.close()


def test_a_custom_resource_the_cluster_lacks_fails_at_once_with_its_name(tiny_assets, two_nodes, tmp_path):
    from actors.placement import RuntimeSetupError, place

    rt = tiny_assets[0].runtime.model_copy(update={"mode": "ray"})
    rt = rt.model_copy(update={"rollout": rt.rollout.model_copy(update={"resources": {"node_c": 1}})})
    with pytest.raises(RuntimeSetupError, match=r"custom resource 'node_c' \(rollout\); the cluster has 0"):
        place(rt)
