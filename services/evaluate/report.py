"""``DIR/report.md`` and its plots (ROC, PR, lead time, calibration, alerts per day) as PNGs
beside it.

matplotlib runs with the Agg backend: no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.evaluate import metrics
from services.evaluate.run import Evaluation

PLOTS = ("roc.png", "pr.png", "lead_time.png", "calibration.png", "alerts_per_day.png")


def write_report(run: Path, ev: Evaluation, *, labels: Path) -> Path:
    """Write the plots and ``report.md`` into ``run``; return the report's path."""
    _plot(run, ev)
    path = run / "report.md"
    path.write_text(render_markdown(ev, labels=labels), encoding="utf-8")
    return path


def render_markdown(ev: Evaluation, *, labels: Path) -> str:
    f = ev.figures
    lines = [
        "# churnwatch evaluation",
        "",
        f"Scores {'as of ' + f['as_of'] if f['as_of'] else 'at the end of the replay'}, "
        f"labels from `{labels}`. {f['users']} scored users ({f['unscored']} labelled users "
        f"had no score), {f['churned']} churned.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_show(v)} |" for k, v in f.items() if k != "as_of"]
    lines += [
        "",
        "Alerts: a user counts as alerted if any alert names them; precision and recall are",
        "over users. Lead time: days from a churner's first alert to `churned_at`; churners",
        "first alerted after it are counted in `alerted_after_churn`.",
        "",
        "## ROC",
        "![ROC](roc.png)",
        "",
        "## Precision-recall",
        "![PR](pr.png)",
        "",
        "## Lead time",
        "![lead time](lead_time.png)",
        "",
        *_alert_mix(ev),
        "## Calibration",
        "![calibration](calibration.png)",
        "",
        "| risk bin | users | mean predicted | observed churn |",
        "|---|---|---|---|",
    ]
    for b in ev.calibration:
        lines.append(
            f"| {b.low:.1f}-{b.high:.1f} | {b.count} | {_show(b.mean_predicted)} "
            f"| {_show(b.observed)} |"
        )
    return "\n".join(lines) + "\n"


def _alert_mix(ev: Evaluation) -> list[str]:
    lines = [
        "## Alerts by trigger and stage",
        "![alerts per day](alerts_per_day.png)",
        "",
        "Which alerts carry the precision: per trigger and the user's lifecycle stage when",
        "alerted, the users alerted, the share of them who churned, and the churners whose",
        "first alert was of this kind and came before they churned (a warning, not a late",
        "notice). Per-stage thresholds and the sharp rise are the policy's settings",
        "(`CHURNWATCH_SCORER_BANDS_BY_STAGE`, `_SHARP_RISE_POINTS`; README: configuration).",
        "",
        "| trigger | stage | alerts | users | churned | precision | churners first warned |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in ev.groups:
        lines.append(
            f"| {g.trigger} | {g.stage} | {g.alerts} | {g.users} | {g.churned_users} "
            f"| {_show(g.precision)} | {g.first_catches} |"
        )
    return [*lines, ""]


def _show(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plot(run: Path, ev: Evaluation) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = ev.figures
    fig, ax = plt.subplots(figsize=(5, 5))
    xs, ys = zip(*metrics.roc_curve(ev.y, ev.risk), strict=True) if ev.y else ((0,), (0,))
    ax.plot(xs, ys, label=f"churnwatch (AUC {_show(f['roc_auc'])})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    _save(fig, ax, run / "roc.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    pts = metrics.pr_curve(ev.y, ev.risk)
    if pts:
        ax.step(*zip(*pts, strict=True), where="post", label=f"AP {_show(f['pr_auc'])}")
    if f["churn_rate"] is not None:
        ax.axhline(f["churn_rate"], ls="--", color="grey", label="churn rate")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    _save(fig, ax, run / "pr.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(ev.leads, bins=min(30, max(1, len(ev.leads))), color="tab:orange")
    ax.set(xlabel="days from first alert to churn", ylabel="churners",
           title=f"Lead time (median {_show(f['lead_time_days_median'])} days)")  # fmt: skip
    _save(fig, ax, run / "lead_time.png", legend=False)

    fig, ax = plt.subplots(figsize=(5, 5))
    cal = [(b.mean_predicted, b.observed) for b in ev.calibration if b.count]
    if cal:
        ax.plot(*zip(*cal, strict=True), "o-", label=f"ECE {_show(f['ece'])}")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.set(xlabel="mean predicted risk", ylabel="observed churn rate", title="Calibration")
    _save(fig, ax, run / "calibration.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    days = [d for d, _, _ in ev.per_day]
    hits = [h for _, h, _ in ev.per_day]
    ax.bar(days, hits, width=1.0, color="tab:red", label="users who churned")
    ax.bar(days, [m for _, _, m in ev.per_day], width=1.0, bottom=hits, color="tab:grey",
           label="users who did not")  # fmt: skip
    ax.set(xlabel="days since the first alert", ylabel="alerts", title="Alerts per day")
    _save(fig, ax, run / "alerts_per_day.png", legend=bool(days))


def _save(fig: Any, ax: Any, path: Path, *, legend: bool = True) -> None:
    import matplotlib.pyplot as plt

    if legend:
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
