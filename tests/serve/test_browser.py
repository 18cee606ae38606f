"""The web page in a real headless Chromium (Selenium): token, upload a good and a corrupt file, screenshot."""

from __future__ import annotations

import socket
import threading
import time

import pytest

#: Debian chromium + chromium-driver: skipped without them (failed in CI), checked before any fixture is built
pytestmark = [pytest.mark.requires_tool("chromium", package="chromium"),
              pytest.mark.requires_tool("chromedriver", package="chromium-driver")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def live_server(make_served):
    """The app under uvicorn in a thread on a free loopback port."""
    import uvicorn

    served = make_served()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(served.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield served, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def browser(require_tool):
    """Headless Debian chromium + chromium-driver; skipped without them (failed in CI)."""
    (chromium,) = require_tool("chromium", package="chromium")
    (chromedriver,) = require_tool("chromedriver", package="chromium-driver")
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    yield driver
    driver.quit()


def test_page_uploads_shows_verdicts_errors_and_heatmap(live_server, browser, tmp_path, png_bytes, corrupt_png):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    served, url = live_server
    good, bad = tmp_path / "chest.png", tmp_path / "broken.png"
    good.write_bytes(png_bytes(7, (160, 200)))
    bad.write_bytes(corrupt_png)

    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    browser.find_element(By.ID, "token").send_keys(served.token)
    wait.until(EC.text_to_be_present_in_element((By.ID, "model-info"), "forensic_cnn"))
    browser.find_element(By.ID, "file-input").send_keys(f"{good}\n{bad}")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#result-rows tr")) == 2)

    verdict_rows = browser.find_elements(By.CSS_SELECTOR, "#result-rows tr.row-verdict")
    error_rows = browser.find_elements(By.CSS_SELECTOR, "#result-rows tr.row-error")
    assert len(verdict_rows) == 1 and len(error_rows) == 1
    assert "chest.png" in verdict_rows[0].text
    assert verdict_rows[0].find_element(By.CSS_SELECTOR, ".badge").text in ("real", "fake")
    assert "broken.png" in error_rows[0].text and "PNG" in error_rows[0].text
    assert "2 file(s): 1 scanned, 1 error(s)" in browser.find_element(By.ID, "status").text
    assert served.app.state.service.store.count(source="api") == 2

    # the heat-map is drawn over the image on the canvas
    verdict_rows[0].click()
    canvas = browser.find_element(By.ID, "canvas")
    wait.until(lambda d: canvas.get_attribute("data-drawn") == "image+heatmap")
    assert browser.execute_script(
        "const c = arguments[0]; const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let s = 0; for (let i = 0; i < px.length; i += 97) s += px[i]; return c.width === 512 && s > 0;", canvas)
    assert "score" in browser.find_element(By.ID, "viewer-note").text

    Select(browser.find_element(By.ID, "filter")).select_by_value("error")
    rows = browser.find_elements(By.CSS_SELECTOR, "#result-rows tr")
    assert len(rows) == 1 and "broken.png" in rows[0].text
    Select(browser.find_element(By.ID, "filter")).select_by_value("all")

    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000
