"""Load and check the benchmark definition.

Torch-free on purpose: the Snakefile imports this module, and every Slurm job re-parses the Snakefile.
Schema checks (types, unknown keys, strategy kinds) come from ``workflow/schemas/config.schema.yaml``;
the cross-references a schema cannot express (a task naming an unknown dataset, ...) are checked here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ftbench.models import strategy_kinds as kinds
from ftbench.models.zoo import is_known_arch

SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"
# Adapters that only read a user's copy (no download): what their `path:` must point at.
LOCAL_ONLY = {"manifest": "CSV path", "aiforcovid": "folder (registration-only dataset, see docs/datasets.md)"}
# The settings each validation scheme reads besides scheme, val_fraction and seed (splits.SCHEMES).
SCHEME_KEYS = {"kfold": ("folds",), "holdout": ("test_fraction",), "loco": ("centres",)}
# TCIA collections whose clinical sheet ftbench knows (ftbench.data.tcia.COLLECTIONS; kept torch-, polars-free here).
KNOWN_COLLECTIONS = ("COVID-19-NY-SBU", "COVID-19-AR")
# Dataset keys that only some adapters read: anywhere else they would be ignored without a word.
ADAPTER_KEYS = {
    "url": ("cohen",),
    "checksums": ("cohen",),
    "encoding": ("manifest",),
    "root": ("manifest",),
    "columns": ("manifest",),
    "synthetic": ("synthetic",),
}


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


def merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into a copy of ``base`` the way Snakemake merges ``--configfile``s."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load(*paths: str | Path) -> dict:
    """Read, merge (later files override earlier ones), validate and return a config."""
    config: dict = {}
    for path in paths:
        with open(path) as fh:
            config = merge(config, yaml.safe_load(fh) or {})
    return validate(config)


def validate(config: dict, schema: str | Path = SCHEMA) -> dict:
    """Validate against the schema (filling defaults) and check cross-references; return the config."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as schema_validate

    regimes = config.get("regimes")
    if isinstance(regimes, dict) and "fewshot" in regimes and regimes["fewshot"] is None:
        del regimes["fewshot"]  # `fewshot: null` in a preset: few-shot off (a mapping would merge)
    try:
        schema_validate(config, str(schema), set_default=True)
    except WorkflowError as err:
        raise ConfigError(_schema_message(err)) from None
    check_references(config)
    return config


def _schema_message(err: Exception) -> str:
    """Turn jsonschema's long report into one line that names the offending config key."""
    cause = err.args[0] if err.args else str(err)
    inner = getattr(err, "__cause__", None) or getattr(err, "__context__", None)
    for candidate in (inner, *getattr(err, "args", ())):
        path = getattr(candidate, "absolute_path", None)
        if path is not None:
            key = ".".join(str(p) for p in path) or "<top level>"
            return f"config key '{key}': {candidate.message}"
    return f"invalid config: {cause}"


