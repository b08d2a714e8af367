"""Regenerate docs/report.png and docs/demo.png from a trained model (e.g. the quickstart's).

    python docs/screenshots.py runs/quickstart/best_model_iou.pth

Needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver) and the dev extra.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from webdino_seg import Predictor
from webdino_seg.app.cli import main as cli
from webdino_seg.app.demo import create_app

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "examples" / "pennfudan-sample"


def _driver(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main(model: str) -> None:
    """Write both screenshots."""
    import uvicorn

    with tempfile.TemporaryDirectory() as tmp:
        cli(["evaluate", "--data", str(SAMPLE), "--model", model, "--out", f"{tmp}/e.json", "--report", f"{tmp}/r"])
        driver = _driver(1400, 1500)
        driver.get((Path(tmp) / "r" / "index.html").as_uri())
        driver.save_screenshot(str(HERE / "report.png"))
        driver.quit()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app = create_app(Predictor.from_checkpoint(model, device="cpu"), workdir=f"{tmp}/demo")
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        driver = _driver(1000, 900)
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.ID, "file").send_keys(str(SAMPLE / "valid_images" / "FudanPed00039.jpg"))
        driver.find_element(By.ID, "run").click()
        WebDriverWait(driver, 60).until(expected_conditions.presence_of_element_located((By.ID, "mask")))
        driver.save_screenshot(str(HERE / "demo.png"))
        driver.quit()
        server.should_exit = True


if __name__ == "__main__":
    main(sys.argv[1])
