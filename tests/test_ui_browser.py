"""The MLflow UI as a user sees it: a real sweep, ``mlflow server`` over its store, headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium
chromium-driver``) and the ``selenium`` package. The screenshot is kept in the test's tmp dir,
and copied to ``tests/artifacts/`` when ``JOULEBENCH_TEST_ARTIFACTS`` is set (CI collects it).
"""

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from support import MlflowServer, free_port, run_cli

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).parent / "artifacts"
UI_TIMEOUT_SECONDS = 90  # a cold React bundle on two busy cores
SERVER_START_SECONDS = 180

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
    ),
]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A small real sweep (tinynet × baseline, prune) in a sqlite store: (store, parent run)."""
    folder = tmp_path_factory.mktemp("swept")
    # 1.5 s of idle baseline keeps each run's total window longer than CodeCarbon's 1 s update
    # period, so energy_total_j is measured however fast the two training batches are.
    result = run_cli(["sweep", "--models", "tinynet", "--methods", "baseline,prune", "--weights", "none",
                      "--epochs", "1", "--limit-train-batches", "2", "--idle-seconds", "1.5",
                      "--inference-batches", "1", "--quiet"], cwd=folder)
    assert result.returncode == 0, result.stderr
    parent = re.search(r"^parent    (\w+)", result.stdout, re.MULTILINE).group(1)
    return folder / "mlflow.db", parent


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with a fresh profile; chromedriver and browser stopped in teardown."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1600,900"):
        options.add_argument(flag)
    service = Service(str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()  # ends the browser through chromedriver, then chromedriver itself
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait()


def wait_for(condition: Callable[[], object], seconds: float, explain: Callable[[], str]) -> object:
    """Poll ``condition`` until it returns something truthy; fail with ``explain()`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = condition()
        except WebDriverException:
            value = None
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(explain())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """README's main job, small: a baseline and a stego run in a fresh folder; the URL `train`
    printed last (the summary's `open` line) and the folder."""
    folder = tmp_path_factory.mktemp("trained")
    for method in ("baseline", "stego"):
        result = run_cli(["train", "--model", "tinynet", "--method", method, "--weights", "none", "--epochs", "2",
                          "--idle-seconds", "1", "--inference-batches", "1", "--quiet"], cwd=folder)
        assert result.returncode == 0, result.stderr
    url = re.search(r"^open .*# then open (\S+)$", result.stdout, re.MULTILINE).group(1)
    return folder, url


@pytest.fixture(scope="module")
def trained_server(trained, tmp_path_factory):
    """`mlflow ui`'s server over that folder's store, on a free port rather than README's 5000."""
    folder, _ = trained
    server = MlflowServer(tmp_path_factory.mktemp("ui"), free_port(), folder / "mlflow.db", SERVER_START_SECONDS)
    try:
        yield server.start().uri
    finally:
        server.stop()


def test_the_printed_url_opens_on_model_method_energy_time_and_accuracy_without_a_click(
        trained, trained_server, browser, tmp_path):
    """A first-time user (a fresh browser profile) opens the URL `train` printed, as README says:
    the runs table of MLflow's model-training pages, with every figure of the comparison in the
    first screen (1600 × 1000), nothing added by hand."""
    folder, url = trained
    assert url.startswith("http://127.0.0.1:5000/#/experiments/")  # README's `mlflow ui` port
    browser.set_window_size(1600, 1000)
    browser.get(url.replace("http://127.0.0.1:5000", trained_server))
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("joulebench").experiment_id])
    columns = {"params.`model`": lambda run: run.data.params["model"],
               "params.`method`": lambda run: run.data.params["method"],
               "tags.`energy_source`": lambda run: run.data.tags["energy_source"],
               "metrics.`energy_train_j`": lambda run: run.data.metrics.get("energy_train_j"),
               "metrics.`train_seconds`": lambda run: run.data.metrics["train_seconds"],
               "metrics.`accuracy`": lambda run: run.data.metrics["accuracy"]}
    for run in runs:
        run_id = run.info.run_id
        cells = wait_for(lambda: (c := visible_cells(browser, run_id)).keys() >= columns.keys() and c,
                         UI_TIMEOUT_SECONDS, lambda: f"{run.info.run_name}: {visible_cells(browser, run_id)}; "
                         f"page: {browser.find_element(By.TAG_NAME, 'body').text[:2000]}")
        link = browser.find_element(By.CSS_SELECTOR, f'[row-id="{run_id}"] a[href$="/runs/{run_id}"]')
        assert link.text == f"tinynet-{run.data.params['method']}" and in_first_screen(link)
        for column, value in columns.items():
            text, shown = cells[column]
            assert shown, f"{column} of {run.info.run_name} is outside the first screen"
            expected = value(run)
            if isinstance(expected, float):
                assert float(text) == pytest.approx(expected, rel=1e-6), column
            else:
                assert text == ("-" if expected is None else expected), column
    screenshot = tmp_path / "mlflow-ui-comparison.png"
    assert browser.save_screenshot(str(screenshot))
    if os.environ.get("JOULEBENCH_TEST_ARTIFACTS"):
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(screenshot, ARTIFACTS / screenshot.name)


def in_first_screen(element: WebElement) -> bool:
    """Seen without scrolling: the element is what the browser shows at its centre (not under a
    panel, nor scrolled out of its table), and that centre lies in the window."""
    return bool(element.parent.execute_script(
        "const e = arguments[0], r = e.getBoundingClientRect(), x = r.left + r.width / 2, y = r.top + r.height / 2;"
        "if (x < 0 || y < 0 || x > window.innerWidth || y > window.innerHeight) return false;"
        "const seen = document.elementFromPoint(x, y); return seen !== null && (e === seen || e.contains(seen));",
        element))


def visible_cells(driver, run_id: str) -> dict[str, tuple[str, bool]]:
    """A run's row's cells by column id: the text and whether it lies in the first screen."""
    cells = driver.find_elements(By.CSS_SELECTOR, f'[role="row"][row-id="{run_id}"] [role="gridcell"]')
    return {cell.get_attribute("col-id"): (cell.text.strip(), in_first_screen(cell)) for cell in cells}


def test_report_html_leads_with_the_ratios_to_baseline_and_fits_1600_px(swept, browser, tmp_path):
    """report.html as a user opens it, 1600 px wide: the first table is the comparison (each
    method over its baseline: energy, time, accuracy and the energy source), fully in view, and
    nothing on the page needs horizontal scrolling."""
    store, _ = swept
    result = run_cli(["report", "--out", str(tmp_path / "report")], cwd=store.parent)
    assert result.returncode == 0, result.stderr
    browser.set_window_size(1600, 1000)
    browser.get((tmp_path / "report" / "report.html").as_uri())
    first_table = browser.find_element(By.CSS_SELECTOR, "table")
    header = [cell.text for cell in first_table.find_elements(By.CSS_SELECTOR, "th")]
    assert header == ["model", "px", "method", "n", "train kJ ÷ baseline", "train s ÷ baseline",
                      "accuracy ÷ baseline", "energy source"]
    rows = {cells[2].text.split()[0]: [cell.text for cell in cells] for cells in  # "prune †": marked
            (row.find_elements(By.CSS_SELECTOR, "td") for row in first_table.find_elements(By.CSS_SELECTOR, "tr"))
            if cells}
    # One short repeat each: a ratio, and why no significance is drawn.
    assert re.fullmatch(r"\d+\.\d{3}× n/a \((short run|1 repeat)\)", rows["prune"][6]), rows["prune"]
    assert rows["baseline"][6].startswith("= ")  # the divisor's own value
    assert rows["prune"][7] == "codecarbon_estimate"
    viewport = browser.execute_script("return document.documentElement.clientWidth")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= viewport
    assert first_table.rect["x"] + first_table.rect["width"] <= viewport
    assert first_table.rect["y"] + first_table.rect["height"] <= 1000  # in the first screen
