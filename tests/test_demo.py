"""``spherear demo``: the page driven in a real headless browser (Debian's chromium and its
driver) on the tiny pipeline's run, the page's refusals, and the Space that
``push-to-hub --space`` writes, run against a local export.

The browser test fails, instead of skipping, where ``SPHEREAR_CI`` is set (``.ci/run``
installs the browser); ``SPHEREAR_DEMO_SCREENSHOT=docs/demo.png`` keeps its screenshot,
which is the README's, taken with ``SPHEREAR_DEMO_CHECKPOINT=<quickstart>/runs/tiny`` (a
32x32 model whose classes 0 and 1 are disk and ring, as the tiny pipeline's)."""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import ROOT, one_line_error

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spherear(argv: list, cwd: Path, env: dict, log: Path, **popen) -> subprocess.Popen:
    """``spherear ARGV`` as a user runs it: a process of its own, with the default threads."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "spherear", *map(str, argv)], cwd=cwd,
                                env={**os.environ, **env}, stdout=out, stderr=out,
                                **popen)  # fmt: skip


def _wait_for_port(port: int, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and server.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on port {port}: {log.read_text()[-2000:]}")


def _browser():
    missing = [p for p in (CHROMIUM, DRIVER) if not Path(p).is_file()]
    if missing:
        message = f"no {' or '.join(missing)}: apt-get install chromium chromium-driver"
        if os.environ.get("SPHEREAR_CI"):
            pytest.fail(f"{message} (.ci/run installs them)")
        pytest.skip(message)
    pytest.importorskip("selenium", reason="the dev extra: pip install -e '.[dev]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)  # no driver download


def _png(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as answer:
        data = answer.read()
    assert data.startswith(b"\x89PNG"), url  # lossless, as downloaded
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class Page:
    """The demo page in the browser: its fields by the ids ``spherear.demo`` gives them."""

    def __init__(self, driver, url: str):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        driver.get(url)
        self.wait = WebDriverWait(driver, 120, poll_frequency=0.2)
        self.wait.until(lambda d: d.find_elements("css selector", "#sample"))

    def field(self, elem_id: str):
        return self.driver.find_element("css selector", f"#{elem_id} input")

    def type(self, elem_id: str, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.field(elem_id)
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE, text)

    def pick_class(self, typed: str, option: str | None) -> None:
        """Type into the searchable class list and click ``option`` (None: leave the typed
        text, as a user who presses the button on a name that is not in the list)."""
        from selenium.webdriver.common.keys import Keys

        self.type("class", typed)
        if option is not None:  # the one entry left by the search is the active one
            xpath = f"//ul[@role='listbox']//li[@aria-label='{option}']"
            self.wait.until(lambda d: d.find_elements("xpath", xpath))
            self.field("class").send_keys(Keys.ENTER)
            self.wait.until(lambda d: self.field("class").get_attribute("value") == option)
        self.driver.find_element("css selector", "h3").click()  # leaving it sets the value

    def command(self) -> str:
        return self.driver.find_element("css selector", "#command textarea").get_attribute("value")

    def sample(self) -> None:
        self.driver.find_element("css selector", "#sample").click()

    def images(self, count: int, command_has: str) -> tuple[list[str], str]:
        """The gallery's image URLs, once ``count`` are shown for the command naming
        ``command_has``, and that command."""

        def shown(d):
            images = d.find_elements("css selector", "#gallery img")
            if command_has in self.command() and len(images) == count:
                return [img.get_attribute("src") for img in images]
            return None

        return self.wait.until(shown), self.command()

    def error(self, words: str) -> str:
        """The message the page shows that holds ``words``; then it is closed."""
        xpath = f"//*[contains(normalize-space(text()), {words!r})]"
        found = self.wait.until(lambda d: [e for e in d.find_elements("xpath", xpath)
                                           if e.is_displayed()])  # fmt: skip
        return found[0].text


def _served_and_command_images(page: Page, tmp_path: Path, env: dict, count: int,
                               command_has: str):  # fmt: skip
    """The images the page shows, and those of the command it prints, run in ``tmp_path``."""
    urls, command = page.images(count, command_has)
    served = np.stack([_png(url) for url in urls])
    words = shlex.split(command)
    assert words[:2] == ["spherear", "sample"], command
    log = tmp_path / "sample.log"
    done = _spherear([*words[1:], "--out", "by-command"], tmp_path, env, log).wait(300)
    assert done == 0, log.read_text()[-2000:]
    with np.load(tmp_path / "by-command" / "samples.npz") as f:
        made = f["arr_0"]
    shutil.rmtree(tmp_path / "by-command")
    return served, made, command


@pytest.mark.slow
def test_the_page_samples_a_class_in_a_browser_as_its_command_does(pipeline, tmp_path):
    run = pipeline.restore("sample")  # a finished train-ar run, nothing sampled yet
    port = _free_port()
    started = time.time()
    driver = _browser()
    log = tmp_path / "demo.log"
    given = os.environ.get("SPHEREAR_DEMO_CHECKPOINT")
    argv = ["demo", "--port", port] + (["--checkpoint", Path(given).resolve()] if given else [])
    server = _spherear(argv, run, pipeline.env(), log)
    try:
        _wait_for_port(port, server, log)
        page = Page(driver, f"http://127.0.0.1:{port}/")
        page.pick_class("rin", "1: ring")  # searched by a part of its name
        page.type("seed", "3")
        page.sample()
        served, made, command = _served_and_command_images(
            page, tmp_path, pipeline.env(), 8, "--seed 3"
        )
        assert "--class 1" in command and "--n 8" in command, command
        # the images are there and are pictures: each varies, and they differ from each other
        assert served.shape == (8, 32, 32, 3)
        assert all(image.std() > 5 for image in served)
        assert len({image.tobytes() for image in served}) == 8
        assert np.array_equal(served, made)  # the printed command, byte for byte
        assert "ms per image" in page.driver.find_element("css selector", "#timing").text
        screenshot = os.environ.get("SPHEREAR_DEMO_SCREENSHOT")
        if screenshot:  # the whole page, with the class list closed
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(ROOT / screenshot))

        refused = [("seed", "-1", "seed -1: expected a whole number 0 or"),
                   ("steps", "0", "steps 0: expected a whole number 1 or")]  # fmt: skip
        for field, value, message in refused:
            page.type(field, value)
            page.sample()
            page.error(message)
            page.type(field, {"seed": "3", "steps": "2"}[field])
        page.pick_class("hexagon", None)
        page.sample()
        page.error("class 'hexagon' is not one of this model's")

        # the server still serves: another good request, other images
        page.pick_class("disk", "0: disk")
        page.type("seed", "5")
        page.sample()
        again, made, command = _served_and_command_images(
            page, tmp_path, pipeline.env(), 8, "--seed 5"
        )
        assert "--class 0" in command
        assert np.array_equal(again, made) and not np.array_equal(again, served)
    finally:
        driver.quit()
        server.send_signal(signal.SIGINT)  # Ctrl-C
        server.wait(60)
    print(f"browser test: {time.time() - started:.1f} s")


@pytest.mark.slow
def test_ctrl_c_stops_the_server_even_in_a_background_job(pipeline, tmp_path):
    """A script's background job starts with SIGINT ignored (as `.ci/run &` left the browser
    test's server running past its Ctrl-C); the page still stops on Ctrl-C."""
    run = pipeline.restore("sample")
    port, log = _free_port(), tmp_path / "demo.log"
    ignored = functools.partial(signal.signal, signal.SIGINT, signal.SIG_IGN)
    server = _spherear(["demo", "--port", port], run, pipeline.env(), log, preexec_fn=ignored)
    try:
        _wait_for_port(port, server, log)
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 0, log.read_text()[-2000:]
    finally:
        server.kill()


