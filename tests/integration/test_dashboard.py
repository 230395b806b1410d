"""The web dashboard in a real headless browser (Debian's chromium and chromedriver, driven by Selenium) against a
real `inferd serve` in explicit model control mode.

What a user would check: `/` sends the browser to the dashboard, the page loads without console errors, it lists
the models with versions and states, a chart moves once requests are sent, "try it" answers for a JSON model and for
an uploaded image (the same top classes as the model run in-process), and unloading then loading a model shows in
its state. Screenshots are saved to test-artifacts/ (dashboard-traffic.png under load, dashboard.png at the end).

Without chromium the test is skipped, unless INFERD_REQUIRE_BROWSER is set (CI sets it: there a missing browser
fails the test).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from image_models import LABELS, SIZE, add_classifier, classifier_model
from models import SIMPLE, add_simple
from serving import ServerProcess, start_server

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WAIT_S = 30.0
T = TypeVar("T")


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/lib/chromium/chromedriver" if Path("/usr/lib/chromium/chromedriver").exists() else None)
    if chromium is None or driver is None:
        reason = "chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("INFERD_REQUIRE_BROWSER"):
            pytest.fail(f"INFERD_REQUIRE_BROWSER is set but {reason}")
        pytest.skip(reason)
    return chromium, driver


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("dashboard-repo") / "models"
    add_simple(repo)
    add_classifier(repo, "classifier", "NCHW", batching=True)
    process = start_server(repo, tmp_path_factory.mktemp("dashboard-logs") / "inferd.log",
                           "--model-control-mode", "explicit", "--load-model", "*")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()  # stops chromedriver and the browser it started


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
    """Poll `probe` until it returns something truthy (a page element that went stale counts as not yet)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = probe()
            if found:
                return found
        except (StaleElementReferenceException, WebDriverException) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f" ({last})" if last else ""))


def model_rows(driver: Any) -> dict[str, list[str]]:
    """The models table as a user reads it: model -> [version, state, reason]."""
    from selenium.webdriver.common.by import By

    rows = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#models tbody tr"):
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        rows[row.get_attribute("data-model")] = cells[1:4]
    return rows


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def press(driver: Any, focus_key: str, click: bool = True) -> None:
    """Press one of the page's buttons: a click, or (click=False) Enter on it, as a keyboard user would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def act() -> bool:
        button = driver.find_element(By.CSS_SELECTOR, f"[data-focus-key='{focus_key}']")
        if click:
            button.click()
        else:
            button.send_keys(Keys.ENTER)
        return True

    wait_for(f"button {focus_key}", act)


def send_requests(url: str, seconds: float) -> int:
    """Requests to `simple` for a while, from another thread than the browser's polling."""
    body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
                       for n in ("INPUT0", "INPUT1")]}
    sent = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            assert client.post(f"/v2/models/{SIMPLE}/infer", json=body).status_code == 200
            sent += 1
    return sent


