"""What the driver does with the guard (learner/guard.py): its gold-free signals at every evaluation and, with
guard.enabled, an alarm and its action: alert (recorded only), stop (the run ends with a checkpoint), or reset (back to
the last evaluation the guard still trusted: an Elastic Reset, or that evaluation's checkpoint), then re-armed.
The alarm's record goes to run_dir/guard.json, to the summary, and to the service's run record (a banner on its page).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from services.driver.checkpoints import checkpoint_dir

log = logging.getLogger("services.driver.train")  # the driver's one logger name, as when this was all train.py


def publish_alarm(commands, info: dict) -> None:
    """``commands``: the run's services.driver.control.RunControl, or None (no service)."""
    if commands is not None:
        commands.set_record(guard=info)  # the service's run record: the page shows a banner


class GuardPolicy:
    """The run's guard, its alarm record (``alarm``: iteration, the evaluation the guard picks, action) and whether the
    alarm asks the loop to stop (``stop``). ``cfg`` is read at each evaluation: a ``set`` command may change guard.action."""

    def __init__(self, cfg, run_dir: Path, ckpt_root: Path):
        from learner.guard import Guard, GuardRule

        g = cfg.guard
        self.cfg, self.run_dir, self.ckpt_root = cfg, Path(run_dir), ckpt_root
        self.guard = Guard(GuardRule(g.signal, g.threshold, g.patience, g.min_kl))
        self.alarm: dict | None = None
        self.stop = False
        self._gauges = None  # Ray metrics (Prometheus) of the guard's signals, from this driver, in Ray mode

    def step(self, iteration: int, scored, ev: dict, *, act: bool, roles, algorithm, save_checkpoint, commands) -> dict[str, float]:
        """The guard's signals of one evaluation (``ev``: its drift metrics); ``act``: False at the final evaluation, where
        an alarm is recorded but taken no action on. ``save_checkpoint()`` saves the policy of a trusted evaluation."""
        g = self.cfg.guard
        try:
            self.guard.update(iteration, np.asarray(scored.proxy_scores, dtype=np.float64), list(scored.rollouts.responses),
                              float(ev.get("eval/kl_from_init_k3", math.nan)), ev.get("eval/ppl_under_init"))
        except ValueError as e:  # e.g. a non-finite member score: the run goes on, without signals this time
            log.warning("guard: no signals at iteration %d: %s", iteration, e)
            return {"guard/skipped": 1.0}
        m = self.guard.metrics()
        alarm_now = g.enabled and self.guard.alarm_step == iteration and self.alarm is None
        if act and g.enabled and g.action != "alert" and not self.guard.history[-1]["alarm"]:
            save_checkpoint()  # every trusted evaluation's policy, so the guard's pick can be returned to
        if not g.enabled:
            m.pop("guard/alarm", None)
        if self.cfg.runtime.mode == "ray":
            if self._gauges is None:
                import ray

                from actors.metrics import GUARD_METRICS, role_metrics

                self._gauges = (ray.is_initialized() and role_metrics(self.cfg.name, GUARD_METRICS)) or False
            if self._gauges:
                self._gauges.record(m)
        if g.enabled and alarm_now and act:
            m.update(self._act(iteration, roles, algorithm, commands))
        elif g.enabled and alarm_now:  # at the final evaluation: recorded, no action
            self.alarm = {"iteration": iteration, "rule": self.guard.rule.describe(), "action": "none (final evaluation)"}
            publish_alarm(commands, self.alarm)
        self.write()
        return m

    def _act(self, iteration: int, roles, algorithm, commands) -> dict[str, float]:
        g, h = self.cfg.guard, self.guard.history
        # the last evaluation the guard still trusted (no alarm raised there; its policy was checkpointed when the action is not alert)
        pick = next((x["step"] for x in reversed(h[:-1]) if not x.get("alarm")), h[-1]["step"])
        value = h[-1].get(g.signal)
        self.alarm = {"iteration": iteration, "pick_iteration": pick, "signal": g.signal,
                      "value": value if isinstance(value, float) and math.isfinite(value) else None,
                      "rule": self.guard.rule.describe(), "action": g.action, "time": time.time()}
        ck = checkpoint_dir(self.ckpt_root, pick)
        if ck.exists():
            self.alarm["pick_checkpoint"] = str(ck)
        log.warning("guard alarm at iteration %d: %s (value %s); action %s; the guard's pick: iteration %d", iteration,
                    self.guard.rule.describe(), value, g.action, pick)
        m = {"guard/alarm_event": 1.0, "guard/pick_iteration": float(pick)}
        if g.action == "stop":
            self.stop = True
        elif g.action == "reset":
            if algorithm.resets_elastically(self.cfg):
                roles.reset_now()
                self.alarm["reset"] = "elastic_reset"
            elif ck.exists():
                roles.load(str(ck / "learner.pt"))
                self.alarm["reset"] = f"checkpoint {ck.name}"
            else:
                self.alarm["reset"] = "none (no checkpoint of the picked evaluation)"
            m.update(roles.sync())
            m["guard/reset"] = 1.0
            self.guard.rearm()
            resets = self.alarm
            self.alarm = None  # re-armed: the next alarm acts again
            publish_alarm(commands, resets)
            return m
        publish_alarm(commands, self.alarm)
        return m

    def stop_reason(self) -> str:
        return f"the guard's alarm at iteration {self.alarm['iteration']} ({self.alarm['rule']})"

    def write(self) -> None:
        """run_dir/guard.json: the guard's reference and signals so far, its settings and the alarm."""
        state = {**self.guard.as_dict(), "enabled": self.cfg.guard.enabled, "action": self.cfg.guard.action, "alarm": self.alarm}
        tmp = self.run_dir / "guard.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.run_dir / "guard.json")

    def resume(self, iteration: int) -> None:
        """After a restore to ``iteration``: the guard's state from guard.json; evaluations from this iteration on are redone."""
        gstate = self.run_dir / "guard.json"
        if gstate.exists():
            saved = json.loads(gstate.read_text())
            self.guard.restore(saved, before_step=iteration)
            alarm = saved.get("alarm")
            self.alarm = alarm if alarm and alarm.get("iteration", iteration) < iteration else None
