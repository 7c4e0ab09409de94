"""Command line of ftbench: one subcommand per workflow step; the Snakemake rules call these."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ftbench.errors import Preempted

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger("ftbench")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal with its state saved; a rerun resumes


def _json(text: str) -> dict:
    return json.loads(text)


def cmd_download(args) -> None:
    from ftbench.data.adapters import download

    download(args.adapter, args.source, args.out)
    Path(args.done).write_text(json.dumps(args.source, sort_keys=True) + "\n")


def cmd_dataset(args) -> None:
    from ftbench.data.adapters import build_table, check_rejects, summary

    table, rejects = build_table(args.name, args.spec, args.resources)
    for row in rejects.iter_rows(named=True):
        log.warning("rejected %s: %s", row["file"], row["reason"])
    print(f"{summary(args.name, table, rejects)} (listed in {args.rejects})", flush=True)  # stdout: the terminal
    check_rejects(args.name, args.spec, table, rejects)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    table.write_parquet(args.table)
    rejects.write_csv(args.rejects)


def cmd_store(args) -> None:
    import polars as pl

    from ftbench.data import store

    store.build(pl.read_parquet(args.table), args.side, args.out)


def cmd_task(args) -> None:
    import polars as pl

    from ftbench.data import tasks

    rejects = pl.read_csv(args.rejects, infer_schema=False) if args.rejects else None
    rows, report = tasks.build(pl.read_parquet(args.table), args.spec, args.name, rejects)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows.write_parquet(args.out)
    Path(args.report).write_text(json.dumps(report, indent=1))
    log.info("task %s: %s", args.name, report["steps"])
    print(f"task {args.name}: label values of column '{report['label']}':\n{tasks.label_table(report)}")  # stdout
    if report["patient_ids_differing_only_in_case"]:
        print(
            f"task {args.name}: warning: patient ids that differ only in case are different patients: "
            f"{report['patient_ids_differing_only_in_case'][:10]}"
        )
    if args.left_out:
        from ftbench.data.adapters import REJECTS_SCHEMA

        pl.DataFrame(report["left_out"], schema=REJECTS_SCHEMA).write_csv(args.left_out)
    for row in report["left_out"]:
        log.warning("left out %s: %s", row["file"], row["reason"])


def cmd_folds(args) -> None:
    import polars as pl

    from ftbench import splits

    split, summary = splits.make(pl.read_parquet(args.task_table), args.validation, args.task)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    split.write_parquet(args.out)
    Path(args.summary).write_text(
        json.dumps({"task": args.task, "validation": args.validation, "folds": summary}, indent=1)
    )
    for fold in summary:
        log.info(
            "task %s fold %d (test: %s): %s",
            args.task,
            fold["fold"],
            fold["test"],
            {k: v for k, v in fold.items() if k.endswith("_patients")},
        )


def cmd_fewshot(args) -> None:
    import polars as pl

    from ftbench import splits

    table, split = pl.read_parquet(args.task_table), pl.read_parquet(args.split)
    draw = splits.fewshot_draws(table, split, args.k, args.repetitions, args.seed, args.task)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    draw.write_parquet(args.out)


def cmd_weights(args) -> None:
    from ftbench.models import weights
    from ftbench.models.zoo import resolve

    entry = resolve(args.arch, pretrained=True)
    file = weights.fetch(args.model, entry, Path(args.out).parent)
    weights.check(args.model, entry, file)
    manifest = weights.write_manifest(args.out, args.model, entry, file)
    log.info(
        "model %s: %s (%d bytes, sha256 %s) from %s",
        args.model,
        file,
        manifest["bytes"],
        manifest["sha256"],
        entry.source,
    )


def cmd_train(args) -> None:
    from ftbench.train.job import run_job

    run_job(
        args.job,
        args.task_table,
        args.split,
        args.store,
        args.out_dir,
        args.checkpoints,
        args.fewshot,
        args.threads,
        args.embeddings,
        args.weights,
        args.concurrent_cells,
    )


def cmd_transfer(args) -> None:
    from ftbench.train.transfer import run_transfer

    run_transfer(
        args.job, args.cells, args.task_table, args.out_dir, args.store, args.embeddings, args.weights, args.threads
    )


def cmd_embed(args) -> None:
    from ftbench.train import embeddings

    info = embeddings.build(args.model, args.store, args.out, args.batch_size, args.threads, weights_path=args.weights)
    log.info(
        "embedding cache %s: %d images x %d features in %.1fs", args.out, info["images"], info["dim"], info["seconds"]
    )


def cmd_aggregate(args) -> None:
    from ftbench.analysis import aggregate

    grid = Path(args.grid).read_text().split() if args.grid else None
    cells, predictions = aggregate.collect(aggregate.discover(args.cells_root, grid))
    summary = aggregate.summarise(cells, predictions, args.bootstrap, args.seed)
    for frame, path in ((cells, args.cells_out), (predictions, args.predictions_out), (summary, args.summary)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(path)
    summary.write_csv(Path(args.summary).with_suffix(".csv"))
    log.info(
        "aggregated %d cells (%d ok) into %d summary rows",
        cells.height,
        cells.filter(cells["status"] == "ok").height,
        summary.height,
    )


def cmd_stats(args) -> None:
    import polars as pl

    from ftbench.analysis import stats

    cohorts = json.loads(args.cohorts) if args.cohorts else None
    stats.compare(
        pl.read_parquet(args.cells),
        alpha=args.alpha,
        rope=args.rope,
        cohorts=cohorts,
        control=args.control,
        within=args.within_task == "folds",
        hierarchical_model=args.hierarchical == "true",
    ).write(args.out_dir)


def cmd_cost(args) -> None:
    import polars as pl

    from ftbench.analysis import cost

    config, cells = args.config or {}, pl.read_parquet(args.cells)
    device_name, paper, notes = args.device_name, None, []
    if config.get("cost", {}).get("device"):  # the FLOP model projects what nothing measured can
        from ftbench.plan import flop_cost

        estimate = flop_cost.estimate(config, cells, Path(args.results))
        paper, device_name = estimate.cells, device_name or flop_cost.DEVICES[config["cost"]["device"]].gpu
        notes = flop_cost.describe(config, estimate)
    projected = cost.project(Path(args.grid).read_text().split(), cells, device_name, paper)
    summary = cost.summarise(projected, config.get("training", {}).get("concurrent_cells", 1))
    if paper is not None:
        summary = pl.concat([summary, flop_cost.embedding_summary(estimate.embeddings)], how="vertical_relaxed")
        projected = projected.join(paper.drop("flop_seconds"), on="cell", how="left")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    summary.write_csv(args.out)
    projected.write_csv(Path(args.out).with_name(Path(args.out).stem + "_cells.csv"))
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=160, float_precision=2):
        print(summary)
    done, rest = summary["done_hours"].sum(), summary["remaining_hours"].sum()
    counts = dict(projected.group_by("source").len().iter_rows())
    print(
        f"{projected.height} cells: {done:.4g} device-hours measured ({counts.get('measured', 0)} cells), "
        f"{rest:.4g} projected for the rest (cells from their job: {counts.get('job', 0)}, scaled: "
        f"{counts.get('scaled', 0)}, from FLOPs: {counts.get('flops', 0)}), total {done + rest:.4g}; "
        f"without an estimate: {counts.get(None, 0)} cells"
    )
    for note in notes:
        print(note)


def missing_cells(expected: list[str], have: set[str], logs: str | None) -> pl.DataFrame:
    """The grid's cells without a result, each with the last line of its training log (None: no log)."""
    import polars as pl

    from ftbench.plan import grid

    rows = []
    for cell in (c for c in expected if c not in have):
        path = Path(logs, grid.job_of_cell(cell) + ".log") if logs else None
        lines = path.read_text(errors="replace").strip().splitlines() if path and path.is_file() else []
        rows.append({"cell": cell, "log": lines[-1][-300:] if lines else None})
    return pl.DataFrame(rows, schema={"cell": pl.String, "log": pl.String})


