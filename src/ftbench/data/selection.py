"""Which image of each patient a task uses: by default the admission image, the first by the dataset's time.

A prognostic model must predict from what is known when the patient arrives: later images may show the outcome
(endotracheal tubes and central lines reveal intubation and ICU admission). The rules, stated once (ours):

- ``first`` keeps each patient's earliest image by the dataset's ``time``, ``last`` its latest, ``all`` every image;
- several images at the chosen time (a tie) are told apart by the file's name (its last path part), then the
  image id: a rule of the data, never the order of the table's rows (Cohen's same-day figure panels are named
  ``-a``, ``-b``, ... in their order);
- a patient with a single image keeps it, with or without a time: there is nothing to choose;
- a patient with several images of which any has no usable time is left out: an image without a time may be
  the admission image, so which one is first cannot be told. Each of its images is listed, with the reason.
"""

from __future__ import annotations

import polars as pl

POLICIES = {"first": False, "last": True}  # policy -> whether the chosen time is the largest
LEFT_OUT = "no usable time"  # the reject kind of a patient left out by the rule above
RULE = (
    "{policy} image per patient by the dataset's time; ties broken by file name, then image id; a patient with one "
    "image keeps it; a patient with several images, any of them without a time, is left out (listed in rejects.csv)"
)


def select(rows: pl.DataFrame, policy: str, task: str) -> tuple[pl.DataFrame, list[dict], dict]:
    """(the chosen images, the images left out as reject rows, counts for the data report) under ``policy``.

    ``rows`` needs ``patient_id``, ``image_id``, ``file`` and ``time``; ``all`` returns them unchanged.
    """
    if policy == "all":
        return rows, [], {}
    latest = POLICIES[policy]
    per_patient = rows.group_by("patient_id").agg(pl.len().alias("_n"), pl.col("time").null_count().alias("_untimed"))
    rows = rows.join(per_patient, on="patient_id", how="left")
    unusable = (pl.col("_n") > 1) & (pl.col("_untimed") > 0)
    left_out = rows.filter(unusable)
    rejects = [
        {
            "image_id": image_id,
            "file": file,
            "kind": LEFT_OUT,
            "reason": f"patient {patient}: {untimed} of its {n} images have no time, so its {policy} image cannot "
            f"be told; the patient is left out (tasks.{task}.images: {policy}; 'all' keeps every image)",
        }
        for image_id, file, patient, n, untimed in left_out.select(
            "image_id", "file", "patient_id", "_n", "_untimed"
        ).iter_rows()
    ]
    ordered = rows.filter(~unusable).sort(
        ["patient_id", "time", pl.col("file").str.extract(r"([^/\\]*)$"), "image_id"],
        descending=[False, latest, False, False],
    )
    chosen = ordered.unique("patient_id", keep="first", maintain_order=True)
    at_chosen_time = ordered.join(chosen.select("patient_id", pl.col("time").alias("_chosen")), on="patient_id").filter(
        pl.col("time") == pl.col("_chosen")
    )
    tied = at_chosen_time.group_by("patient_id").len().filter(pl.col("len") > 1).height
    counts = {
        "images_rule": RULE.format(policy=policy),
        "patients_left_out_without_a_usable_time": left_out["patient_id"].n_unique(),
        "patients_with_a_tie_at_the_chosen_time": tied,
        "images_not_chosen": ordered.height - chosen.height,
    }
    return chosen.drop("_n", "_untimed"), rejects, counts
