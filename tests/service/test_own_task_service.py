"""The service's gate for a user's own task (POST /runs against a real valkey): models and prompts from its data directory
only. Moved from tests/unit/test_own_task.py: the server loads Ray's job client, which the unit tier does not."""
from __future__ import annotations

import json

import own_task as o


def test_the_service_takes_an_own_task_from_its_data_directory_only(tmp_path, tether_redis):
    """POST /runs: models and prompts the operator put in the service's data directory (data:<path>), hub names, and
    nothing else: no other local path, no path leaving the directory (also by a symbolic link), no function scorer (code in
    the workers), no token variable outside TETHER_SCORER_ (it would be sent to the scorer's URL)."""
    import yaml
    from fastapi.testclient import TestClient

    from services.server.api import ServiceSettings, create_app

    svc = tmp_path / "svc"
    (svc / "own").mkdir(parents=True)
    o.llama_policy(svc / "own" / "llama")
    o.write_jsonl(svc / "own" / "prompts.jsonl", o.prompt_rows())
    (svc / "own" / "escape").symlink_to(tmp_path)
    auth = {"Authorization": "Bearer tok"}
    body = {"name": "own", "task": {"name": "dataset", "data": {"path": "data:own/prompts.jsonl"}}, "policy": {"name_or_path": "data:own/llama"},
            "gold": {"kind": "scorer", "scorer": {"kind": "profanity"}},
            "proxy": {"source": "scorers", "scorers": [{"kind": "hf_reward_model", "name_or_path": "data:own/llama"},
                                                       {"kind": "http", "url": "http://scorer:5000/get_reward", "token_env": "TETHER_SCORER_RM"}]}}
    with TestClient(create_app(ServiceSettings(data_dir=svc, redis_url=tether_redis.url, token="tok", jobs=None))) as c:
        r = c.post("/runs", json={"config": body}, headers=auth)
        assert r.status_code == 201, r.text
        saved = yaml.safe_load(open(svc / "service" / r.json()["id"] / "tether.yaml"))
        assert saved["policy"]["name_or_path"] == str((svc / "own" / "llama").resolve())
        assert saved["task"]["data"]["path"] == str((svc / "own" / "prompts.jsonl").resolve())
        assert saved["proxy"]["scorers"][0]["name_or_path"] == str((svc / "own" / "llama").resolve())

        def refused(path: list, value) -> str:
            b = json.loads(json.dumps(body))
            node = b
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value
            resp = c.post("/runs", json={"config": b}, headers=auth)
            assert resp.status_code == 422, (path, value, resp.text)
            return resp.text

        assert "hub dataset name" in refused(["task", "data", "path"], str(svc / "own" / "prompts.jsonl"))
        assert "hub dataset name" in refused(["task", "data", "path"], "prompts.jsonl")
        assert "'..'" in refused(["task", "data", "path"], "data:../x.jsonl")
        assert "leaves the service's data directory" in refused(["policy", "name_or_path"], "data:own/escape")
        assert "nothing at" in refused(["policy", "name_or_path"], "data:own/missing")
        assert "model hub name" in refused(["proxy", "scorers", 0, "name_or_path"], "/etc")
        assert "function scorer" in refused(["gold", "scorer"], {"kind": "function", "function": "os:getcwd"})
        assert "TETHER_SCORER_" in refused(["proxy", "scorers", 1, "token_env"], "AWS_SECRET_ACCESS_KEY")