def expected_classes(path: Path, k: int) -> list[str]:
    """The top k as the page lists them, from the model run here on the image scaled as INCEPTION."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1
    session = ort.InferenceSession(classifier_model("NCHW", batching=True), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"image": np.transpose(pixels, (2, 0, 1))[np.newaxis]})[0][0]
    return [f"{LABELS[i]} ({i}): {scores[i]:.4f}" for i in np.argsort(-scores, kind="stable")[:k]]


def test_dashboard_in_a_browser(server: ServerProcess, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    # An API client asking / is not redirected; a browser is, to the dashboard.
    assert httpx.get(f"{server.base_url}/", timeout=10).status_code == 404
    driver.get(f"{server.base_url}/")
    assert driver.current_url == f"{server.base_url}/dashboard"
    assert driver.title == "inferd dashboard"

    rows = wait_for("both models listed as READY", lambda: (lambda r: r if len(r) == 2 and all(
        v[1] == "READY" for v in r.values()) else None)(model_rows(driver)))
    assert rows == {"classifier": ["1", "READY", ""], SIMPLE: ["1", "READY", ""]}

    # Select the model with the keyboard; its charts start from a first measured interval.
    press(driver, f"select-{SIMPLE}", click=False)
    assert wait_for("the model selected", lambda: text_of(driver, "detail-heading") == SIMPLE)
    wait_for("a first rate", lambda: text_of(driver, "value-rate") not in ("", "–"))
    quiet_chart = driver.execute_script("return document.getElementById('chart-rate').toDataURL()")
    assert text_of(driver, "value-rate") == "0.0"

    worker = threading.Thread(target=send_requests, args=(server.base_url, 4.0))
    worker.start()
    try:
        busy = wait_for("the request rate to rise", lambda: (lambda v: v if float(v) > 0 else None)(
            text_of(driver, "value-rate")))
    finally:
        worker.join()
    assert float(busy) > 0
    assert driver.execute_script("return document.getElementById('chart-rate').toDataURL()") != quiet_chart
    assert text_of(driver, "value-batches").startswith("1: ")  # the batch-size histogram counts executions
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "dashboard-traffic.png"))
    p50, p99 = (float(v) for v in text_of(driver, "value-latency").split(" / "))
    assert 0 < p50 <= p99

    # The configuration, and "try it" with a JSON form built from the metadata.
    config = driver.find_element(By.ID, "config")
    driver.find_element(By.CSS_SELECTOR, "#config-box summary").click()
    assert '"name": "simple"' in config.text and "TYPE_INT32" in config.text
    areas = driver.find_elements(By.CSS_SELECTOR, "#json-inputs textarea")
    assert [a.get_attribute("data-name") for a in areas] == ["INPUT0", "INPUT1"]
    for area, values in zip(areas, (list(range(16)), [2] * 16), strict=True):
        area.clear()
        area.send_keys(str(values))
    driver.find_element(By.CSS_SELECTOR, "#try-json button[type=submit]").click()
    result = wait_for("the JSON answer", lambda: (lambda t: t if "OUTPUT0" in t else None)(text_of(driver, "result")))
    assert "OUTPUT0 (INT32, [1, 16])\n" + str(list(range(2, 18))).replace(" ", "") in result
    assert "OUTPUT1 (INT32, [1, 16])\n" + str(list(range(-2, 14))).replace(" ", "") in result

    # "Try it" with an image upload: an image of the model's size, so the browser sends its exact pixels.
    image = tmp_path / "upload.png"
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), "RGB").save(image)
    press(driver, "select-classifier")
    wait_for("the image form", lambda: driver.find_element(By.ID, "try-image").is_displayed())
    assert not driver.find_element(By.ID, "try-json").is_displayed()
    driver.find_element(By.ID, "image-file").send_keys(str(image))
    Select(driver.find_element(By.ID, "scaling")).select_by_visible_text("INCEPTION")
    top_k = driver.find_element(By.ID, "top-k")
    top_k.clear()
    top_k.send_keys("3")
    driver.find_element(By.CSS_SELECTOR, "#try-image button[type=submit]").click()
    classes = wait_for("the top classes", lambda: [li.text for li in driver.find_elements(By.CSS_SELECTOR,
                                                                                          "#classes li")])
    assert classes == expected_classes(image, 3)

    # Unload, then load: the state shown follows.
    press(driver, "unload-classifier")
    wait_for("classifier unloaded", lambda: model_rows(driver).get("classifier", ["", ""])[1] == "UNAVAILABLE")
    assert "unloaded" in text_of(driver, "status")
    assert not driver.find_element(By.ID, "try-image").is_displayed()  # nothing to try on an unloaded model
    press(driver, "load-classifier")
    wait_for("classifier ready again", lambda: model_rows(driver).get("classifier", ["", ""])[1] == "READY")

    driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


ADMIN_KEY = "admin-key-for-the-dashboard-0123"
TENANT_KEY = "tenant-key-for-the-dashboard-0123"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with API keys: an admin, and a tenant granted `simple` only."""
    root = tmp_path_factory.mktemp("dashboard-auth")
    repo = root / "models"
    add_simple(repo)
    add_classifier(repo, "classifier", "NCHW", batching=True)
    auth = root / "auth.json"
    auth.write_text(json.dumps({"admin_keys": [ADMIN_KEY],
                                "tenants": [{"name": "acme", "keys": [TENANT_KEY], "models": [SIMPLE]}]}))
    process = start_server(repo, root / "inferd.log", "--auth-config", str(auth), "--state-dir", str(root / "state"))
    yield process
    process.stop()


def test_dashboard_with_api_keys(guarded: ServerProcess, browser: Any) -> None:
    """With keys on, the page itself is open but shows nothing until a key is given, and then only what that key
    sees through the API: a tenant its own model (and no load / unload), the admin everything."""
    from selenium.webdriver.common.by import By

    driver = browser
    assert httpx.post(f"{guarded.base_url}/v2/repository/index", timeout=10).status_code == 401
    driver.get(f"{guarded.base_url}/dashboard")
    key = wait_for("the key form", lambda: (lambda e: e if e.is_displayed() else None)(
        driver.find_element(By.ID, "api-key")))
    assert driver.switch_to.active_element == key  # focused, ready to type into
    assert model_rows(driver) == {}
    assert "needs an API key" in text_of(driver, "status")

    key.send_keys(TENANT_KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    assert wait_for("the tenant's model", lambda: model_rows(driver)) == {SIMPLE: ["1", "READY", ""]}
    press(driver, f"unload-{SIMPLE}")
    wait_for("the refusal", lambda: "needs an admin key" in text_of(driver, "status"))
    assert model_rows(driver)[SIMPLE][1] == "READY"

    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    key = wait_for("the key form again", lambda: (lambda e: e if e.is_displayed() else None)(
        driver.find_element(By.ID, "api-key")))
    key.send_keys(ADMIN_KEY)
    key.submit()
    rows = wait_for("every model", lambda: (lambda r: r if len(r) == 2 else None)(model_rows(driver)))
    assert rows == {"classifier": ["1", "READY", ""], SIMPLE: ["1", "READY", ""]}
    # The only errors the browser saw are the API's 401s and the tenant's 403, which the page showed.
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors and all("401" in m or "403" in m for m in errors), errors
