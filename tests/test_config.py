"""Config validation: every mistake fails at parse time with a message naming the key."""

import pytest
from conftest import ROOT
from smk import snakemake

from ftbench.plan import grid
from ftbench.plan.config import ConfigError, validate


def test_demo_and_default_configs_are_valid(demo_config):
    assert demo_config["validation"]["folds"] == 5  # default filled in by the schema
    # 2 regimes x 5 folds x (7 strategies on both models + VPT on the ViT only)
    assert len(grid.cells(demo_config)) == 2 * 5 * (2 * 7 + 1)


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["strategies"]["lp"].update(learning_rate=0.1), "strategies.lp"),
        (lambda c: c["strategies"]["lp"].update(kind="lp_typo"), "strategies.lp.kind"),
        (lambda c: c["training"].update(batch_size="32"), "training.batch_size"),
        (lambda c: c.update(unknown_section={}), "<top level>"),
        (lambda c: c["regimes"]["fewshot"].update(k=[0]), "regimes.fewshot.k.0"),
        (lambda c: c["benchmark"].update(models=["tiny_vit", "nope"]), "benchmark.models"),
        (lambda c: c["benchmark"].update(strategies=["missing_strategy"]), "benchmark.strategies"),
        (lambda c: c["tasks"]["synthetic_outcome"].update(dataset="nowhere"), "tasks.synthetic_outcome.dataset"),
        (lambda c: c["models"]["tiny_vit"].update(arch="not_a_real_arch"), "models.tiny_vit.arch"),
        (lambda c: c["validation"].update(scheme="bootstrap"), "validation.scheme"),
        (lambda c: c["validation"].update(scheme="loco"), "tasks.synthetic_outcome.validation.centres"),
        (
            lambda c: c["tasks"]["synthetic_outcome"].update(validation={"scheme": "loco", "centres": ["a"]}),
            "tasks.synthetic_outcome.validation.centres",
        ),
        (
            lambda c: c["tasks"]["synthetic_outcome"].update(validation={"folds": 1}),
            "tasks.synthetic_outcome.validation.folds",
        ),
        (lambda c: c["datasets"]["aiforcovid"].pop("path"), "datasets.aiforcovid.path"),
        (lambda c: c["datasets"].update(x={"adapter": "tcia", "collection": "OTHER"}), "datasets.x.clinical"),
        (lambda c: c["datasets"]["nysbu"].update(path="/data/nysbu"), "datasets.nysbu.clinical.path"),
        (lambda c: c.update(cluster={"runtimes": "results/partial/none.csv"}), "cluster.runtimes"),
        (lambda c: c.update(cluster={"runtime_margin": 0.5}), "cluster.runtime_margin"),
        (lambda c: c.update(cluster={"pilot_task": "nysbu_death"}), "cluster.pilot_task"),
        # issue 17: a value declared in two classes; an empty grid; a setting the dataset's adapter would ignore
        (
            lambda c: c["tasks"]["synthetic_outcome"].update(negative=["poor", "good"]),
            "tasks.synthetic_outcome.negative",
        ),
        (lambda c: c["tasks"]["synthetic_outcome"].update(unknown=["?", "good"]), "tasks.synthetic_outcome.unknown"),
        (lambda c: c.update(regimes={"full": False, "fewshot": {"k": []}}), "regimes.fewshot.k"),
        (lambda c: c.update(regimes={"full": False, "fewshot": None}), "regimes"),
        (lambda c: c["datasets"]["synthetic"].update(encoding="latin-1"), "datasets.synthetic.encoding"),
        # issue 13/14: few-shot cells that validate on nothing cannot choose among a strategy's candidates
        (
            lambda c: (
                c["regimes"]["fewshot"].update(validation="none"),
                c["strategies"]["lp"].update(head_lr=[0.1, 0.01]),
                c["benchmark"].update(strategies=["lp"]),
            ),
            "regimes.fewshot.validation",
        ),
        (lambda c: c["regimes"]["fewshot"].update(validation="some"), "regimes.fewshot.validation"),
        (
            lambda c: c["strategies"]["lora_r8"].update(target_modules={"no_such_layout": ["x"]}),
            "strategies.lora_r8.target_modules",
        ),
    ],
)
def test_bad_config_names_the_key(raw_config, mutate, key):
    mutate(raw_config)
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        validate(raw_config)


def test_a_value_in_two_classes_names_the_value(raw_config):
    raw_config["tasks"]["synthetic_outcome"].update(positive=["poor"], negative=["poor", "good"])
    with pytest.raises(ConfigError, match="'tasks.synthetic_outcome.negative': value 'poor' is also declared positive"):
        validate(raw_config)


def test_fewshot_null_turns_few_shot_off_and_the_grid_line_says_what_runs(raw_config):
    from ftbench.plan.config import merge, resolved_grid

    config = validate(merge(raw_config, {"regimes": {"full": True}}))  # merged into config.yaml's: few-shot stays on
    assert "few-shot K=4 x 1 repetition(s)" in resolved_grid(config, len(grid.cells(config)))
    config = validate(merge(raw_config, {"regimes": {"full": True, "fewshot": None}}))
    line = resolved_grid(config, len(grid.cells(config)))
    assert grid.regimes(config) == ["full"] and "few-shot" not in line.partition("(")[0]
    assert line.startswith("ftbench: grid: full data; 1 task(s), 2 model(s), 8 strategies: 75 cells")


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


def test_fold_count_is_known_from_the_config_for_every_scheme(raw_config):
    from ftbench.plan.config import task_validation

    raw_config["tasks"]["synthetic_outcome"]["validation"] = {"scheme": "loco", "centres": ["c0", "c1", "c2"]}
    config = validate(raw_config)
    assert task_validation(config, "synthetic_outcome") == {
        "scheme": "loco",
        "centres": ["c0", "c1", "c2"],
        "val_fraction": 0.2,
        "seed": 0,
    }
    assert {c.fold for c in grid.cells(config)} == {0, 1, 2}
    config["tasks"]["synthetic_outcome"]["validation"] = {"scheme": "holdout"}
    assert task_validation(config, "synthetic_outcome")["test_fraction"] == 0.2
    assert {c.fold for c in grid.cells(config)} == {0}


def test_protocol_config_declares_the_six_tasks_of_the_first_study():
    from ftbench.plan.config import load, task_validation

    config = load(ROOT / "config.yaml", ROOT / "workflow" / "presets" / "protocol.yaml")
    assert {config["tasks"][t]["dataset"] for t in config["benchmark"]["tasks"]} == {
        "aiforcovid",
        "nysbu",
        "covid19_ar",
        "cohen",
    }
    assert task_validation(config, "afc_severity")["centres"] == list("ABCDEF")
    assert grid.fold_count(config, "afc_death") == 6 and grid.fold_count(config, "nysbu_icu") == 5
    default = load(ROOT / "config.yaml")
    assert not {config["tasks"][t]["dataset"] for t in default["benchmark"]["tasks"]} & {"aiforcovid"}


@pytest.mark.slow
@pytest.mark.parametrize("preset", [None, "protocol.yaml", "s1.yaml"])
def test_dry_run_plans_the_grid_without_any_data(tmp_path, preset):
    args = ["--configfile", str(ROOT / "workflow" / "presets" / preset)] if preset else []
    proc = snakemake(ROOT, tmp_path, "-n", "--quiet", "rules", *args, timeout=900)  # fails with its output
    assert "download_dataset" in proc.stdout + proc.stderr
