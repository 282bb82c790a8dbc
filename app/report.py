"""The demo's report: the figures printed to the terminal and written to ``reports/demo/``
(summary.md, demo.json and four plots), all formatted from one summary, so they cannot disagree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.cli_common import out
from model.ablation import PAPER_F1, print_table

PLOTS = {
    "threshold_curve.png": "F1 against the decision threshold, every variant",
    "rare_vs_frequent.png": "F1 on rare (conditional) vs frequent response keys, every variant",
    "gate_distribution.png": "LANTERN's mean gate per streamed session (0 = survey only)",
    "stream_timeline.png": "Sessions scored per second and completion→score latency over the run",
    "replicas_and_lag.png": "LanternScorer replicas and the scorer group's lag over the run",
}


def headline(summary: dict) -> list[tuple[str, str]]:
    """The figures `lantern demo` prints, in order, as (label, value)."""
    st = summary["stream"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(st["dlq_reasons"].items())) or "none"
    feast = st["feast"]
    return [
        ("sessions replayed", f"{st['sessions_replayed']:,} ({st['bad_events_sent']} of them broken on purpose)"),
        ("sessions scored", f"{st['sessions_scored']:,}"),
        ("with external context", f"{st['with_external_context']:,} "
                                  f"({st['with_external_context'] / max(st['sessions_scored'], 1):.1%}; the rest survey-only)"),
        ("throughput", f"{st['throughput_per_s']:,.0f} sessions/s (offered {summary['replay_rate_per_s']:,.0f}/s)"),
        ("completion→score latency", f"p50 {st['latency_p50_ms']:,.0f} ms, p99 {st['latency_p99_ms']:,.0f} ms"),
        ("dead-lettered", f"{st['dead_lettered']} ({reasons})"),
        ("degraded (survey-only) scores", f"{st['degraded_scores']}"),
        ("scorer replicas, group lag", f"max {st['replicas_max']} replicas, max lag {st['lag_max']:,} events"
                                       if st.get("lag_max") is not None else "not sampled"),
        ("scores in Feast", f"{feast.get('users_with_scores', 0):,} users; read back {feast.get('sample_matches', 0)}"
                            f"/{feast.get('sampled', 0)} sampled users' latest score"),
        ("LANTERN (Ray Train)", f"{summary['training']['epochs']} epochs, best val log loss "
                                f"{summary['training']['best_val_loss']:.4f} (val F1 {summary['training']['best_val_f1']:.4f}), "
                                f"{summary['training']['seconds']:.0f} s"),
        ("total", f"{summary['total_s']:.0f} s"),
    ]


def print_summary(summary: dict, ablation: dict) -> None:
    print_table(ablation, out)
    for label, value in headline(summary):
        out.print(f"{label:>30}: {value}")


def ablation_markdown(ablation: dict) -> str:
    rows = ["| variant | log loss | F1 | precision | recall | rare F1 | frequent F1 | AUC (macro) | trained by | "
            "epochs | paper F1 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in ablation["variants"].items():
        training = r.get("training", {"history": []})
        trainer = training.get("trainer", "single process") if "training" in r else "no training"
        rows.append(f"| {name} | {r['log_loss']:.4f} | {r['micro']['f1']:.4f} | {r['micro']['precision']:.4f} | "
                    f"{r['micro']['recall']:.4f} | {r['rare']['f1']:.4f} | {r['frequent']['f1']:.4f} | "
                    f"{r['auc_macro']:.4f} | {trainer} | {len(training['history'])} | {PAPER_F1.get(name, '')} |")
    return "\n".join(rows)


def summary_markdown(summary: dict, ablation: dict) -> str:
    steps = "\n".join(f"| {name} | {s:.0f} |" for name, s in summary["steps_s"].items())
    figures = "\n".join(f"| {label} | {value} |" for label, value in headline(summary))
    plots = "\n\n".join(f"![{text}]({name})\n\n*{text}.*" for name, text in PLOTS.items())
    return f"""# lantern demo — {summary['date']}

