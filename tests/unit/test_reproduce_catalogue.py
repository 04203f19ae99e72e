"""services.experiments.reproduce.catalogue: configs/reproduce/claims.yaml names exactly the stages and methods of the
reproduction's sweep specs, expands to the claims in order, and a bad catalogue is refused naming the stage and field."""
from __future__ import annotations

import pytest
import yaml

from services.experiments.reproduce.catalogue import CATALOGUE, CatalogueError, load_catalogue
from services.experiments.reproduce.stages import SPEC_DIR, STAGES


def test_every_catalogue_key_is_a_sweep_spec_and_every_spec_is_in_the_catalogue():
    cat = load_catalogue()
    specs = {s.name: s.spec for s in STAGES if s.spec is not None}
    # the folder holds the stages' specs and the catalogue, nothing else
    assert {p.name for p in SPEC_DIR.glob("*.yaml")} - {CATALOGUE.name} == {p.name for p in specs.values() if p.parent == SPEC_DIR}
    assert sorted(cat.root) == sorted(specs)  # every sweep stage has claims (listed in claims.md's order, not the stages')
    read = {(a.stage, a.method) for stage, sc in cat.root.items() for a in (sc.arm(n, stage) for n in sc.arms)}
    declared = {(stage, m) for stage, spec in specs.items() for m in yaml.safe_load(spec.read_text())["methods"]}
    assert read == declared  # every arm is a method of its stage's spec, and every method of every spec is read
    for stage, sc in cat.root.items():  # and every arm a stage reads is measured by one of its claims
        assert set(sc.arms) == {a for c in sc.expand(0) for a in c.arms}, stage


def test_the_catalogue_expands_to_the_claims_in_order():
    cat = load_catalogue()
    claims = [(stage, c) for stage, sc in cat.root.items() for c in sc.expand(30)]
    assert len(claims) == 40 and len({c.claim for _, c in claims}) == 40
    cf = [c for stage, c in claims if stage == "critic_free"]  # 3 estimators x (frontier gap, peak gold, KL at the peak) vs PPO
    assert [(c.arms, c.stat, c.of) for c in cf[:3]] == [(["grpo", "ppo"], "gap", "gold"), (["grpo", "ppo"], "diff", "peak_gold"),
                                                        (["grpo", "ppo"], "diff", "kl_at_peak")]
    assert [c.arms[0] for c in cf[::3]] == ["grpo", "dr_grpo", "rloo"] and cf[3].claim.startswith("Dr. GRPO reaches higher gold")
    ens = [c for stage, c in claims if stage == "ensembles"]
    assert [c.claim for c in ens[:2]] == ["PPO (KL 0, 25% label noise): WCO loses less gold after the peak than a single proxy",
                                          "PPO (KL 0, 25% label noise): WCO loses less gold after the peak than the ensemble mean"]
    assert ens[0].arms == ["single", "wco"] and "to iteration 30" in ens[0].measure and ens[4].stat == "loss_at_kl"
    er = [c for stage, c in claims if stage == "elastic_reset"]
    assert [(c.arms, c.of, c.need_stage) for c in er] == [(["er", "kl001"], "gold", "overopt"), (["er", "kl001"], "proxy", "overopt"),
                                                           (["er", "kl005"], "gold", "elastic_reset"), (["er", "kl005"], "proxy", "elastic_reset")]


def _bad(tmp_path, edit) -> str:
    raw = yaml.safe_load(CATALOGUE.read_text())
    edit(raw)
    p = tmp_path / "claims.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(CatalogueError) as e:
        load_catalogue(p)
    return str(e.value)


def test_a_bad_catalogue_is_refused_naming_the_stage_the_claim_and_the_field(tmp_path):
    def stat(raw):
        raw["quark"]["claims"][1]["stat"] = "mean_gold"

    msg = _bad(tmp_path, stat)
    assert "quark.claims.1.stat" in msg and "'Quark: at similar fluency'" in msg and "'mean_gold'" in msg

    def typo(raw):
        raw["salsa"]["claims"][0]["treshold"] = 0.1

    assert "salsa.claims.0.treshold" in _bad(tmp_path, typo)

    def arm(raw):
        raw["fdpg"]["claims"][0]["arms"] = ["js", "forward"]

    msg = _bad(tmp_path, arm)
    assert "fdpg, claim 1 ('f-DPG: Jensen-Shannon reaches higher gold than forward KL').arms: 'forward' is not one of the stage's arms" in msg

    def stage(raw):
        raw["elastic"] = raw.pop("elastic_reset")

    assert "elastic: not a sweep stage" in _bad(tmp_path, stage)

    def name(raw):
        raw["ensembles"]["claims"][0]["claim"] += " {nope}"

    msg = _bad(tmp_path, name)
    assert "ensembles.claims" in msg and "KeyError 'nope'" in msg

    def of(raw):
        raw["quark"]["claims"][0]["of"] = "toxicity"

    assert "quark, claim 1 ('Quark: less toxic than PPO + KL').of: diff measures one of loss_after_peak" in _bad(tmp_path, of)

    def other_stage(raw):
        raw["elastic_reset"]["arms"]["kl001"]["stage"] = "bon"

    assert "elastic_reset.arms.kl001.stage: 'bon' is not a sweep stage" in _bad(tmp_path, other_stage)


def test_reproduce_help_names_every_stage():
    """The CLI keeps its help text literal (it imports nothing heavy); this keeps it true."""
    import subprocess
    import sys

    from services.experiments.reproduce.stages import STAGE_NAMES

    out = subprocess.run([sys.executable, "-m", "services.cli", "reproduce", "--help"], capture_output=True, text=True, timeout=120).stdout
    opts = out.split("options:", 1)[1]
    listed = opts.split("--only ONLY", 1)[1].split("(", 1)[1].split(")", 1)[0]
    assert [x.strip() for x in listed.split(",")] == list(STAGE_NAMES)
