from learner.types import Rollouts


def test_take_reorders_every_field_together():
    r = Rollouts(["a", "b", "c"], [[1], [2], [3]], [[10], [20], [30]], [[-1.0], [-2.0], [-3.0]], ["x", "y", "z"], policy_version=4, engine="vllm")
    t = r.take([2, 0])
    assert (t.prompts, t.prompt_ids, t.response_ids, t.behaviour_logprobs, t.responses) == (
        ["c", "a"], [[3], [1]], [[30], [10]], [[-3.0], [-1.0]], ["z", "x"])
    assert t.policy_version == 4 and t.engine == "vllm" and t.texts == ["cz", "ax"]
