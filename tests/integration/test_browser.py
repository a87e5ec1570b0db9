"""Issue 14: the hub's pages as a person sees them, in a real browser (headless Chromium).

Each test asserts what the page shows: the progress page, JupyterLab with a cell typed and
run, the spawn form's GPU choice on the stub-GPU engine, a refusal on the spawn page with
its link to the GPU board, and the board as a user and as an admin (who stops a server there).
A failing test leaves a screenshot and the page in test-output/screenshots/.
"""

from __future__ import annotations

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select

from hubdriver import Kernel

from .browser import chromium, keep_evidence, log_in, wait

DEVICES = [f"GPU-00000000-0000-0000-0000-0000000001{i:02d}" for i in range(2)]
GPU_CONFIG = f"""
c.HardenedSpawner.gpu_inventory = {[{"uuid": u, "index": str(i), "name": "Fake GPU"} for i, u in enumerate(DEVICES)]!r}
c.HardenedSpawner.gpu_default_per_user = 0
c.HardenedSpawner.gpu_max_per_user = 1
c.HardenedSpawner.mem_limit = "1G"
c.Authenticator.admin_users = {{"boss"}}
__import__("hardened_spawner.gpu_pages").gpu_pages.enable(c)
"""


@pytest.fixture
def driver(request):
    browser = chromium()
    yield browser
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print("browser evidence:", keep_evidence(browser, request.node.name))
    browser.quit()


@pytest.fixture(scope="module")
def gpu_hub(hub_factory):
    return hub_factory(GPU_CONFIG)


