"""From a dataset table to one task: filter rows, binarise the label, pick images per patient (by default
each patient's admission image, the first by the dataset's time: :mod:`ftbench.data.selection`).

The task table keeps ``row`` (the image's row in the dataset's store) and a 0/1 ``label``. What the
filter and the label leave out is counted in the data report, never dropped without a trace: empty labels,
and values the task declares ``unknown`` (free text such as "?"), drop out and are counted; any other value
outside the declared classes is an error. The report also states the task's choices (label, classes,
images per patient, unit of splitting), the counts per class, centre, view and patient, how the times were
read and where they came from, and what the dataset rejected before the task saw it (duplicates, missing
patient ids, ...). Patients the image rule leaves out are listed under ``left_out`` (the task's rejects.csv).
"""

from __future__ import annotations

import polars as pl

from ftbench.data import selection


def _as_text(values: list) -> list[str]:
    return [str(v) for v in values]


def build(table: pl.DataFrame, task: dict, name: str, rejects: pl.DataFrame | None = None) -> tuple[pl.DataFrame, dict]:
    """The task's image table and its data report (``rejects``: the dataset's rejected images)."""
    label = task["label"]
    if label not in table.columns:
        raise ValueError(
            f"task '{name}': label column '{label}' is not in dataset '{task['dataset']}' "
            f"(columns: {', '.join(table.columns)})"
        )
    steps, filtered_out = {"images": table.height}, {}
    rows = table.with_row_index("row")
    for column, values in task.get("filter", {}).items():
        if column not in rows.columns:
            raise ValueError(f"task '{name}': filter column '{column}' is not in dataset '{task['dataset']}'")
        keep = pl.col(column).is_in(_as_text(values)).fill_null(False)
        for value, count in rows.filter(~keep).group_by(column).len().sort(column, nulls_last=True).iter_rows():
            filtered_out[f"{column}: {'(empty)' if value is None else value}"] = count
        rows = rows.filter(keep)
        steps[f"after filter {column}"] = rows.height
    positive, unknown_values = _as_text(task["positive"]), _as_text(task.get("unknown", []))
    lab = pl.col(label)
    present = lab.is_not_null() & (lab.str.strip_chars() != "") & ~lab.is_in(unknown_values)
    declared_unknown = _counts(rows.filter(lab.is_in(unknown_values)), label)
    if task.get("negative"):
        negative = lab.is_in(_as_text(task["negative"]))
        stray = rows.filter(present & ~lab.is_in(positive) & ~negative)
        if stray.height:
            values = sorted(stray[label].unique().to_list())
            raise ValueError(
                f"task '{name}': column '{label}' has value(s) {values} outside the declared positive "
                f"{positive} and negative {_as_text(task['negative'])} (config key 'tasks.{name}'), e.g. "
                f"image {stray['image_id'][0]} ({stray['file'][0]}); declare them (positive, negative, or "
                "unknown: rows left out and counted) or filter the rows"
            )
    else:
        negative = present & ~lab.is_in(positive)
    known = (present & (lab.is_in(positive) | negative)).fill_null(False)  # empty or declared unknown: counted
    unlabelled = rows.filter(~known)
    rows = rows.filter(known).with_columns(lab.is_in(positive).cast(pl.Int8).alias("label"))
    steps["with a known label"] = rows.height
    kind = (
        pl.col("time_kind")
        if "time_kind" in rows.columns  # how the dataset read each time
        else pl.when(pl.col("time").is_not_null()).then(pl.lit("number"))
    )
    times = _counts(rows.select(kind.fill_null("missing").alias("time")), "time")
    source = (
        pl.col("time_source")
        if "time_source" in rows.columns
        else pl.when(pl.col("time").is_not_null()).then(pl.lit("the table's time column"))
    )
    sources = _counts(rows.select(source.fill_null("missing").alias("source")), "source")
    conflicts = rows.group_by("patient_id").agg(pl.col("label").n_unique().alias("n")).filter(pl.col("n") > 1)
    if conflicts.height:
        ids = sorted(conflicts["patient_id"].to_list())
        raise ValueError(
            f"task '{name}': patient(s) {ids[:10]} have images with both labels in column '{label}'; "
            "a prognostic label must be one per patient (fix the source or filter the rows)"
        )
    policy = task.get("images", "first")  # the admission image (selection.py states the rules)
    available = _counts(rows.group_by("patient_id").agg(pl.len().alias("images")), "images")
    rows, left_out, chosen = selection.select(rows, policy, name)
    if policy != "all":
        steps[f"{policy} image per patient"] = rows.height
    rows = rows.select("row", "image_id", "patient_id", "label", "centre", "view", "time").sort("row")
    for cls in (0, 1):
        if rows.filter(pl.col("label") == cls).height == 0:
            raise ValueError(
                f"task '{name}': class {cls} ({'positive' if cls else 'negative'}) is empty after filtering"
            )
    report = {
        "task": name,
        "dataset": task["dataset"],
        "description": task.get("description", ""),
        "label": label,
        "positive": positive,
        "negative": _as_text(task["negative"]) if task.get("negative") else "every other non-empty value",
        "unknown": unknown_values,
        "images_policy": policy,
        "images_chosen_without_a_time": rows.filter(pl.col("time").is_null()).height if policy != "all" else 0,
        "split_by": task.get("split_by", "patient"),
        "steps": steps,
        "images_filtered_out": filtered_out,
        "unlabelled_images": unlabelled.height,
        "images_with_a_declared_unknown_label": declared_unknown,
        "times_read_as": times,
        "time_source": sources,
        **chosen,
        "images_per_class": _counts(rows, "label"),
        "patients_per_class": _counts(rows.unique("patient_id"), "label"),
        "images_per_centre": _counts(rows, "centre"),
        "images_per_view": _counts(rows, "view"),
        "images_per_patient_before_selection": available,
        "images_per_patient": _counts(rows.group_by("patient_id").agg(pl.len().alias("images")), "images"),
        "patients_per_centre_and_class": _per_class(rows.unique("patient_id"), "centre"),
        "images_per_view_and_class": _per_class(rows, "view"),
        "rejects": _rejects(rejects),
        "left_out": left_out,  # the task's own rejects (rows of rejects.csv), written beside the report
    }
    return rows, report


def _per_class(frame: pl.DataFrame, column: str) -> dict[str, dict[str, int]]:
    """{value of column: {"0": negatives, "1": positives}}: where the classes are (LOCO needs both per centre)."""
    return {
        key: {"0": 0, "1": 0, **_counts(group, "label")}
        for key, group in sorted(((str(k[0]), g) for k, g in frame.group_by(column)), key=lambda kv: kv[0])
    }


def _rejects(rejects: pl.DataFrame | None) -> dict:
    """How many of the dataset's images were rejected before any task, by kind (details in rejects.csv)."""
    if rejects is None:
        return {"images": 0, "by_kind": {}}
    return {"images": rejects.height, "by_kind": _counts(rejects, "kind")}


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    counts = frame.group_by(column).agg(pl.len().alias("_n")).sort(column, nulls_last=True)
    return {str(k): int(v) for k, v in counts.iter_rows()}
