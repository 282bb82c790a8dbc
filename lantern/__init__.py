"""lantern: streaming scoring for survey-fusion user-behaviour models (README.md).

One process-wide guard lives here, in the package every other one imports first. Importing Feast
(0.67, ``feast/metrics.py``) sets ``PROMETHEUS_MULTIPROC_DIR`` to a temp dir of its own, which
switches ``prometheus_client`` — for the whole process, and for every child that inherits the
variable — to file-backed metric values keyed by metric name: two registries in one process then
add up each other's counts (two scorers' metrics, the test suite's), and children write into a
directory their parent deletes. lantern's metrics are in-process (streaming/metrics.py), so the
value class is fixed here, before Feast can be imported, and a directory Feast made for an
ancestor process is not inherited. A directory the operator set on purpose is kept.
"""

import os

_inherited = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if os.path.basename(_inherited.rstrip("/")).startswith("feast_metrics_"):
    for _name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):
        os.environ.pop(_name, None)

import prometheus_client.values  # noqa: E402,F401 - the value class is chosen at this import
