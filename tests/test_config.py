import pytest

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
