"""The robustness map as a heat map: one row per cell of `lantern bench robustness`, one column per
variant; colour and number: log loss − survey_only's (blue below the survey, red above); ``~``
where the paired-bootstrap interval holds 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def robustness_heatmap(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["cells"]
    names = [v for v in result["variants"] if v != "survey_only"]
    grid = np.array([[row["versus_survey"][v]["log_loss"]["diff"] for v in names] for row in rows])
    bound = max(float(np.abs(grid).max()), 1e-4)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 0.5 * len(rows) + 1.6))
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    for i, row in enumerate(rows):
        for j, v in enumerate(names):
            d = row["versus_survey"][v]["log_loss"]
            ax.text(j, i, f"{d['diff']:+.4f}{'' if d['excludes_0'] else ' ~'}", ha="center", va="center", fontsize=8,
                    color="white" if abs(d["diff"]) > 0.6 * bound else "black")
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_yticks(range(len(rows)), [f"{r['cell']} ({r['users']:,} users)" for r in rows])
    ax.set_title("log loss − survey_only (hidden questions); ~ = interval holds 0")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
