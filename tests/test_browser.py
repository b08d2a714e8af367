"""The evaluation report and the demo app in a real headless Chromium (Debian's chromium and chromedriver)."""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import serving
from webdino_seg.app.cli import main

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pennfudan-sample"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (.ci/run does)")
        pytest.skip("needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1800",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_report_renders_offline(browser, trained_run: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    report = tmp_path / "report"
    ckpt = trained_run / "best_model_iou.pth"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(SAMPLE),
                "--model",
                str(ckpt),
                "--out",
                str(tmp_path / "e.json"),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    browser.get((report / "index.html").as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#summary tr")
    labels = [row.find_element(By.TAG_NAME, "th").text for row in rows]
    assert {"mIoU", "IoU person", "pixel accuracy", "all-background baseline", "backbone", "head", "weights"} <= set(
        labels
    )
    cards = browser.find_elements(By.CSS_SELECTOR, "#gallery .card")
    assert len(cards) == 4
    scores = [float(card.get_attribute("data-miou")) for card in cards]
    assert scores == sorted(scores)  # worst first
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    assert broken == [] and len(browser.find_elements(By.TAG_NAME, "img")) == 1 + 3 + 2 * 4
    box = browser.find_element(By.ID, "filter")
    box.send_keys("fudan")
    shown = [c for c in cards if c.is_displayed()]
    assert len(shown) == 3 and "3 of 4" in browser.find_element(By.ID, "count").text
    assert _console_errors(browser) == []
    browser.save_screenshot(str(tmp_path / "report.png"))


def test_demo_returns_predicts_mask(browser, trained_run: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from webdino_seg.app.demo import create_app
    from webdino_seg.inference.predictor import Predictor

    ckpt = trained_run / "best_model_iou.pth"
    app = create_app(Predictor.from_checkpoint(ckpt, device="cpu"), max_bytes=2 * 2**20, workdir=tmp_path / "work")
    with serving(app) as port:
        image = SAMPLE / "valid_images" / "FudanPed00039.jpg"
        browser.get(f"http://127.0.0.1:{port}/")
        browser.find_element(By.ID, "file").send_keys(str(image))
        browser.find_element(By.ID, "run").click()
        WebDriverWait(browser, 60).until(expected_conditions.presence_of_element_located((By.ID, "mask")))
        assert "segmented in" in browser.find_element(By.ID, "timing").text
        assert browser.execute_script(
            "const i = document.getElementById('overlay'); return i.complete && i.naturalWidth"
        )
        with urllib.request.urlopen(browser.find_element(By.ID, "mask").get_attribute("href")) as response:
            demo_mask = np.asarray(Image.open(response))
        out = tmp_path / "predict"
        assert main(["predict", "--input", str(image), "--model", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
        assert np.array_equal(demo_mask, np.asarray(Image.open(out / "FudanPed00039_mask.png")))
        assert _console_errors(browser) == []
        browser.save_screenshot(str(tmp_path / "demo.png"))
        big = tmp_path / "big.png"  # over the 2 MB limit: refused with a message
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)).save(big)
        browser.get(f"http://127.0.0.1:{port}/")
        browser.find_element(By.ID, "file").send_keys(str(big))
        browser.find_element(By.ID, "run").click()
        WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.CLASS_NAME, "error")))
        assert "too large" in browser.find_element(By.CLASS_NAME, "error").text