def test_log_in_watch_the_progress_page_and_run_a_cell_in_jupyterlab(driver, hub):
    name = "brenda"
    log_in(driver, hub.url, name)
    # no GPUs on this hub, so no form: the server starts at login and the progress page shows it
    wait(driver).until(lambda d: "/hub/spawn-pending/" in d.current_url or "/lab" in d.current_url)
    if "/hub/spawn-pending/" in driver.current_url:
        assert "Your server is starting up" in driver.page_source
    wait(driver, 180).until(lambda d: f"/user/{name}/lab" in d.current_url)
    wait(driver, 60).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".jp-LauncherCard")))

    # a notebook with a Python kernel, opened as a person opens it from the file browser
    token = hub.user_token(name)
    notebook = {"cells": [{"cell_type": "code", "source": "", "metadata": {}, "outputs": [], "execution_count": None}],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    r = requests.put(f"{hub.url}/user/{name}/api/contents/typed.ipynb", headers={"Authorization": f"token {token}"},
                     json={"type": "notebook", "content": notebook}, timeout=30)
    assert r.status_code in (200, 201), r.text
    driver.get(f"{hub.url}/user/{name}/lab/tree/typed.ipynb")
    # the status bar says the kernel is connected and idle (the toolbar's indicator says
    # "idle" before any kernel is there, and a cell run then does nothing)
    wait(driver, 120).until(lambda d: any(
        item.text.endswith("| Idle")
        for item in d.find_elements(By.CSS_SELECTOR, '.jp-StatusBar-TextItem[title^="Change kernel for typed.ipynb"]')))
    editor = wait(driver, 60).until(expected_conditions.element_to_be_clickable(
        (By.CSS_SELECTOR, ".jp-Notebook .jp-Cell .cm-content")))
    editor.click()
    editor.send_keys("import os; print(os.getuid(), 6 * 7)")
    wait(driver).until(lambda d: "6 * 7" in editor.text)
    editor.send_keys(Keys.SHIFT, Keys.ENTER)
    output = wait(driver, 60).until(expected_conditions.presence_of_element_located(
        (By.CSS_SELECTOR, ".jp-OutputArea-output pre")))
    uid, answer = output.text.split()
    assert answer == "42" and int(uid) >= hub.uid_min


def test_the_spawn_form_offers_a_gpu_and_the_kernel_sees_it(driver, gpu_hub):
    name = "gwen"
    log_in(driver, gpu_hub.url, name)
    wait(driver).until(lambda d: "/hub/spawn" in d.current_url)
    choice = Select(wait(driver).until(expected_conditions.presence_of_element_located((By.ID, "hs-gpus"))))
    assert [o.text for o in choice.options] == ["0 (CPU only)", "1"]
    assert "2 of 2 GPUs are free right now." in driver.page_source
    choice.select_by_value("1")
    driver.find_element(By.CSS_SELECTOR, "form#spawn_form input[type=submit], form#spawn_form button[type=submit]").click()
    wait(driver, 180).until(lambda d: f"/user/{name}/lab" in d.current_url)
    kernel = Kernel(gpu_hub, name)
    try:
        seen = kernel.run("import os; print(os.environ['NVIDIA_VISIBLE_DEVICES'])").strip()
    finally:
        kernel.close()
        gpu_hub.stop_server(name)  # its GPU back for the other tests
    assert seen in DEVICES


def test_a_refusal_is_shown_on_the_spawn_page(driver, gpu_hub):
    holders = ("ghost1", "ghost2")
    try:
        for holder in holders:  # both devices taken by others, through the REST API
            gpu_hub.create_user(holder)
            result = gpu_hub.spawn(holder, {"gpus": 1})
            assert result.ready, result.message
        log_in(driver, gpu_hub.url, "late")
        choice = Select(wait(driver).until(expected_conditions.presence_of_element_located((By.ID, "hs-gpus"))))
        assert "0 of 2 GPUs are free right now." in driver.page_source
        choice.select_by_value("1")
        driver.find_element(By.CSS_SELECTOR, "form#spawn_form input[type=submit], form#spawn_form button[type=submit]").click()
        shown = wait(driver, 120).until(lambda d: "GPUs are busy" in d.page_source and d.page_source)
        assert "You asked for 1 GPU, but 2 of 2 GPUs are busy." in shown
        assert "Traceback" not in shown and "Internal Server Error" not in shown
        # the refusal links the GPU board: who holds what, and the late user's own quota
        driver.find_element(By.LINK_TEXT, "See the GPU board").click()
        wait(driver).until(lambda d: d.current_url.endswith("/hub/gpus"))
        assert board_rows(driver) == [("0", "busy", "ghost1"), ("1", "busy", "ghost2")]
        assert driver.find_element(By.ID, "gpu-summary").text.startswith("0 of 2 GPUs are free.")
        assert driver.find_element(By.ID, "gpu-you").text == "You may hold 1 GPU and hold none now."
        assert not driver.find_elements(By.CSS_SELECTOR, ".gpu-stop")  # no stop button for users
    finally:
        for holder in holders:
            gpu_hub.stop_server(holder)


def board_rows(driver) -> list[tuple[str, str, str]]:
    """(index, state, held by) of each row of the GPU board, as the page shows them."""
    return [tuple(row.find_element(By.CSS_SELECTOR, sel).text for sel in ("td:first-child", ".gpu-state", ".gpu-holder"))
            for row in driver.find_elements(By.CSS_SELECTOR, "#gpu-table tbody tr")]


def test_the_gpu_board_for_its_holder_and_for_an_admin_who_stops_a_server(driver, gpu_hub):
    gpu_hub.create_user("holder")
    try:
        assert gpu_hub.spawn("holder", {"gpus": 1}).ready
        log_in(driver, gpu_hub.url, "holder")
        # the login goes on to the running server (through OAuth); the board after it
        wait(driver, 60).until(lambda d: "/user/holder/lab" in d.current_url)
        driver.get(f"{gpu_hub.url}/hub/gpus")
        rows = board_rows(driver)
        assert ("busy", "holder (you)") in [(state, who) for _, state, who in rows], rows
        assert "free" in [state for _, state, _ in rows]
        mine = driver.find_element(By.ID, "gpu-mine").text
        assert mine.startswith("your default server: 1 GPU since"), mine
        driver.delete_all_cookies()

        log_in(driver, gpu_hub.url, "boss")
        wait(driver).until(lambda d: "/hub/spawn" in d.current_url)  # boss has no server
        driver.get(f"{gpu_hub.url}/hub/gpus")
        assert [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#gpu-table th")][-2] == "Server"
        stop = driver.find_element(By.CSS_SELECTOR, '.gpu-stop[data-user="holder"]')
        assert stop.text == "Stop holder"
        stop.click()
        wait(driver, 60).until(lambda d: "" not in gpu_hub.api("GET", "/users/holder").json()["servers"])
        driver.get(f"{gpu_hub.url}/hub/gpus")
        assert [(state, who) for _, state, who in board_rows(driver)] == [("free", ""), ("free", "")]
    finally:
        gpu_hub.stop_server("holder")
