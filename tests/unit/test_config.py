import copy
from pathlib import Path

import pytest
import yaml

from learner.config import ConfigError, TetherConfig, load_config


def test_presets_load_and_validate():
    from learner.config import PRESETS_DIR

    names = [p.stem for p in PRESETS_DIR.glob("*.yaml")]
    assert {"default", "tiny"} <= set(names)
    for n in names:
        cfg = load_config(n)
        assert cfg.expand()


def test_unknown_field_names_field_and_accepted(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ppo: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "ppo.learning_rate" in msg and "unknown field" in msg and "lr" in msg and "minibatch_size" in msg


def test_invalid_literal_lists_accepted_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ensemble: {aggregation: median}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "ensemble.aggregation" in str(e.value) and "'wco'" in str(e.value) and "median" in str(e.value)


def test_uwo_lambda_rejected_for_other_aggregations():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["ensemble.aggregation=wco", "ensemble.uwo_lambda=0.5"])
    assert "uwo_lambda applies only to aggregation 'uwo'" in str(e.value)
    assert load_config("tiny", ["ensemble.aggregation=uwo", "ensemble.uwo_lambda=0.5"]).ensemble.lam == 0.5
    assert TetherConfig().ensemble.model_copy(update={"aggregation": "uwo"}).lam == 0.1  # Coste et al. PPO default


def test_overrides_and_bad_override():
    cfg = load_config("tiny", ["train.iterations=7", "kl.mode=fixed"])
    assert cfg.train.iterations == 7 and cfg.kl.mode == "fixed"
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config("tiny", ["train.iterations"])
    with pytest.raises(ConfigError, match="presets: .*tiny"):
        load_config("no-such-preset")


def test_variants_expand_and_are_validated(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: cmp\nvariants:\n  a: {kl: {coef: 0.1}}\n  b: {elastic_reset: {enabled: true}}\n")
    runs = load_config(p).expand()
    assert [r.name for r in runs] == ["cmp-a", "cmp-b"]
    assert runs[0].kl.coef == 0.1 and not runs[0].elastic_reset.enabled and runs[1].elastic_reset.enabled
    p.write_text("variants:\n  a: {kl: {coeff: 0.1}}\n")
    with pytest.raises(ConfigError, match="variant 'a'"):
        load_config(p)


def test_paper_defaults():
    c = TetherConfig()
    assert c.elastic_reset.eta == 0.995 and c.elastic_reset.every == 17  # Noukhovitch et al. IMDB
    assert c.proxy.n_members == 5 and c.proxy.label_noise == 0.25  # Coste et al.
    assert c.generation.max_new_tokens == 48 and c.ppo.clip == 0.2
    assert c.kl.target == 1.0 and c.kl.mode == "adaptive"


def test_every_field_is_documented():
    from pydantic import BaseModel

    def walk(model):
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann)
            else:
                assert f.description, f"{model.__name__}.{name} has no description"

    walk(TetherConfig)


def test_compose_is_the_one_merge_for_presets_overrides_variants_and_sweep_cells():
    from learner.config import compose_dict, parse_overrides

    base = {"algorithm": "ppo", "kl": {"coef": 0.1, "target": None}, "train": {"iterations": 3}}
    frozen = copy.deepcopy(base)
    # a layer switching algorithm drops the base's sections of the other algorithms
    out = compose_dict(base, {"algorithm": "fdpg", "fdpg": {"beta": 0.5}}, {"train": {"seed": 2}})
    assert out == {"algorithm": "fdpg", "fdpg": {"beta": 0.5}, "train": {"iterations": 3, "seed": 2}}
    # the same algorithm keeps them; later layers win; nested sections merge, not replace
    out = compose_dict(base, {"kl": {"coef": 0.2}}, {"kl": {"coef": 0.3}})
    assert out["kl"] == {"coef": 0.3, "target": None}
    assert base == frozen  # nothing passed in is modified
    assert parse_overrides(["kl.coef=0.05", "train.iterations=4", "kl.coef=0.07", "name=x"]) == {
        "kl": {"coef": 0.07}, "train": {"iterations": 4}, "name": "x"}


@pytest.mark.parametrize("item", ["kl.coef", "=3", "kl..coef=1", ".x=1", "kl.coef=[1,"])
def test_bad_override_items_name_the_form_accepted(item):
    from learner.config import ConfigError, parse_overrides

    with pytest.raises(ConfigError, match="override"):
        parse_overrides([item])


def test_a_sweep_cell_and_a_variant_compose_the_same_config():
    """The same layers through `--set` (load_config), a variant (expand) and a sweep cell give one config."""
    from learner.config import load_config
    from services.experiments.sweep.spec import load_sweep

    via_set = load_config("tiny", ["algorithm=quark", "quark.batch_size=8", "train.seed=3"])
    via_variant = load_config("tiny", ["variants={v: {algorithm: quark, quark: {batch_size: 8}, train: {seed: 3}}}"]).expand()[0]
    assert via_variant.model_dump(exclude={"name", "variants"}) == via_set.model_dump(exclude={"name", "variants"})
    spec = {"base": "tiny", "seeds": [3], "methods": {"q": {"config": {"algorithm": "quark", "quark": {"batch_size": 8}}}}}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.yaml"
        path.write_text(yaml.safe_dump(spec))
        cell = load_sweep(path, Path(d) / "out").cells[0].config
    exclude = {"name", "variants", "data_dir"}
    assert cell.model_dump(exclude=exclude) == via_set.model_dump(exclude=exclude)


def test_every_config_in_the_readme_is_valid(tmp_path):
    """The YAML configs the README shows (configuration, the cluster's learner group) load as written."""
    import re
    import textwrap

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"^( *)```yaml\n(.*?)^\1```", text, flags=re.S | re.M)
    assert len(blocks) >= 2
    for i, (indent, body) in enumerate(blocks):
        path = tmp_path / f"readme-{i}.yaml"
        path.write_text(textwrap.dedent(body))
        for cfg in load_config(path).expand():
            assert cfg.name
