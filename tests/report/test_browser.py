"""The report of a tiny run, opened in a real headless Chromium (OS packages) through Selenium.

Checks what only a browser can: every section renders, every picture decodes, the controls
change the picture shown, the page requests nothing but itself and its data: URIs, a hostile
class name stays text, and no script error is logged. A screenshot of the whole page is saved
(``report.png`` in the test's tmp folder, or where ``LTPA_REPORT_SCREENSHOT`` says).

This test fails when Chromium or chromedriver is missing, unless ``LTPA_SKIP_BROWSER=1`` is set
on purpose (for machines without Chromium). On Debian/Ubuntu:
``apt-get install -y chromium chromium-driver``.
"""
import base64
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from report_helpers import HOSTILE, copy_run, rename_class

from ltpa.report import build_report
from ltpa.report.html import SECTIONS

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1280,1000")
INSTALL = ("install them with `apt-get install -y chromium chromium-driver` (Debian/Ubuntu), point "
           "LTPA_CHROMIUM / LTPA_CHROMEDRIVER at them, or set LTPA_SKIP_BROWSER=1 to skip this test on purpose")


def _executable(variable: str, names: tuple[str, ...]) -> str | None:
    if os.environ.get(variable):
        return os.environ[variable] if os.path.isfile(os.environ[variable]) else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if os.environ.get("LTPA_SKIP_BROWSER") == "1":
        pytest.skip("LTPA_SKIP_BROWSER=1: the report's browser test was skipped on request")
    chromium = _executable("LTPA_CHROMIUM", ("chromium", "chromium-browser"))
    driver_path = _executable("LTPA_CHROMEDRIVER", ("chromedriver",))
    if chromium is None or driver_path is None:
        pytest.fail(f"the report's browser test needs headless Chromium and chromedriver, found chromium={chromium}, "
                    f"chromedriver={driver_path}; {INSTALL}", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        pytest.fail(f"the report's browser test needs selenium ({err}); install the test extras: "
                    "pip install -e '.[test]'", pytrace=False)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _requested_urls(driver) -> list[str]:
    """URLs the page asked for since the last call, from Chrome's DevTools performance log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _open(driver, path: Path) -> None:
    driver.get_log("performance")  # drop what earlier pages logged
    driver.get_log("browser")
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + 30
    while driver.execute_script("return document.readyState") != "complete":
        assert time.monotonic() < deadline, "the page did not finish loading in 30 s"
        time.sleep(0.1)


def test_the_network_log_sees_requests_that_leave_the_file(browser, tmp_path):
    """The control for the test below: a page with an outside picture is caught by the same log."""
    page = tmp_path / "outside.html"
    page.write_text('<html><body><img src="http://127.0.0.1:9/ltpa-probe.png"></body></html>')
    _open(browser, page)
    urls = _requested_urls(browser)
    assert "http://127.0.0.1:9/ltpa-probe.png" in urls, urls


def test_report_renders_switches_pictures_and_stays_inside_the_file(browser, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    rename_class(run, 0, HOSTILE)
    started = time.perf_counter()
    report = build_report(run, attention_images=6, attention_pool=24)
    built = time.perf_counter() - started
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    _open(browser, report)
    # 1. Nothing but the file itself and its data: URIs was requested.
    urls = _requested_urls(browser)
    assert report.resolve().as_uri() in urls
    outside = [u for u in urls if not (u.startswith("data:") or u == report.resolve().as_uri())]
    assert not outside, f"the report requested {outside}"
    print(f"requests: {len(urls)} ({sum(u.startswith('data:') for u in urls)} data: URIs)")
    # 2. Every section is there and visible, every picture decoded.
    for section_id, title in SECTIONS:
        section = browser.find_element(By.ID, section_id)
        assert section.is_displayed() and section.size["height"] > 40, section_id
        assert section.find_element(By.TAG_NAME, "h2").text == title
        assert 'class="missing"' not in section.get_attribute("innerHTML") or section_id in (
            "localise", "sanity", "transfer"), f"section {section_id} is missing in a finished run"
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)")
    assert broken == [], f"pictures that did not decode: {broken}"
    assert browser.execute_script("return document.images.length") >= 3
    # 3. A hostile class name is text, not a script.
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    assert HOSTILE in browser.find_element(By.ID, "per-class").text
    # 4. The colour-scale switch and the image stepper change the picture.
    image = browser.find_element(By.ID, "attention-image")
    caption = browser.find_element(By.ID, "attention-caption")
    position = browser.find_element(By.ID, "attention-position")
    mass_src, first_caption = image.get_attribute("src"), caption.text
    browser.find_element(By.ID, "scale-per-map").click()
    per_map_src = image.get_attribute("src")
    assert per_map_src != mass_src, "choosing the per-map scale did not change the picture"
    assert per_map_src.startswith("data:image/png")
    browser.find_element(By.ID, "scale-shared").click()
    assert image.get_attribute("src") not in (mass_src, per_map_src), "the shared scale shows no picture of its own"
    browser.find_element(By.ID, "scale-mass").click()
    assert image.get_attribute("src") == mass_src, "back on the mass scale, the first picture is not shown"
    browser.find_element(By.ID, "attention-next").click()
    assert image.get_attribute("src") != mass_src, "'next' did not change the picture"
    assert caption.text != first_caption, "'next' did not change the caption"
    assert position.text.startswith("2 / ")
    browser.find_element(By.ID, "attention-prev").click()
    assert image.get_attribute("src") == mass_src, "'previous' did not go back to the first picture"
    assert position.text.startswith("1 / ")
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "attention-filter")).select_by_value("wrong")
    assert "wrong" in caption.text and caption.get_attribute("class") == "wrong"
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 0
    # 5. No script error and no blocked request in the console.
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    assert not [u for u in _requested_urls(browser) if not u.startswith("data:")]
    # 6. A screenshot of the whole page, for a person to look at.
    Select(browser.find_element(By.ID, "attention-filter")).select_by_value("all")
    metrics = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    target = Path(os.environ.get("LTPA_REPORT_SCREENSHOT") or tmp_path / "report.png")
    target.write_bytes(base64.b64decode(shot["data"]))
    assert target.stat().st_size > 50_000
    print(f"report built in {built:.1f} s; screenshot: {target}")
