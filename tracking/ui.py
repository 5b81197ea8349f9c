"""Addresses of a sweep in the MLflow UI, and the saved views they open.

What MLflow 3.17's UI does with an address in a fresh browser (read in its bundled JS,
`mlflow/server/js/build`, and checked in headless Chromium by tests/tracking/test_tracking_ui.py):

- The GenAI / Model-training switch decides what an experiment opens on, not the experiment's
  `mlflow.experimentKind` tag: the UI reads `workflowType` from the URL, else the browser's local
  storage `mlflow.workflowType`, which is `genai` on a fresh profile (the "Overview - Traces 0"
  page). Every address here carries `workflowType=machine_learning`.
- Columns, sort, filter and charts of the runs page are browser state, except for a saved view:
  the experiment tag `mlflow.sharedViewState.<key>` holding `{name, createdAt, updatedAt, state}`
  (`state`: JSON of the page's search facets and UI state), opened by `?viewStateShareKey=<key>`
  (the UI's own "share view" links) when the URL has no search facet of its own.
- The compare-runs page, `#/compare-runs?runs=["<run id>",...]&experiments=["<experiment id>"]`,
  draws parallel coordinates of the first three parameters (alphabetically) that differ and of the
  first metric a run logged (`train/lr` for a trial); no URL parameter changes that. The compare
  link is therefore the runs page in chart mode (`compareRunsMode=CHART`) with a saved view holding
  one parallel-coordinates chart of the searched parameters vs the metric, over the top runs.
"""

import json
import time
from urllib.parse import urlencode

from tracking.layout import ROLE_TAG, STATUS_TAG

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
TRIALS_VIEW = "sweep-trials"
TOP_RUNS_VIEW = "sweep-top-runs"
WORKFLOW = {"workflowType": "machine_learning"}
RANK_METRIC = "best/val_abs_rel"  # logged by every trial (tracking.logger), ranked ascending
TRIAL_COLUMNS = [f"metrics.`{RANK_METRIC}`", "params.`lora.strategy`", "params.`lora.rank`",
                 "params.`lora.trainable_params`", "params.`optim.lr`", f"tags.`{STATUS_TAG}`"]


def save_view(client, experiment_id: str, key: str, name: str, state: dict) -> None:
    """Store a saved view of the runs page as the experiment tag the UI reads."""
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, json.dumps(envelope))


def save_trials_view(client, experiment_id: str) -> None:
    """The sweep's trial runs, best first, with their metric, LoRA settings and status as columns."""
    save_view(client, experiment_id, TRIALS_VIEW, "sweep trials", {
        "searchFilter": f"tags.`{ROLE_TAG}` = 'trial'", "orderByKey": f"metrics.`{RANK_METRIC}`",
        "orderByAsc": True, "selectedColumns": TRIAL_COLUMNS})


def save_top_runs_view(client, experiment_id: str, run_ids: list[str], params: list[str], metric: str) -> None:
    """The runs `run_ids` with one parallel-coordinates chart: `params` vs `metric`."""
    section = "sweep-top-runs-section"
    chart = {"uuid": "sweep-top-runs-parallel", "type": "PARALLEL", "runsCountToCompare": len(run_ids),
             "metricSectionId": section, "deleted": False, "isGenerated": False,
             "selectedParams": params, "selectedMetrics": [metric], "showAllRuns": False}
    save_view(client, experiment_id, TOP_RUNS_VIEW, f"top {len(run_ids)} runs", {
        "searchFilter": "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")",
        "orderByKey": f"metrics.`{RANK_METRIC}`", "orderByAsc": True, "selectedColumns": TRIAL_COLUMNS,
        "compareRunCharts": [chart], "isAccordionReordered": True,  # this section first
        "compareRunSections": [{"uuid": section, "name": f"Top runs: parameters vs {metric}", "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": False,
                                "columns": 1, "cardHeight": 520}]})


def runs_url(tracking_uri: str, experiment_id: str, view: str = TRIALS_VIEW, charts: bool = False) -> str:
    """The experiment's runs page opened on a saved view (in chart mode if `charts`)."""
    query = {**WORKFLOW, "viewStateShareKey": view, **({"compareRunsMode": "CHART"} if charts else {})}
    return f"{tracking_uri}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}?{urlencode(WORKFLOW)}"


def artifact_url(tracking_uri: str, experiment_id: str, run_id: str, path: str) -> str:
    """A run's artifact, shown by the UI's artifact viewer (HTML rendered inline)."""
    return f"{tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}?{urlencode(WORKFLOW)}"
