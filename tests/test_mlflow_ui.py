"""End to end: a study ingested into MLflow shows every run, by name and with its metrics, in the MLflow UI.

Builds a tiny study without training (fake run folders, ingested by `python -m pipeline.ingest` into SQLite), starts
`mlflow server` on a free localhost port, and drives Debian's headless Chromium with Playwright (executable_path; never
`playwright install`). The link ingest prints lands on the runs table, whose Duration is the jobs' own (> 1 s); the
comparison view shows accuracy and remaining % per pruner. Saves screenshots to the test's tmp folder and, when
RELIEF_SCREENSHOT_DIR is set, there too. Needs Debian's `chromium` (scripts/install-browser.sh installs it); skips
without it unless CI is set.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.ingest import COMPARISON_COLUMNS, UI, run_name, ui_link
from pipeline.jobs import RUNTIME_VARIABLE
from relief.checkpoints import write_json

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STUDY = "ui-study"
ARCHITECTURES = ("lenet300-100", "lenet5")
PRUNERS = ("nnrelief", "magnitude")
SERVER_START_S = 60
UI_TIMEOUT_MS = 20_000
FIRST_LOAD_MS = 45_000
JOB_SECONDS = 95  # each fake job's own duration (its times.json): the UI shows 1.6min


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this test must not skip)")
    pytest.skip(reason)


def _browser() -> str:
    if not Path(CHROMIUM).exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "install-browser.sh")], timeout=600, check=False)
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing and could not be installed (scripts/install-browser.sh needs root)")
    return CHROMIUM


def _fake_run(folder: Path, index: int, architecture: str, pruner: str) -> float:
    """A finished pruning job's folder; returns its final test accuracy (the value the UI shows as latest)."""
    labels = {"experiment": "ui", "dataset": "fashion-mnist", "architecture": architecture, "optimizer": "adam",
              "pruner": pruner, "seed": 0}
    write_json({"slice": {"pruner": pruner, "loop": {"num_iters": 2}}, "labels": labels, "device": "cpu",
                "git_commit": "abc"}, folder / "config.json")
    dense = {"test_accuracy_pct": 90.0, "val_accuracy_pct": 89.0,
             "parameters": {"remaining_pct_of_prunable": 100.0, "remaining_pct_of_all": 100.0}}
    iterations = [{"test_accuracy_before_retrain_pct": 70.0 + index + step,
                   "test_accuracy_pct": 80.0 + index + 0.25 * step, "val_accuracy_pct": 79.0 + index,
                   "parameters": {"remaining_pct_of_prunable": 50.0 / (step + 1),
                                  "remaining_pct_of_all": 49.0 / (step + 1)}}
                  for step in range(2)]
    write_json({"dense": dense, "iterations": iterations}, folder / "metrics.json")
    start = time.time() - 3600 + 120 * index
    write_json({"start_time": start, "end_time": start + JOB_SECONDS}, folder / "times.json")
    return iterations[-1]["test_accuracy_pct"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            # The experiment through the REST API, not just /health: the first answer loads the tracking store.
            with urllib.request.urlopen(f"{url}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name={STUDY}",
                                        timeout=10) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    """Stop the server and its uvicorn workers (its own process group, started by this test)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


def _format(value: float) -> str:
    return f"{value:g}"  # how the UI prints 80.25, 81 etc.


def _seconds(duration: str) -> float:
    """A Duration cell of the runs table ("950ms", "12.3s", "1.6min", "2.0h") in seconds."""
    match = re.fullmatch(r"([\d.]+)\s*(ms|s|min|h|d)", duration.strip())
    assert match, f"unexpected duration {duration!r}"
    return float(match[1]) * {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}[match[2]]


def _column(page, header: str):
    """The cells of the runs table's column whose header is ``header``."""
    head = page.locator(".ag-header-cell", has_text=header).first
    head.wait_for()
    return page.locator(f'.ag-center-cols-container .ag-cell[col-id="{head.get_attribute("col-id")}"]')


def _screenshot(page, path: Path) -> None:
    page.screenshot(path=str(path))
    if os.environ.get("RELIEF_SCREENSHOT_DIR"):
        target = Path(os.environ["RELIEF_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)


def test_mlflow_ui_lists_every_run_with_its_metrics(tmp_path):
    executable = _browser()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed (pip install playwright)")

    # 1. A tiny study: 2 architectures x 2 pruners, ingested into a SQLite backend.
    expected = {}
    folders = []
    for index, (architecture, pruner) in enumerate((a, p) for a in ARCHITECTURES for p in PRUNERS):
        folder = tmp_path / "runs" / "prune" / f"{index:016x}"
        accuracy = _fake_run(folder, index, architecture, pruner)
        expected[run_name(json.loads((folder / "config.json").read_text())["labels"])] = accuracy
        folders.append(folder)
    database = tmp_path / "mlflow.db"
    settings = {"study": STUDY, "runs_dir": str(tmp_path / "runs"),
                "mlflow": {"tracking_uri": f"sqlite:///{database}", "artifact_location": str(tmp_path / "artifacts")}}
    ingested = subprocess.run([sys.executable, "-m", "pipeline.ingest", "--runs", *map(str, folders),
                               "--out", str(tmp_path / "ids.json")], cwd=ROOT, timeout=120, capture_output=True,
                              text=True, env={**os.environ, RUNTIME_VARIABLE: json.dumps(settings)})
    assert ingested.returncode == 0, ingested.stderr[-3000:]
    ids = {run_name(json.loads((Path(folder) / "config.json").read_text())["labels"]): value
           for folder, value in json.loads((tmp_path / "ids.json").read_text()).items()}
    experiment_id = {value["experiment_id"] for value in ids.values()}.pop()

    # 2. The MLflow UI on a free localhost port.
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "mlflow-server.log"
    with open(log, "w") as log_handle:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{database}",
             "--default-artifact-root", (tmp_path / "artifacts").as_uri(), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            cwd=tmp_path, stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(url, server, log)

        # 3. Headless Chromium: the runs page lists every run; the test_accuracy_pct column shows its values.
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=executable, headless=True, args=FLAGS,
                viewport={"width": 1600, "height": 900})
            context.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)  # assertions wait as long as actions (a loaded machine)
            try:
                page = context.new_page()
                page.goto(f"{url}/#/experiments/{experiment_id}/runs")
                for name in expected:  # the first page load also waits for the UI's bundle: a longer bound
                    expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=FIRST_LOAD_MS)
                expect(page.get_by_text(f"{len(expected)} matching runs")).to_be_visible()

                close_assistant = page.get_by_role("button", name="Close", exact=True)  # the side panel hides columns
                if close_assistant.count():
                    close_assistant.first.click()
                page.get_by_role("button", name="Columns", exact=True).click()
                page.get_by_placeholder("Search columns").fill("test_accuracy_pct")
                page.get_by_text("test_accuracy_pct", exact=True).last.click()
                page.keyboard.press("Escape")
                header = page.locator(".ag-header-cell", has_text="test_accuracy_pct")
                expect(header.first).to_be_visible()
                column = header.first.get_attribute("col-id")
                cells = page.locator(f'.ag-center-cols-container .ag-cell[col-id="{column}"]')
                expect(cells).to_have_count(len(expected))
                assert sorted(cells.all_inner_texts()) == sorted(_format(v) for v in expected.values())

                # 4. Screenshot of the runs list, for a human to look at.
                _screenshot(page, tmp_path / "mlflow-runs.png")

                # Each run's own page: its name, and test_accuracy_pct with that run's latest value.
                for name, accuracy in expected.items():
                    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{ids[name]['run_id']}")
                    expect(page.get_by_text(name, exact=True).filter(visible=True).first).to_be_visible()
                    row = page.get_by_role("row").filter(has_text="test_accuracy_pct").filter(
                        has_not_text="before_retrain")
                    expect(row.first).to_contain_text(_format(accuracy))

                # 5. The link ingest prints lands on the runs table, with every job's own duration.
                page.goto(ui_link(experiment_id).replace(UI, url))
                expect(page.get_by_text(f"{len(expected)} matching runs")).to_be_visible()
                assert re.search(rf"#/experiments/{experiment_id}/runs\b", page.url), page.url
                durations = _column(page, "Duration")
                expect(durations).to_have_count(len(expected))
                assert all(_seconds(text) > 1 for text in durations.all_inner_texts()), durations.all_inner_texts()
                assert [round(_seconds(t)) for t in durations.all_inner_texts()] == [96] * len(expected)  # 1.6min
                _screenshot(page, tmp_path / "mlflow-landing.png")

                # 6. A comparison view: one group's pruning runs by pruner, accuracy and remaining % as columns.
                view = ids[next(iter(expected))]["view"]
                assert view == "nnrelief-vs-baselines.ui.fashion-mnist.lenet300-100.adam"
                page.goto(ui_link(experiment_id, view).replace(UI, url))
                expect(page.get_by_text(f"{len(PRUNERS)} matching runs")).to_be_visible()
                _screenshot(page, tmp_path / "mlflow-comparison.png")
                for name in COMPARISON_COLUMNS:
                    expect(page.locator(".ag-header-cell", has_text=name).first).to_be_visible()
                for pruner in PRUNERS:
                    expect(page.get_by_text(f"Group: {pruner}", exact=True)).to_be_visible()
                averages = _column(page, "test_accuracy_pct").all_inner_texts()  # a group's row: over its seeds
                in_view = [v for n, v in expected.items() if n.endswith("lenet300-100 / fashion-mnist")]
                assert sorted(t for t in averages if "average" in t) == sorted(f"{_format(v)} (average)"
                                                                               for v in in_view)
            finally:
                context.close()
    finally:
        _stop(server)
