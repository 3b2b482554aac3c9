"""`ndvq report`: one self-contained HTML page, checked in headless Chromium over the DevTools protocol."""

import base64
import json
import os
from pathlib import Path
import re
import shutil
import signal
import subprocess
import time
from typing import Any
import urllib.request

import pytest
import soundfile as sf

from ndvq import Codec
from ndvq.cli import main

CHROMIUM = shutil.which("chromium")
# Resolves, per <audio>, once its metadata has loaded, it has failed, or 10 s have passed.
AUDIO_CHECK = """
Promise.all(Array.from(document.querySelectorAll("audio"), audio => new Promise(resolve => {
  const report = () => resolve({
    readyState: audio.readyState, error: audio.error && audio.error.code, duration: audio.duration,
    canPlay: audio.canPlayType(audio.src.slice(5, audio.src.indexOf(";"))),
  });
  if (audio.readyState >= 1 || audio.error) report();
  audio.addEventListener("loadedmetadata", report);
  audio.addEventListener("error", report);
  setTimeout(report, 10000);
})))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory, speech) -> Path:
    """An eval results directory: a tiny model at 2 and 8 kbps on three 0.5 s clips, and its codebook usage."""
    wav, rate = speech
    folder = tmp_path_factory.mktemp("report")
    (folder / "refs").mkdir()
    for i in range(3):
        sf.write(folder / "refs" / f"u{i}.wav", wav[0, i * 8000 : (i + 1) * 8000], rate)
    Codec.from_preset("tiny").save(folder / "tiny")
    common = [str(folder / "refs"), "--out", str(folder / "results"), "--model", f"tiny={folder / 'tiny'}"]
    assert main(["eval", *common, "-b", "2", "8", "--metrics", "mel_distance", "si_sdr"]) == 0
    assert main(["eval", *common, "-b", "8", "--usage"]) == 0
    return folder / "results"


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page: commands, and the events that arrive meanwhile."""

    def __init__(self, url: str) -> None:
        import websocket

        self.socket = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self.last_id = 0

    def _receive(self) -> dict[str, Any]:
        message = json.loads(self.socket.recv())
        if "method" in message:
            self.events.append(message)
        return message

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        self.socket.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while (message := self._receive()).get("id") != self.last_id:
            pass
        if "error" in message:
            raise RuntimeError(f"{method}: {message['error']}")
        return message["result"]

    def wait_for(self, method: str) -> dict[str, Any]:
        while not any(event["method"] == method for event in self.events):
            self._receive()
        return next(event["params"] for event in self.events if event["method"] == method)


def _stop(process: subprocess.Popen) -> None:
    """End Chromium and the processes it started (its own process group)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def page(tmp_path, request) -> DevTools:
    """A blank page in a fresh headless Chromium, killed when the test ends."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed (CI installs Debian's chromium)")
    pytest.importorskip("websocket", reason="websocket-client (the dev extra) drives Chromium")
    profile = tmp_path / "chromium-profile"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", "--remote-debugging-port=0", "--window-size=1280,1600"]
    process = subprocess.Popen(
        [CHROMIUM, *flags, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    request.addfinalizer(lambda: _stop(process))
    deadline = time.monotonic() + 30
    while not (targets := _page_targets(profile)):
        assert process.poll() is None and time.monotonic() < deadline, "Chromium did not open its DevTools port"
        time.sleep(0.1)
    devtools = DevTools(targets[0]["webSocketDebuggerUrl"])
    request.addfinalizer(devtools.socket.close)
    return devtools


def _page_targets(profile: Path) -> list[dict[str, Any]]:
    """The page targets Chromium lists on the port it wrote to DevToolsActivePort; [] until it is up."""
    try:
        port = int((profile / "DevToolsActivePort").read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
            return [target for target in json.load(response) if target["type"] == "page"]
    except (OSError, ValueError, IndexError):
        return []


def test_report_is_one_self_contained_page(results, capsys) -> None:
    assert main(["report", str(results)]) == 0
    assert capsys.readouterr().out.strip() == str(results / "report.html")
    html = (results / "report.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert links and all(link.startswith(("data:audio/flac;base64,", "data:image/png;base64,")) for link in links)
    assert html.count("<audio ") == 2 * 3 * 2  # 2 bitrates x 3 files x (original, tiny)
    assert html.count('class="spectrogram"') == 12 and "Codebook usage at 8 kbps" in html
    assert "mel_distance ↓" in html and "si_sdr ↑" in html and "ViSQOL mapper: polynomial" in html
    assert "Robustness" not in html


def test_report_without_summary_is_one_line_error(tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no summary.json" in error
    assert not (tmp_path / "report.html").exists()


def test_report_loads_and_plays_in_chromium(results, page, tmp_path) -> None:
    assert main(["report", str(results), "--out", str(tmp_path / "page.html")]) == 0
    for domain in ("Runtime", "Log", "Page"):
        page.send(f"{domain}.enable")
    page.send("Page.navigate", url=(tmp_path / "page.html").as_uri())
    page.wait_for("Page.loadEventFired")
    audio = page.send("Runtime.evaluate", expression=AUDIO_CHECK, awaitPromise=True, returnByValue=True)
    players = audio["result"]["value"]
    assert len(players) == 12
    for player in players:
        assert player["error"] is None and player["readyState"] >= 1 and player["canPlay"] in ("maybe", "probably")
        assert player["duration"] == pytest.approx(0.5, abs=0.05)
    widths = page.send(
        "Runtime.evaluate", expression="Array.from(document.images, i => i.naturalWidth)", returnByValue=True
    )["result"]["value"]
    assert len(widths) == 13 and all(width > 0 for width in widths)  # 12 spectrograms and the usage plot
    screenshot = base64.b64decode(page.send("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "report.png").write_bytes(screenshot)
    assert screenshot.startswith(b"\x89PNG") and (tmp_path / "report.png").stat().st_size > 20000
    errors = [
        event
        for event in page.events
        if event["method"] == "Runtime.exceptionThrown"
        or (event["method"] == "Runtime.consoleAPICalled" and event["params"]["type"] == "error")
        or (event["method"] == "Log.entryAdded" and event["params"]["entry"]["level"] == "error")
    ]
    assert not errors
