"""The robustness map and the ceiling, small: every cell reports each variant against survey_only
with an interval; the heat map is drawn; bench quality picks the ceiling of its own split up."""

import json

import numpy as np
import pytest

from lantern.dataset.io import save_dataset
from lantern.dataset.oracle import Truth, simulate_truth
from lantern.dataset.posterior import Chains
from lantern.dataset.simulate import SimConfig, simulate
from lantern.settings.model import TrainConfig

pytestmark = pytest.mark.slow
VARIANTS = ("survey_only", "early_fusion", "lantern")


def test_a_small_map_has_every_cell_and_variant_against_the_survey(tmp_path):
    from app.robustness_plot import robustness_heatmap
    from model.robustness import CELLS, robustness

    cells = [c for c in CELLS if c.name in ("noise x4", "placebo")]
    result = robustness(TrainConfig(epochs=1), users=300, big_users=300, cells=cells, variants=VARIANTS,
                        log=lambda m: None, workers=1)
    assert [r["cell"] for r in result["cells"]] == ["noise x4", "placebo"]
    for row in result["cells"]:
        assert set(row["versus_survey"]) == {"answer_rates", "early_fusion", "lantern"}
        d = row["versus_survey"]["lantern"]["log_loss"]
        assert d["lo"] <= d["diff"] <= d["hi"]
        assert d["diff"] == pytest.approx(row["log_loss"]["lantern"] - row["log_loss"]["survey_only"], abs=1e-9)
    survey = {row["log_loss"]["survey_only"] for row in result["cells"]}
    assert len(survey) == 1  # one survey_only fit, scored on the same hidden answers of every cell
    plot = robustness_heatmap(result, tmp_path / "map.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(result, default=float)


def test_bench_quality_reports_the_share_of_the_ceiling_for_its_own_split(tmp_path):
    from model.ablation import run_ablation
    from model.ceiling import POSTERIOR_FULL, POSTERIOR_SURVEY, compute_ceiling

    cfg = SimConfig(users=400, seed=4)
    ds = simulate(cfg)
    save_dataset(ds, tmp_path)
    simulate_truth(cfg).save(tmp_path)
    tc = TrainConfig(epochs=1)
    ceiling = compute_ceiling(tmp_path, ds, Truth.load(tmp_path), tc, Chains(chains=2, burn=30, samples=30),
                              log=lambda m: None)
    models = ceiling["models"]
    assert models["oracle"]["log_loss"] < models[POSTERIOR_FULL]["log_loss"]
    result = run_ablation(ds, tc, ("survey_only", "lantern"), progress=False, log=lambda m: None,
                          truth=Truth.load(tmp_path), workers=1, root=tmp_path)
    rows = result["variants"]
    assert rows[POSTERIOR_FULL]["log_loss"] == pytest.approx(models[POSTERIOR_FULL]["log_loss"], rel=1e-6)
    share = result["achievable_share"]["lantern"]["log_loss"]
    gain = rows["survey_only"]["log_loss"] - rows["lantern"]["log_loss"]
    room = rows[POSTERIOR_SURVEY]["log_loss"] - rows[POSTERIOR_FULL]["log_loss"]
    assert np.isclose(share, gain / room)
    other_split = run_ablation(ds, TrainConfig(epochs=1, seed=1), ("survey_only",), progress=False,
                               log=lambda m: None, truth=Truth.load(tmp_path), workers=1, root=tmp_path)
    assert POSTERIOR_FULL not in other_split["variants"]  # computed for another split: not used
