# Shared setup: validate the config and expose the grid to the rules.
import json
import shlex
import sys

SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

from ftbench import DATA_VERSION, EMBEDDING_VERSION, SPLIT_VERSION
from ftbench.config import ConfigError, resolved_grid, selected, validate
from ftbench import grid

try:
    validate(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

TASKS = selected(config, "tasks")
DATASETS = {name: config["datasets"][name] for name in dict.fromkeys(t["dataset"] for t in TASKS.values())}
CELLS = grid.cells(config)
print(resolved_grid(config, len(CELLS)), file=sys.stderr)
for (model, strategy), reason in grid.excluded(config).items():
    print(f"ftbench: not in the grid: {model} x {strategy}: {reason}", file=sys.stderr)


def _python() -> str:
    """The interpreter of the rules: the conda env's under --sdm conda, else the one running Snakemake."""
    methods = getattr(workflow.deployment_settings, "deployment_method", ()) or ()
    return "python" if any("conda" in str(m).lower() for m in methods) else sys.executable


# Rules call the ftbench CLI of this checkout, whatever is installed (conda env, venv, cluster node).
FTBENCH = f"PYTHONPATH={SRC}${{PYTHONPATH:+:$PYTHONPATH}} {_python()} -m ftbench"


def optional(flag: str, name: str):
    """Params function: ``--flag <input.name>`` when the job has that input, else nothing."""
    return lambda w, input: f"--{flag} {shlex.quote(input[name])}" if name in input.keys() else ""


def to_json(value) -> str:
    """Stable JSON for params: the same settings always give the same string (no spurious reruns)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


wildcard_constraints:
    dataset=r"[^/]+",
    task=r"[^/]+",
    model=r"[^/]+",
    strategy=r"[^/]+",
    group=r"full|k\d+",
    size=r"\d+",
    k=r"\d+",
