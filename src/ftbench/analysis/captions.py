"""What each figure of the report shows and how to read it.

Light on purpose (no plotting imports): the report rule passes these to ``snakemake --report`` as params,
and the HTML report prints the same text under each figure.
"""

CAPTIONS = {
    "heatmap_mcc": "MCC of every model (rows) and strategy (columns) on the test parts, at the decision threshold "
    "chosen on validation: mean over folds (and few-shot repetitions), with its 95% bootstrap CI "
    "(patients resampled) below. Blue is better, white is chance (0), red is worse than chance; "
    "'–' marks a combination not in the results, 'failed' one whose cells all failed.",
    "heatmap_pr_auc": "PR-AUC (average precision) of every model and strategy: mean over folds (and repetitions) "
    "with its 95% bootstrap CI. Darker is better. Chance level is the task's positive rate, "
    "not 0.5: compare with the class-imbalance view.",
    "roc_pr": "ROC (left) and precision-recall (right) curves of the three best model and strategy pairs by mean "
    "MCC on full data, pooling the test predictions of all folds, one per patient (the mean of its images' "
    "probabilities, as the metrics score it). The legend gives "
    "the pooled AUC / average precision, which can differ slightly from the mean over folds. Up and to "
    "the left (ROC) and up and to the right (PR) is better; dotted lines are chance.",
    "calibration": "Calibration (reliability diagram) of the same three pairs: the observed rate of the positive "
    "class against the mean predicted probability, in ten equal-width bins of the pooled test "
    "predictions, one per patient (empty bins left out; the same bins as the cells' ECE), and below, how "
    "many patients fall in each bin. On the dotted diagonal a predicted risk is the observed one; "
    "above it the model under-estimates risk, below it over-estimates. The legend gives the pooled "
    "ECE and Brier score. Class-weighted training pulls probabilities towards balance on purpose, so "
    "read calibration beside discrimination, and recalibrate before using the probabilities as risks.",
    "fewshot": "Few-shot learning curves: MCC against K labelled training patients per class (and full data, "
    "squares, right of the dashed line), one panel per model, one colour per strategy. Points are means "
    "over folds and repetitions, bars and bands their 95% bootstrap CIs. A flat curve that reaches the "
    "full-data level early is a strategy that needs few labels.",
    "cd_mcc": "Mean ranks of the strategies by MCC over tasks, one panel per model family (its models in brackets) and "
    "regime; 1 = best, on the left. The unit is the cohort (tasks sharing patients form one block, the mean of its "
    "tasks): a strategy's MCC on a task is its mean over the "
    "family's models, folds and repetitions, on the cells every strategy of the panel has. Where the "
    "Friedman test could run (enough cohorts), this is a critical-difference diagram: a thick bar joins "
    "strategies the Nemenyi post-hoc test cannot tell apart at the report's alpha, and the CD line is the "
    "critical difference of mean ranks. With too few cohorts the panel shows the mean ranks only and says "
    "why; folds are never used as blocks.",
    "cd_pr_auc": "Mean ranks of the strategies by PR-AUC over tasks, read as those of MCC: 1 = best, on the left; bars "
    "join strategies not significantly different (Nemenyi), drawn only where the Friedman test could "
    "run; one panel per model family (its models in brackets) and regime.",
    "efficiency": "Cost against MCC on full data: trainable parameters, compute time summed over the folds, and "
    "peak memory, one point per model (shape) and strategy (colour), bars are 95% CIs. The dashed "
    "step line is the Pareto front: points with a black edge are not beaten by any cheaper point. Up "
    "and to the left is better.",
    "imbalance": "Class imbalance: mean MCC (left) and PR-AUC (right) on full data of every model and strategy, "
    "placed at the positive rate of the task (task names above the plot). PR-AUC's chance level rises "
    "with the positive rate (dotted diagonal); MCC's stays at 0. A strategy whose points fall as "
    "the positive rate falls is sensitive to imbalance; this needs several tasks to read.",
    "external": "External validation of one (source, target) pair: each model and strategy's MCC on the target cohort "
    "(y; mean over the source's fold models, each scored on every target patient, bar: 95% bootstrap CI over target "
    "patients) against its MCC on the source's own test folds (x). Points on the dotted diagonal keep their internal "
    "level on patients of another hospital; below it they lose. Nothing of the target chose the model, its epoch or "
    "its threshold.",
}