def cmd_report(args) -> None:
    import polars as pl

    from ftbench.analysis import cost, report, stats
    from ftbench.analysis.external import External

    cells = pl.read_parquet(args.cells)
    expected = Path(args.expected).read_text().split() if args.expected else []
    projection = None
    try:
        projection = cost.project(expected, cells, args.device_name) if expected else None
    except ValueError as err:  # cells from several devices: `snakemake cost` with report.cost_device
        log.warning("no projection of the missing cells' time: %s", err)
    res = report.Results(
        cells=cells,
        summary=pl.read_parquet(args.summary),
        predictions=pl.read_parquet(args.predictions),
        comparisons=stats.Comparisons.read(args.stats_dir),
        data_reports=[json.loads(Path(p).read_text()) for p in args.data_reports],
        rejects={Path(p).parent.name: pl.read_csv(p) for p in args.rejects},
        missing=missing_cells(expected, set(cells["cell"].to_list()), args.logs),
        projection=projection,
        not_possible=args.not_possible,
        external=External.read(args.external) if args.external else None,
        alpha=args.alpha,
        resamples=args.bootstrap,
        title=args.title,
    )
    figs = report.write(res, args.out, args.figures_dir)
    log.info(
        "report %s: %d figures, %d cells missing, %d failed",
        args.out,
        len(figs),
        res.missing.height,
        cells.filter(pl.col("status") != "ok").height,
    )


