"""Load and check the benchmark definition.

Torch-free on purpose: the Snakefile imports this module, and every Slurm job re-parses the Snakefile.
Schema checks (types, unknown keys, strategy kinds) come from ``workflow/schemas/config.schema.yaml``;
the cross-references a schema cannot express (a task naming an unknown dataset, ...) are checked here.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml

from ftbench.models import strategy_kinds as kinds
from ftbench.models.zoo import resolve, transformers_problem
from ftbench.plan.reach import cohort_of

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
    "source": ("tcia",),
}


# Why a prognostic task uses each patient's admission image (tasks.<name>.images: first, the default).
HINDSIGHT = (
    "every image of a patient: later images may show the outcome (endotracheal tubes, central lines reveal "
    "intubation and ICU admission), hindsight a prognostic model does not have at admission; "
    "images: first (the default) uses each patient's admission image"
)


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


class StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """YAML as ``yaml.safe_load`` reads it, except that a key given twice in one mapping is an error: YAML's
    "the last one wins" silently swaps a task's classes or a strategy's rate when a copied block is not renamed."""


class _DuplicateKey(Exception):
    pass


def _mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden, as YAML means
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(f"line {line}: key '{key}' is given twice in one mapping (first on line {seen[key]})")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: str | Path) -> dict:
    """One config file or preset, read with :class:`StrictLoader`; a duplicate key names the file and line."""
    with open(path, encoding="utf-8") as fh:
        try:
            return yaml.load(fh, StrictLoader) or {}
        except _DuplicateKey as err:
            raise ConfigError(
                f"{path} {err}: YAML would keep only the last one, silently; remove or rename one"
            ) from None


def cli_value(text: str) -> Any:
    """A ``--config key=value`` value as a config file would give it. Snakemake reads nested values as text
    (``strategies={lora_r8: {lr: 0.0003}}`` gives the string '0.0003', which no number setting accepts); here
    numbers are numbers and quoted text stays text, in the value and everything nested in it."""
    if text == "":
        return None
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return yaml.load(text, StrictLoader)


def merge(base: dict, override: dict, notes: list[str] | None = None, at: str = "") -> dict:
    """Deep-merge ``override`` into a copy of ``base``: mappings key by key, anything else replaced, except that
    a mapping whose ``kind`` changes is replaced whole (a strategy's settings belong to its kind: a preset's
    ``vera: {kind: lora, lr: 1.0e-3}`` merged key by key would keep VeRA's rank 256 and alpha 512). Each such
    replacement is described in ``notes``, with the settings it leaves out."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            if "kind" in value and "kind" in old and value["kind"] != old["kind"]:
                dropped = ", ".join(sorted(set(old) - set(value) - {"kind"})) or "nothing"
                if notes is not None:
                    notes.append(
                        f"{at}{key}: kind {value['kind']} replaces kind {old['kind']} and its settings "
                        f"(not kept: {dropped})"
                    )
                out[key] = copy.deepcopy(value)
            else:
                out[key] = merge(old, value, notes, f"{at}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def read(paths: list[str | Path], overrides: list[str] | None = None) -> tuple[dict, list[str]]:
    """The config from its files (later ones over earlier ones) and ``--config key=value`` entries, merged by
    :func:`merge`; with a note for each entry whose kind a later file changed."""
    config: dict = {}
    notes: list[str] = []
    for path in paths:
        found: list[str] = []
        config = merge(config, read_yaml(path), found)
        notes += [f"{path}: {note}" for note in found]
    for entry in overrides or []:
        key, _, text = entry.partition("=")
        found = []
        config = merge(config, {key: cli_value(text)}, found)
        notes += [f"--config {note}" for note in found]
    return config, notes


def load(*paths: str | Path) -> dict:
    """Read, merge (later files override earlier ones), validate and return a config."""
    return validate(read(list(paths))[0])


def validate(config: dict, schema: str | Path = SCHEMA) -> dict:
    """Validate against the schema (filling defaults) and check cross-references; return the config."""
    regimes = config.get("regimes")
    if isinstance(regimes, dict) and "fewshot" in regimes and regimes["fewshot"] is None:
        del regimes["fewshot"]  # `fewshot: null` in a preset: few-shot off (a mapping would merge)
    from jsonschema.exceptions import best_match

    error = best_match(_validator(str(schema)).iter_errors(config))
    if error is not None:
        raise ConfigError(_schema_message(error))
    check_references(config)
    return config


def _read_schema(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) if path.endswith((".yaml", ".yml")) else json.load(fh)


@functools.cache
def _validator(schema_path: str):
    """A JSON Schema validator that fills in defaults (as Snakemake's ``validate`` does) and takes an integer to
    be an int: JSON Schema also counts 2.0 as an integer, which then fails later, far from the config key."""
    from jsonschema import Draft202012Validator, validators
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    def resource(schema: dict) -> Resource:
        # without its $schema, a referenced file is checked by this validator, not by its draft's standard one
        return Resource.from_contents(
            {k: v for k, v in schema.items() if k != "$schema"}, default_specification=DRAFT202012
        )

    schema = _read_schema(schema_path)
    schema["$id"] = Path(schema_path).resolve().as_uri()  # relative $refs (strategies.schema.json) resolve here
    registry = Registry(retrieve=lambda uri: resource(_read_schema(url2pathname(urlparse(uri).path)))).with_resource(
        schema["$id"], Resource.from_contents(schema)
    )
    properties = Draft202012Validator.VALIDATORS["properties"]

    def with_defaults(validator, props: dict, instance, schema: dict):
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, schema)

    types = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    strict = validators.extend(Draft202012Validator, {"properties": with_defaults}, type_checker=types)
    return strict(schema, registry=registry)


def _schema_message(error) -> str:
    """One line that names the offending config key, with a hint where YAML read a value otherwise than meant."""
    key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    value = error.instance
    hint = ""
    if isinstance(value, float) and value.is_integer():
        hint = f"; a whole number is meant: write {int(value)}, not {value}"
    elif isinstance(value, bool):
        hint = (
            "; YAML reads an unquoted yes, no, true, false, on or off as a boolean: to mean the text, write it "
            "in quotes as the data spell it (e.g. 'Yes')"
        )
    return f"config key '{key}': {error.message}{hint}"


def check_references(config: dict) -> None:
    """Names used by the benchmark selection and the tasks must exist in their catalogues."""
    bench = config["benchmark"]
    for kind in ("tasks", "models", "strategies"):
        for name in bench[kind]:
            if name not in config[kind]:
                known = ", ".join(sorted(config[kind]))
                raise ConfigError(f"config key 'benchmark.{kind}': unknown name '{name}' (known: {known})")
    for name in bench["tasks"]:
        check_task(config, name)
    for name in bench["models"]:
        spec = config["models"][name]
        try:
            entry = resolve(spec["arch"])
        except KeyError as err:  # its message says what the name is not, or what open_clip lacks
            raise ConfigError(f"config key 'models.{name}.arch': {err.args[0]}") from None
        if problem := transformers_problem(entry):
            raise ConfigError(f"config key 'models.{name}.arch': '{spec['arch']}' is built by transformers: {problem}")
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
    check_transfer(config)
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


def check_transfer(config: dict) -> None:
    """External validation pairs (``regimes.transfer``): a source and its targets are declared tasks, each target of
    another cohort (patients of another hospital, not the source's own). A source outside benchmark.tasks (a preset
    narrowed the grid) leaves its pairs out, which planning prints (``ftbench.plan.transfer.left_out``)."""
    spec = config.get("regimes", {}).get("transfer") or {}
    if spec and not config["regimes"].get("full", True):
        raise ConfigError(
            "config key 'regimes.transfer': external validation scores the sources' full-data models, "
            "but regimes.full is false"
        )
    for source, targets in spec.items():
        if source not in config["tasks"]:
            raise ConfigError(
                f"config key 'regimes.transfer.{source}': unknown source task '{source}' "
                f"(known: {', '.join(sorted(config['tasks']))})"
            )
        for target in targets or []:
            key = f"regimes.transfer.{source}"
            if target not in config["tasks"]:
                raise ConfigError(
                    f"config key '{key}': unknown target task '{target}' (known: {', '.join(sorted(config['tasks']))})"
                )
            check_task(config, target)
            mine, theirs = cohort_of(config["tasks"][source]), cohort_of(config["tasks"][target])
            if mine == theirs:
                raise ConfigError(
                    f"config key '{key}': target '{target}' is of the source's own cohort '{mine}' (tasks.<t>.cohort, "
                    "else the dataset): not an external validation"
                )


def check_task(config: dict, name: str) -> None:
    """A task the grid reads (a task of the benchmark, or an external validation's target): its dataset is
    declared, and each of its label values has one class."""
    task = config["tasks"][name]
    if task["dataset"] not in config["datasets"]:
        raise ConfigError(
            f"config key 'tasks.{name}.dataset': unknown dataset '{task['dataset']}' "
            f"(known: {', '.join(sorted(config['datasets']))})"
        )
    check_classes(task, name)


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
    a preset's ``regimes:`` merges into config.yaml's, so what runs is not always what the preset shows), and a
    warning line for the tasks that use every image of a patient."""
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
    ) + hindsight(config)


def hindsight(config: dict) -> str:
    """A warning line naming the selected tasks that use every image of a patient (``images: all``); else ''."""
    tasks = [name for name, task in selected(config, "tasks").items() if task.get("images") == "all"]
    if not tasks:
        return ""
    return f"\nftbench: warning: {', '.join(tasks)}: images: all, {HINDSIGHT}"


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
