"""Screenshots of what a user sees in the MLflow UI for a run, taken with headless Chromium: the
experiment at its plain address and at the link mmtrain prints, the latest run's "Model metrics"
tab, and the experiment's chart view. Not part of the tests (CI has no browser); the README's
claims about the UI (which view opens, the order of chart sections) come from these pictures.

    apt-get install chromium     # or any Chrome; --browser names it
    python tools/mlflow_ui_check.py --store out/dry-run/runs/mlflow.db --experiment mmtrain-clip --out /tmp/ui
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from mmtrain.training.tracking.tracker import UI_VIEW as VIEW  # the view the link mmtrain prints asks for


def pages(client: MlflowClient, experiment: str, base: str) -> dict[str, str]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        sys.exit(f"no experiment {experiment!r} in this store")
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        sys.exit(f"experiment {experiment!r} has no runs")
    root = f"{base}/#/experiments/{found.experiment_id}"
    return {
        "experiment_plain": root,
        "experiment_link": f"{root}?{VIEW}",
        "run_metrics": f"{root}/runs/{runs[0].info.run_id}/model-metrics?{VIEW}",
        "experiment_charts": f"{root}/runs?{VIEW}&compareRunsMode=CHART",
    }


def wait_until_up(url: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"mlflow ui did not answer at {url} within {seconds:.0f} s")


def screenshot(browser: str, url: str, path: Path) -> None:
    # The page's scripts run for this much virtual time before the picture: less, and a tall
    # window shows the section headers with their charts still loading.
    subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1400,3000",
            "--virtual-time-budget=150000",
            f"--screenshot={path}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="the sqlite file of the tracking store")
    parser.add_argument("--experiment", default="mmtrain-clip")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--browser", default=shutil.which("chromium") or shutil.which("google-chrome") or "chromium")
    args = parser.parse_args()

    uri, base = f"sqlite:///{args.store.resolve()}", f"http://127.0.0.1:{args.port}"
    args.out.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(args.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(base)
        for name, url in pages(MlflowClient(uri), args.experiment, base).items():
            screenshot(args.browser, url, args.out / f"{name}.png")
            print(f"{args.out / f'{name}.png'}  <- {url}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
