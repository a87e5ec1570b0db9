"""A real browser for the integration tests: Debian's Chromium, driven by Selenium.

Nothing downloads a browser: the binary and its driver come from apt (scripts/setup.sh
installs ``chromium`` and ``chromium-driver``), and pointing Selenium at both keeps
Selenium Manager from fetching anything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: where a failing browser test leaves its screenshot and page (CI keeps the folder)
OUTPUT = Path(os.environ.get("HSTEST_OUTPUT", Path(__file__).resolve().parents[2] / "test-output"))


def chromium() -> webdriver.Chrome:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            raise AssertionError(f"{path} is missing: apt-get install chromium chromium-driver "
                                 "(scripts/setup.sh --gpu-stub does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    return driver


def keep_evidence(driver: webdriver.Chrome, name: str) -> Path:
    """A screenshot and the page source of what the browser shows now."""
    folder = OUTPUT / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    driver.save_screenshot(str(folder / f"{safe}.png"))
    (folder / f"{safe}.html").write_text(driver.page_source)
    return folder / f"{safe}.png"


def wait(driver, seconds: float = 60) -> WebDriverWait:
    return WebDriverWait(driver, seconds)


def log_in(driver, hub_url: str, name: str, password: str = "any") -> None:
    """The hub's login form, filled and sent as a person does."""
    driver.get(f"{hub_url}/hub/login")
    wait(driver).until(expected_conditions.presence_of_element_located((By.ID, "username_input")))
    driver.find_element(By.ID, "username_input").send_keys(name)
    driver.find_element(By.ID, "password_input").send_keys(password)
    driver.find_element(By.ID, "login_submit").click()
