"""Config validation: every mistake fails at parse time with a message naming the key."""

import pytest

from ftbench import grid
from ftbench.config import ConfigError, validate


def test_demo_and_default_configs_are_valid(demo_config):
    assert demo_config["validation"]["folds"] == 5  # default filled in by the schema
    # 2 regimes x 5 folds x (7 strategies on both models + VPT on the ViT only)
    assert len(grid.cells(demo_config)) == 2 * 5 * (2 * 7 + 1)


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["strategies"]["lp"].update(learning_rate=0.1), "strategies.lp"),
    (lambda c: c["strategies"]["lp"].update(kind="lp_typo"), "strategies.lp.kind"),
    (lambda c: c["training"].update(batch_size="32"), "training.batch_size"),
    (lambda c: c.update(unknown_section={}), "<top level>"),
    (lambda c: c["regimes"]["fewshot"].update(k=[0]), "regimes.fewshot.k.0"),
    (lambda c: c["benchmark"].update(models=["tiny_vit", "nope"]), "benchmark.models"),
    (lambda c: c["benchmark"].update(strategies=["missing_strategy"]), "benchmark.strategies"),
    (lambda c: c["tasks"]["synthetic_outcome"].update(dataset="nowhere"), "tasks.synthetic_outcome.dataset"),
    (lambda c: c["models"]["tiny_vit"].update(arch="not_a_real_arch"), "models.tiny_vit.arch"),
])
def test_bad_config_names_the_key(raw_config, mutate, key):
    mutate(raw_config)
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        validate(raw_config)


def test_any_timm_name_is_accepted(raw_config):
    raw_config["models"]["tiny_vit"]["arch"] = "convnext_atto"
    validate(raw_config)


def test_cell_settings_change_only_with_their_own_definition(demo_config):
    import copy

    before = {c.path: grid.cell_settings(demo_config, c) for c in grid.cells(demo_config)}
    changed = copy.deepcopy(demo_config)
    changed["strategies"]["lp"]["lr"] = 0.5
    after = {c.path: grid.cell_settings(changed, c) for c in grid.cells(changed)}
    differ = {p for p in before if before[p] != after[p]}
    assert differ and all("/lp/" in p for p in differ)
    assert len(differ) == sum("/lp/" in p for p in before)
