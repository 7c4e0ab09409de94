"""Config mistakes that used to pass silently or end in a traceback (issue 24, items 4, 8, 12 and 19).

Each test fails on the code before the fix: duplicate YAML keys kept the last value, a preset changing a
strategy's kind kept the old kind's settings, 2.0 passed as an integer, seed -1 passed, an unquoted Yes became
True, and a number given with --config arrived as text.
"""

import pytest
from conftest import ROOT
from smk import DEMO, snakemake, write_config

from ftbench.plan.config import ConfigError, cli_value, merge, read, read_yaml, validate

PRESETS = sorted((ROOT / "workflow" / "presets").glob("*.yaml"))


def test_a_key_given_twice_names_the_key_the_file_and_the_line(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text(
        "strategies:\n"
        "  lora_r8: {kind: lora, rank: 8, lr: 1.0e-3}\n"
        "  lp: {kind: lp, lr: 1.0e-2}\n"
        "  lora_r8: {kind: lora, rank: 8, lr: 1.0e-1}\n"  # a copied block, not renamed
    )
    with pytest.raises(ConfigError, match=rf"{preset} line 4: key 'lora_r8' is given twice .*first on line 2"):
        read_yaml(preset)
    with pytest.raises(ConfigError, match="key 'lora_r8' is given twice"):
        read([ROOT / "config.yaml", preset])


def test_anchors_and_merge_keys_are_not_duplicates(tmp_path):
    preset = tmp_path / "anchors.yaml"
    preset.write_text("a: &base {x: 1, y: 2}\nb: {<<: *base, x: 3}\nc: *base\n")
    assert read_yaml(preset) == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}, "c": {"x": 1, "y": 2}}


@pytest.mark.parametrize("path", [ROOT / "config.yaml", *PRESETS], ids=lambda p: p.name)
def test_the_shipped_config_and_presets_read_strictly_as_yaml_reads_them(path):
    import yaml

    assert read_yaml(path) == yaml.safe_load(path.read_text())


def test_a_preset_that_changes_a_strategys_kind_replaces_the_entry(tmp_path):
    preset = write_config(tmp_path / "vera_as_lora.yaml", {"strategies": {"vera": {"kind": "lora", "lr": 1.0e-3}}})
    config, notes = read([ROOT / "config.yaml", preset])
    assert config["strategies"]["vera"] == {"kind": "lora", "lr": 1.0e-3}  # not LoRA at VeRA's rank 256
    assert notes == [f"{preset}: strategies.vera: kind lora replaces kind vera and its settings (not kept: rank)"]
    validate(merge(config, {"benchmark": {"strategies": ["vera"]}}))
    # the same kind still merges key by key
    same = write_config(tmp_path / "vera_lr.yaml", {"strategies": {"vera": {"kind": "vera", "lr": 1.0e-3}}})
    config, notes = read([ROOT / "config.yaml", same])
    assert config["strategies"]["vera"]["rank"] == 256 and config["strategies"]["vera"]["lr"] == 1.0e-3
    assert notes == []


@pytest.mark.parametrize(
    ("override", "key", "hint"),
    [
        ({"validation": {"folds": 2.0}}, "validation.folds", "write 2, not 2.0"),
        ({"training": {"batch_size": 8.0}}, "training.batch_size", "write 8, not 8.0"),
        ({"tasks": {"synthetic_outcome": {"batch_size": 4.0}}}, "tasks.synthetic_outcome.batch_size", "write 4"),
        ({"regimes": {"fewshot": {"k": [1, 2.0]}}}, "regimes.fewshot.k.1", "write 2, not 2.0"),
        ({"strategies": {"lora_r8": {"kind": "lora", "rank": 8.0}}}, "strategies.lora_r8.rank", "write 8, not 8.0"),
        ({"validation": {"seed": -1}}, "validation.seed", "less than the minimum of 0"),
        ({"training": {"seed": -1}}, "training.seed", "less than the minimum of 0"),
        ({"report": {"seed": 2**32}}, "report.seed", "greater than the maximum"),
    ],
)
def test_an_integer_setting_refuses_a_float_or_a_bad_seed_naming_the_key(raw_config, override, key, hint):
    with pytest.raises(ConfigError, match=rf"config key '{key}': .*{hint}"):
        validate(merge(raw_config, override))


def test_a_float_where_a_number_is_meant_is_fine(raw_config):
    validate(merge(raw_config, {"training": {"lr": 1.0, "weight_decay": 0}}))


def test_an_unquoted_yes_says_to_write_it_in_quotes(raw_config, tmp_path):
    preset = tmp_path / "yes.yaml"
    preset.write_text("tasks:\n  synthetic_outcome:\n    positive: [Yes]\n")
    with pytest.raises(ConfigError, match=r"'tasks.synthetic_outcome.positive.0': True .*write it in quotes.*'Yes'"):
        validate(merge(raw_config, read_yaml(preset)))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"lora_r8":{"lr":0.0003}}', {"lora_r8": {"lr": 0.0003}}),
        ("{lora_r8: {lr: 3.0e-4, rank: 4}}", {"lora_r8": {"lr": 3.0e-4, "rank": 4}}),
        ("3e-4", 3e-4),
        ("5", 5),
        ("{device: a40}", {"device": "a40"}),
        ("{positive: ['1']}", {"positive": ["1"]}),  # quoted text stays text
        ("", None),
    ],
)
def test_a_config_value_from_the_command_line_reads_as_yaml(text, value):
    assert cli_value(text) == value


def test_a_number_given_with_config_on_the_command_line_is_accepted(tmp_path):
    """Snakemake passes it on as the text '0.0003'; the schema refused it ('not valid under any of the given
    schemas'). Also: a duplicate key in a --configfile stops Snakemake with the file and line."""
    proc = snakemake(
        ROOT, tmp_path, "--configfile", str(DEMO), "--config", 'strategies={"lora_r8":{"lr":0.0003}}', "-n", "--quiet"
    )
    assert "not valid" not in proc.stdout + proc.stderr
    dup = tmp_path / "dup.yaml"
    dup.write_text("validation:\n  folds: 3\n  folds: 2\n")
    proc = snakemake(ROOT, tmp_path, "--configfile", str(DEMO), str(dup), "-n", "--quiet", check=False)
    assert proc.returncode and f"{dup} line 3: key 'folds' is given twice" in proc.stdout + proc.stderr