def test_without_gradio_the_command_names_the_extra(monkeypatch):
    from typer.testing import CliRunner

    from spherear.cli import app

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio fails, as uninstalled
    result = CliRunner().invoke(app, ["demo", "--checkpoint", "runs/none"])
    one_line_error(result, "spherear demo needs the demo extra: pip install 'spherear[demo]'")


def test_a_host_other_than_loopback_is_warned_of():
    from spherear.demo import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert not is_loopback("example.org")


@pytest.mark.slow
def test_the_space_is_listed_by_the_dry_run_and_its_app_serves_a_local_export(
    pipeline, cli, tmp_path, monkeypatch
):
    pytest.importorskip("gradio", reason="the demo extra: pip install -e '.[demo]'")
    from gradio_client import Client

    run = pipeline.restore("sample")
    token = "hf_" + "a1B2" * 9  # the shape of a token; it must appear nowhere
    env = {**pipeline.env(), "HF_TOKEN": token}
    argv = ["push-to-hub", "--repo-id", "me/tiny", "--space", "--dry-run", tmp_path / "preview"]
    done = cli.run(argv, run, env=env)
    assert done.code == 0, done.stderr[-2000:]
    assert "space files: README.md, app.py, requirements.txt" in done.stdout
    assert "me/tiny-demo" in done.stdout and token not in done.stdout + done.stderr
    space = tmp_path / "preview-space"
    assert sorted(p.name for p in space.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    for path in space.iterdir():
        assert token not in path.read_text()
    assert "sdk: gradio" in (space / "README.md").read_text()
    assert "spherear[demo]" in (space / "requirements.txt").read_text()
    assert not (tmp_path / "preview" / "app.py").exists()  # the model repo stays a model repo

    monkeypatch.setenv("SPHEREAR_MODEL", str(run / "runs" / "ar" / "export"))
    spec = importlib.util.spec_from_file_location("space_app", space / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    port = _free_port()
    app.demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        args = dict(choice="1: ring", n=2, seed=0, cfg=2.0, cfg_schedule="linear",
                    sampler="sde", steps=2, temperature=1.0, precision="fp32")  # fmt: skip
        # two requests at once: the second waits for the first, neither is lost
        jobs = [client.submit(**{**args, "seed": seed}, api_name="/sample") for seed in (0, 1)]
        results = [job.result(timeout=300) for job in jobs]
        firsts = []
        for seed, (gallery, timing, command) in zip((0, 1), results, strict=True):
            assert len(gallery) == 2 and f"--seed {seed}" in command and "--class 1" in command
            assert "ms per image" in timing
            images = [np.asarray(Image.open(item["image"]).convert("RGB")) for item in gallery]
            assert all(image.std() > 5 for image in images)
            firsts.append(images[0])
        assert not np.array_equal(*firsts)
    finally:
        app.demo.close()