`make demo` on {summary['machine']}: {summary['users']:,} simulated users ({summary['sessions']:,} sessions,
{summary['response_keys']} response keys), {summary['broker']} Kafka broker, Feast on SQLite, LANTERN trained
with {summary['training']['trainer']}, served by Ray Serve, the latest {summary['stream']['sessions_replayed'] -
summary['stream']['bad_events_sent']:,} completions replayed through Kafka.

## Stream

| figure | value |
|---|---|
{figures}

## Quality ablation

Held-out users' hidden questions ({ablation['dataset']['test_sessions']:,} sessions), every variant
{summary['ablation_epochs']} epochs at most on the same split, beside the answer-rate reference and the
simulator's Bayes oracle. F1: the most likely option of each single-select question, each multi-select option
at the threshold tuned on validation data. The paper's figures are on its own data.

{ablation_markdown(ablation)}

## Steps

| step | seconds |
|---|---|
{steps}

## Plots

{plots}
"""


def write_plots(root: Path, ablation: dict, streamed, offered_rate: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = ablation["variants"]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in variants.items():
        ax.plot([t["threshold"] for t in r["thresholds"]], [t["f1"] for t in r["thresholds"]], marker="o", label=name)
    ax.set(xlabel="threshold", ylabel="micro F1 (hidden questions)", title="F1 vs threshold")
    ax.legend()
    paths.append(_save(fig, root / "threshold_curve.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(variants))
    ax.bar(x - 0.2, [r["rare"]["f1"] for r in variants.values()], 0.4, label="rare keys")
    ax.bar(x + 0.2, [r["frequent"]["f1"] for r in variants.values()], 0.4, label="frequent keys")
    ax.set_xticks(x, list(variants), rotation=15)
    ax.set(ylabel="F1", title="Rare vs frequent response keys")
    ax.legend()
    paths.append(_save(fig, root / "rare_vs_frequent.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    gates = streamed.scored["gate_mean"].dropna().to_numpy(float)
    ax.hist(gates, bins=40, range=(0, 1))
    ax.set(xlabel="mean gate g (h = h_s + g ⊙ (h_t − h_s))", ylabel="sessions",
           title=f"Gate per streamed session (n={len(gates):,}, median {np.median(gates) if len(gates) else 0:.2f})")
    paths.append(_save(fig, root / "gate_distribution.png"))

    timeline = streamed.timeline()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.plot(timeline["t_s"], timeline["scored_per_s"], label="scored")
    top.axhline(offered_rate, linestyle="--", color="grey", label="offered")
    top.set(ylabel="sessions / s", title="Stream over time")
    top.legend()
    bottom.plot(timeline["t_s"], timeline["latency_p50_ms"], label="p50")
    bottom.plot(timeline["t_s"], timeline["latency_p99_ms"], label="p99")
    bottom.set(xlabel="seconds since the first completion", ylabel="completion→score ms")
    bottom.legend()
    paths.append(_save(fig, root / "stream_timeline.png"))

    samples = streamed.samples  # sampled every 0.5 s while the replay ran (app/demo_stream.py)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.step(samples["t_s"], samples["replicas"], where="post")
    top.set(ylabel="LanternScorer replicas", title="Replicas and consumer lag over time")
    top.set_ylim(0, (int(samples["replicas"].max()) if len(samples) else 1) + 1)
    bottom.plot(samples["t_s"], samples["lag"])
    bottom.set(xlabel="seconds since the replay started", ylabel="scorer group lag (events)")
    paths.append(_save(fig, root / "replicas_and_lag.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(root: Path, summary: dict, ablation: dict, streamed) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = write_plots(root, ablation, streamed, summary["replay_rate_per_s"])
    (root / "demo.json").write_text(json.dumps({"summary": summary, "ablation": ablation}, indent=1, default=float))
    (root / "summary.md").write_text(summary_markdown(summary, ablation))
    streamed.timeline().to_csv(root / "stream_timeline.csv", index=False)
    return [root / "summary.md", root / "demo.json", *paths]