def cmd_reference(args) -> None:
    from ftbench.plan import reference

    if args.check:
        if stale := reference.stale():
            raise ValueError(f"stale generated files: {', '.join(map(str, stale))}; run `python -m ftbench reference`")
        return
    for path in reference.write():
        log.info("rewrote %s", path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ftbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("download", help="fetch a dataset's source into resources/ (resumable)")
    s.add_argument("--adapter", required=True, help="the dataset's adapter (which download to run)")
    s.add_argument("--source", type=_json, required=True, help="what to fetch, as JSON (adapters.download_source)")
    s.add_argument("--out", required=True)
    s.add_argument("--done", required=True, help="marker file written when complete")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("dataset", help="build a dataset's standard table and list rejected images")
    s.add_argument("--name", required=True)
    s.add_argument("--spec", type=_json, required=True, help="the dataset's config entry as JSON")
    s.add_argument("--resources", default="resources")
    s.add_argument("--table", required=True)
    s.add_argument("--rejects", required=True)
    s.set_defaults(func=cmd_dataset)

    s = sub.add_parser("store", help="preprocess a dataset's images into one memory-mappable array")
    s.add_argument("--table", required=True)
    s.add_argument("--side", type=int, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_store)

    s = sub.add_parser("task", help="filter and label a dataset for one task")
    s.add_argument("--name", required=True)
    s.add_argument("--spec", type=_json, required=True)
    s.add_argument("--table", required=True)
    s.add_argument("--rejects", help="the dataset's rejects.csv, summarised in the data report")
    s.add_argument("--out", required=True)
    s.add_argument("--report", required=True)
    s.add_argument("--left-out", help="write the task's own rejects.csv: the images its image rule leaves out")
    s.set_defaults(func=cmd_task)

    s = sub.add_parser("folds", help="folds by patient (kfold, holdout, loco) with a validation part")
    s.add_argument("--task", default="")
    s.add_argument("--task-table", required=True)
    s.add_argument("--validation", type=_json, required=True, help="the task's validation settings as JSON")
    s.add_argument("--out", required=True)
    s.add_argument("--summary", required=True, help="JSON: what each fold tests and its patients per part and class")
    s.set_defaults(func=cmd_folds)

    s = sub.add_parser("fewshot", help="K training patients per class for each fold and repetition")
    s.add_argument("--task", default="")
    s.add_argument("--task-table", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--k", type=int, required=True)
    s.add_argument("--repetitions", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_fewshot)

    s = sub.add_parser("weights", help="download a model's pretrained weights, check them, write their manifest")
    s.add_argument("--model", required=True, help="the model's name in the config (named in every message)")
    s.add_argument("--arch", required=True, help="zoo key or timm name whose weight source to fetch")
    s.add_argument("--out", required=True, help="manifest to write (weights.json); the weights go into its folder")
    s.set_defaults(func=cmd_weights)

    s = sub.add_parser("train", help="train and evaluate the cells of one job")
    s.add_argument("--job", type=_json, required=True, help="the job's resolved settings and cells as JSON")
    s.add_argument("--task-table", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--fewshot")
    s.add_argument("--store", help="image store (not needed with --embeddings)")
    s.add_argument("--weights", help="pretrained weights: a manifest of the weights stage, a file or a folder")
    s.add_argument("--out-dir", required=True)
    s.add_argument(
        "--checkpoints", required=True, help="folder for finished cells and training state until the job ends"
    )
    s.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of the job: each of the cells it trains at a time gets threads / that number",
    )
    s.add_argument(
        "--concurrent-cells",
        type=int,
        default=1,
        help="train up to this many cells at the same time, in worker processes on the job's one device "
        "(the results are those of training them one by one)",
    )
    s.add_argument("--embeddings", help="embedding cache to train a frozen-backbone strategy from")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "transfer",
        help="external validation: score a source task's kept full-data models of one model on a target task",
    )
    s.add_argument(
        "--job", type=_json, required=True, help="the transfer job's settings as JSON (source, target, strategies)"
    )
    s.add_argument(
        "--cells",
        nargs="+",
        required=True,
        help="the source's full-data job folders of one model (results/cells/<job>)",
    )
    s.add_argument("--task-table", required=True, help="the target task's table")
    s.add_argument("--store", help="the target's image store at the model's size (not needed with --embeddings)")
    s.add_argument("--embeddings", help="the target's embedding cache, for a head trained on cached features")
    s.add_argument("--weights", help="pretrained weights: a manifest of the weights stage, a file or a folder")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_transfer)

    s = sub.add_parser("embed", help="cache a frozen backbone's features of every image of a store")
    s.add_argument("--model", type=_json, required=True, help="the model's settings as JSON")
    s.add_argument("--store", required=True)
    s.add_argument("--weights", help="pretrained weights: a manifest of the weights stage, a file or a folder")
    s.add_argument("--out", required=True)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("aggregate", help="collect cells into tables and summarise them over folds")
    s.add_argument(
        "--cells-root",
        nargs="+",
        required=True,
        help="folders of cells (results/cells, and results/checkpoints for a partial report)",
    )
    s.add_argument("--grid", help="file listing the grid's cells (results/grid.txt): read only those")
    s.add_argument("--cells-out", required=True)
    s.add_argument("--predictions-out", required=True)
    s.add_argument("--summary", required=True, help="summary .parquet (a .csv is written beside it)")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the CIs (0: none)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser(
        "stats",
        help="compare strategies across tasks (Friedman + Nemenyi, Wilcoxon + Holm) and "
        "within each task (corrected and Bayesian correlated t over folds)",
    )
    s.add_argument("--cells", required=True)
    s.add_argument("--alpha", type=float, default=0.05)
    s.add_argument(
        "--rope",
        type=float,
        default=0.01,
        help="region of practical equivalence of the Bayesian test, in metric units (ours: 0.01)",
    )
    s.add_argument("--cohorts", help="JSON {task: cohort}: tasks sharing patients, one block across tasks")
    s.add_argument("--control", help="compare every strategy with this one across tasks (k - 1 comparisons)")
    s.add_argument(
        "--within-task",
        choices=("folds", "none"),
        default="folds",
        help="none: no tests within a task (external validation: every fold's model scores the same patients)",
    )
    s.add_argument(
        "--hierarchical",
        choices=("true", "false"),
        default="true",
        help="false: list the hierarchical comparisons without running the model (report.hierarchical)",
    )
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("cost", help="project the device-hours of every cell of the grid from the cells that ran")
    s.add_argument("--cells", required=True, help="the cells table of `aggregate` (results/partial/cells.parquet)")
    s.add_argument("--grid", required=True, help="file listing every cell of the grid (results/grid.txt)")
    s.add_argument(
        "--device-name",
        help="use only cells that ran on this device (a part of its name; default: "
        "cost.device's GPU when the config names one)",
    )
    s.add_argument(
        "--config",
        type=_json,
        help="the resolved config as JSON: with cost.device, cells nothing measured "
        "are projected from FLOPs (ftbench.plan.flop_cost)",
    )
    s.add_argument("--results", default="results", help="the results folder, whose data stage gives the sizes")
    s.add_argument("--out", required=True, help="summary .csv; the per-cell projection goes beside it (*_cells.csv)")
    s.set_defaults(func=cmd_cost)

    s = sub.add_parser("report", help="write the self-contained HTML report (and its figures as SVG files)")
    s.add_argument("--cells", required=True)
    s.add_argument("--summary", required=True)
    s.add_argument("--predictions", required=True)
    s.add_argument("--stats-dir", required=True)
    s.add_argument("--data-reports", nargs="*", default=[])
    s.add_argument("--rejects", nargs="*", default=[])
    s.add_argument("--expected", help="file listing every cell of the grid, to name the missing ones")
    s.add_argument("--logs", help="folder of the training logs (results/logs/train), to say why a cell is missing")
    s.add_argument("--alpha", type=float, default=0.05)
    s.add_argument("--bootstrap", type=int, default=1000, help="resamples behind the CIs (for the methods text)")
    s.add_argument("--title", default="ftbench report")
    s.add_argument("--out", required=True)
    s.add_argument("--figures-dir", help="also write each figure as <dir>/<kind>/<name>.svg")
    s.add_argument("--device-name", help="project the missing cells' time from the cells of this device only")
    s.add_argument("--not-possible", nargs="*", default=[], help="few-shot groups planning left out, with the reason")
    s.add_argument("--external", help="external validation's folder (results/external): its tables and statistics")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("reference", help="rewrite the files generated from the strategy table and the config schema")
    s.add_argument("--check", action="store_true", help="only check that they are up to date (exit 1 if not)")
    s.set_defaults(func=cmd_reference)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except Preempted as err:
        log.warning("%s: run the job again to resume", err)
        return EXIT_PREEMPTED
    except (ValueError, OSError, KeyError) as err:  # bad input, missing files, a full disk: one line, no traceback
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
