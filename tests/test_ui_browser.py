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
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from conftest import run_cli
from support import MlflowServer, free_port

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


@pytest.fixture(scope="module")
def mlflow_server(swept, tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 at a free port over the sweep's store; stopped in teardown."""
    store, _ = swept
    server = MlflowServer(tmp_path_factory.mktemp("server"), free_port(), store, SERVER_START_SECONDS)
    try:
        yield server.start().uri
    finally:
        server.stop()


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


def show_columns(driver, picks: list[tuple[str, str]]) -> None:
    """Toggle columns in the runs table's Columns menu, as a user would: (group, name) each."""
    columns_button = 'button[data-component-id*="experimentviewrunscolumnselector"]'
    driver.find_element(By.CSS_SELECTOR, columns_button).click()
    menu = wait_for(lambda: driver.find_element(
        By.CSS_SELECTOR, '[data-component-id="mlflow.experiment_page.runs_table.column_selector"]'),
        UI_TIMEOUT_SECONDS, lambda: "the Columns menu did not open")
    search = menu.find_element(By.CSS_SELECTOR, 'input[placeholder="Search columns"]')
    for group, name in picks:
        search.send_keys(Keys.CONTROL, "a", Keys.BACKSPACE, name)
        wait_for(lambda: _menu_entry(menu, group, name), UI_TIMEOUT_SECONDS,
                 lambda: f"no {group} column {name!r} in the menu: {menu.text}").click()
    search.send_keys(Keys.ESCAPE)


def _menu_entry(menu: WebElement, group: str, name: str) -> WebElement | None:
    """The checkbox of ``name`` under the ``group`` heading (Params and Tags may both hold it)."""
    current = None
    for node in menu.find_elements(By.CSS_SELECTOR, ".du-bois-light-tree-treenode"):
        text = node.text.strip()
        heading = re.match(r"(Attributes|Metrics|Parameters|Tags)\b", text)
        if heading:
            current = heading.group(1)
        elif current == group and text == name:
            return node.find_element(By.CSS_SELECTOR, ".du-bois-light-tree-checkbox")
    return None


def row_cells(driver, run_id: str) -> dict[str, str]:
    """The visible cells of a run's row, by column id (the run name sits in the pinned part)."""
    cells = driver.find_elements(By.CSS_SELECTOR, f'[role="row"][row-id="{run_id}"] [role="gridcell"]')
    return {cell.get_attribute("col-id"): cell.text.strip() for cell in cells if cell.is_displayed()}


def test_sweep_runs_method_and_energy_are_visible_in_the_mlflow_ui(swept, mlflow_server, browser, tmp_path):
    store, parent_id = swept
    client = MlflowClient(f"sqlite:///{store}")
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert sorted(run.info.run_name for run in children) == ["tinynet-baseline-r0", "tinynet-prune-r0"]

    browser.get(f"{mlflow_server}/#/experiments/{parent.info.experiment_id}/runs")

    def page_text() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    wait_for(lambda: browser.find_elements(By.LINK_TEXT, parent.info.run_name), UI_TIMEOUT_SECONDS,
             lambda: f"the runs table never showed {parent.info.run_name}: {page_text()}")
    assistant_close = '[data-component-id="mlflow.assistant.chat_panel.close"]'
    for close in browser.find_elements(By.CSS_SELECTOR, assistant_close):
        close.click()  # the assistant side panel would hide the table's right half
    browser.find_element(
        By.CSS_SELECTOR, f'[row-id="{parent_id}"] button[data-component-id*="runnamecellrenderer"]').click()
    # Add the method tag and an energy metric; untick three default columns so all fit the window.
    show_columns(browser, [("Tags", "method"), ("Metrics", "energy_total_j"),
                           ("Attributes", "Dataset"), ("Attributes", "Source"), ("Attributes", "Models")])

    # The whole run's energy: a 2-batch epoch can be shorter than CodeCarbon's update period,
    # and its training energy then (rightly) absent; the total window spans the idle seconds.
    method_column, energy_column = "tags.`method`", "metrics.`energy_total_j`"
    for run in children:
        run_id = run.info.run_id
        cells = wait_for(lambda: (c := row_cells(browser, run_id)).get(energy_column) and c, UI_TIMEOUT_SECONDS,
                         lambda: f"no energy cell for {run.info.run_name}: {row_cells(browser, run_id)}")
        link = browser.find_element(By.CSS_SELECTOR, f'[row-id="{run_id}"] a[href$="/runs/{run_id}"]')
        assert link.is_displayed() and link.text == run.info.run_name
        assert "energy_total_j" in run.data.metrics, run.data.tags.get("energy_flags")
        assert cells[method_column] == run.data.tags["method"]
        assert float(cells[energy_column]) == pytest.approx(run.data.metrics["energy_total_j"], rel=1e-9)
    assert row_cells(browser, parent_id)[method_column] == "-"  # the parent measures nothing

    screenshot = tmp_path / "mlflow-ui-sweep-runs.png"
    assert browser.save_screenshot(str(screenshot))
    if os.environ.get("JOULEBENCH_TEST_ARTIFACTS"):
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(screenshot, ARTIFACTS / screenshot.name)
