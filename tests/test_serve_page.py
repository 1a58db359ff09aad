"""The page at GET /, in a real headless browser (Debian's Chromium and its driver, through Selenium): choose an
image, read the predicted class and the bars from the page."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import processes
import pytest
from PIL import Image
from serve_helpers import serving, train_checkpoint

from project.datamodules import MNISTDataModule
from project.engine import predict
from project.engine.checkpoint import load_model

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MISSING = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"
if not (CHROMIUM and DRIVER) and os.environ.get("CI"):
    raise RuntimeError(f"the serving page's test {MISSING}: CI runs every test")  # CI may not skip it
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason=MISSING)


@pytest.fixture
def browser():  # noqa: ANN201 - selenium's WebDriver
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for a driver online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,900"):
        options.add_argument(argument)
    # The driver (and the browser it starts) in a session of its own, ended with the test whatever happens.
    service = Service(executable_path=DRIVER, popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(service=service, options=options)
    processes.adopt(service.process)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_shows_the_chosen_image_and_its_top_classes(
    browser,
    tmp_path: Path,
    data_root: Path,  # noqa: ANN001
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    checkpoint = train_checkpoint(tmp_path, data_root)
    data = MNISTDataModule(root=str(data_root), download=False)
    data.setup("test")
    image = tmp_path / "digit.png"
    Image.fromarray(data.splits["test"][0][3, 0].numpy()).resize((112, 112)).save(image)
    (expected,) = predict.predict_files(load_model(checkpoint), [image], topk=3)

    with serving(checkpoint, tmp_path, "--topk", "3", "--accelerator", "cpu") as url:
        browser.get(url + "/")
        assert browser.title == "Image classifier"
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, 60).until(lambda page: page.find_element(By.ID, "result").get_attribute("data-top"))
        result = browser.find_element(By.ID, "result")
        labels = [element.text for element in result.find_elements(By.CLASS_NAME, "label")]
        values = [element.text for element in result.find_elements(By.CLASS_NAME, "value")]
        assert result.get_attribute("data-top") == expected.label
        assert labels == [name for name, _ in expected.topk]
        assert values == [f"{100 * p:.1f} %" for _, p in expected.topk]
        assert browser.find_element(By.ID, "preview").is_displayed()
        assert browser.find_element(By.ID, "error").text == ""
        if os.environ.get("SERVE_PAGE_SCREENSHOT"):  # how docs/serve-page.png is made
            browser.save_screenshot(os.environ["SERVE_PAGE_SCREENSHOT"])

        # A file that is not an image: the page shows the server's one-line reason.
        text = tmp_path / "notes.png"
        text.write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(text))
        WebDriverWait(browser, 60).until(lambda page: page.find_element(By.ID, "error").text)
        assert "not an image" in browser.find_element(By.ID, "error").text