def check_references(config: dict) -> None:
    """Names used by the benchmark selection and the tasks must exist in their catalogues."""
    bench = config["benchmark"]
    for kind in ("tasks", "models", "strategies"):
        for name in bench[kind]:
            if name not in config[kind]:
                known = ", ".join(sorted(config[kind]))
                raise ConfigError(f"config key 'benchmark.{kind}': unknown name '{name}' (known: {known})")
    for name in bench["tasks"]:
        task = config["tasks"][name]
        if task["dataset"] not in config["datasets"]:
            raise ConfigError(
                f"config key 'tasks.{name}.dataset': unknown dataset '{task['dataset']}' "
                f"(known: {', '.join(sorted(config['datasets']))})"
            )
        check_classes(task, name)
    for name in bench["models"]:
        spec = config["models"][name]
        if not is_known_arch(spec["arch"]):
            raise ConfigError(f"config key 'models.{name}.arch': unknown architecture '{spec['arch']}'")
        if spec.get("weights") and not Path(spec["weights"]).exists():
            raise ConfigError(f"config key 'models.{name}.weights': weight path {spec['weights']} does not exist")
    for name in bench["strategies"]:
        if config["strategies"][name].get("kind") is None:
            raise ConfigError(f"config key 'strategies.{name}.kind' is missing")
    for name, ds in config["datasets"].items():
        for key, adapters in ADAPTER_KEYS.items():
            if key in ds and ds["adapter"] not in adapters:
                raise ConfigError(
                    f"config key 'datasets.{name}.{key}': only the {', '.join(adapters)} adapter reads it, "
                    f"not {ds['adapter']}"
                )
        if ds["adapter"] in LOCAL_ONLY and not ds.get("path"):
            raise ConfigError(
                f"config key 'datasets.{name}.path': the {ds['adapter']} adapter reads a local copy, "
                f"give its {LOCAL_ONLY[ds['adapter']]}"
            )
        if ds["adapter"] == "tcia":
            if not ds.get("collection"):
                raise ConfigError(
                    f"config key 'datasets.{name}.collection': the tcia adapter needs the collection name"
                )
            if ds.get("path") and not ds.get("clinical", {}).get("path"):
                raise ConfigError(
                    f"config key 'datasets.{name}.clinical.path': a local copy (path:) of a TCIA "
                    "collection needs its clinical spreadsheet as a local file too"
                )
            if ds["collection"] not in KNOWN_COLLECTIONS and not {"url", "path"} & set(ds.get("clinical", {})):
                raise ConfigError(
                    f"config key 'datasets.{name}.clinical': collection '{ds['collection']}' has no "
                    "clinical sheet known to ftbench; give clinical.url or clinical.path, and clinical.id_column"
                )
    for name in bench["tasks"]:
        check_validation(task_validation(config, name), name)
    if not config.get("regimes", {}).get("full", True) and not (config["regimes"].get("fewshot") or {}).get("k"):
        raise ConfigError(
            "config key 'regimes': the grid is empty (regimes.full is false and regimes.fewshot lists no K)"
        )
    if (config.get("regimes", {}).get("fewshot") or {}).get("k") and config["regimes"]["fewshot"].get(
        "validation"
    ) == "none":
        for name in bench["strategies"]:
            if listed := kinds.listed_candidates(config["strategies"][name]):
                raise ConfigError(
                    f"config key 'regimes.fewshot.validation': 'none' leaves nothing to choose strategy "
                    f"'{name}''s candidates on ({', '.join(listed)}); give one value each, or validate "
                    "few-shot cells on K labels ('kshot')"
                )
    control = config.get("report", {}).get("control")
    if control and control not in bench["strategies"]:
        raise ConfigError(
            f"config key 'report.control': '{control}' is not a strategy of the benchmark "
            f"(benchmark.strategies: {', '.join(bench['strategies'])})"
        )
    pilot = config.get("cluster", {}).get("pilot_task")
    if pilot and pilot not in bench["tasks"]:
        raise ConfigError(
            f"config key 'cluster.pilot_task': '{pilot}' is not a task of the benchmark "
            f"(benchmark.tasks: {', '.join(bench['tasks'])})"
        )
    runtimes = config.get("cluster", {}).get("runtimes")
    if runtimes and not Path(runtimes).is_file():
        raise ConfigError(
            f"config key 'cluster.runtimes': {runtimes} does not exist "
            "(`snakemake cost` writes results/partial/cost_cells.csv)"
        )


def check_classes(task: dict, name: str) -> None:
    """A label value may belong to one of positive, negative and unknown (compared as text, as tasks compare)."""
    seen: dict[str, str] = {}
    for role in ("positive", "negative", "unknown"):
        for value in map(str, task.get(role) or []):
            if value in seen and seen[value] != role:
                raise ConfigError(f"config key 'tasks.{name}.{role}': value '{value}' is also declared {seen[value]}")
            seen[value] = role


def resolved_grid(config: dict, cells: int) -> str:
    """One line saying which regimes, K and repetitions the grid holds (printed at the start of every run:
    a preset's ``regimes:`` merges into config.yaml's, so what runs is not always what the preset shows)."""
    regimes = config.get("regimes", {})
    fewshot = regimes.get("fewshot") or {}
    parts = ["full data"] if regimes.get("full", True) else []
    if fewshot.get("k"):
        parts.append(f"few-shot K={','.join(map(str, fewshot['k']))} x {fewshot.get('repetitions', 5)} repetition(s)")
    bench = config["benchmark"]
    return (
        f"ftbench: grid: {' + '.join(parts)}; {len(bench['tasks'])} task(s), {len(bench['models'])} model(s), "
        f"{len(bench['strategies'])} strateg{'y' if len(bench['strategies']) == 1 else 'ies'}: {cells} cells "
        "(a preset's regimes: merges key by key into config.yaml's; fewshot: null turns few-shot off)"
    )


def task_validation(config: dict, task: str) -> dict:
    """The validation settings of one task: the top-level ``validation`` with the task's own keys over it,
    reduced to the keys its scheme uses (so that, as rule params, only a change that matters reruns)."""
    merged = {**config["validation"], **config["tasks"][task].get("validation", {})}
    keys = ("scheme", *SCHEME_KEYS[merged["scheme"]], "val_fraction", "seed")
    return {key: merged[key] for key in keys if key in merged}


def check_validation(validation: dict, task: str) -> None:
    """What the schema cannot say: LOCO needs its centres listed (the grid must be known before the data)."""
    if validation["scheme"] == "loco" and not validation.get("centres"):
        raise ConfigError(
            f"config key 'tasks.{task}.validation.centres': the loco scheme needs the list of the "
            "task's centres (one fold each), so the grid is known without reading data"
        )


def selected(config: dict, kind: str) -> dict[str, Any]:
    """The catalogue entries of ``kind`` that the benchmark selection uses, in selection order."""
    return {name: config[kind][name] for name in config["benchmark"][kind]}
