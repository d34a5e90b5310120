"""A real browser over the course: Debian's chromium, driven by Playwright (no browser download).

    python scripts/browser_check.py [--require] [--notebook 00_why_quantize.ipynb]

1. Starts the README's course command, ``make course`` (with PORT= and DIR= so that it serves a fresh learner
   folder under build/ on a free port, and JUPYTER_TOKEN so that the URL is known), and waits for the URL it prints.
2. Opens that URL in headless chromium: JupyterLab shows START_HERE.ipynb; then opens a learner notebook, runs
   *Run ▸ Run All Cells* from the menu, and waits until the notebook's last output appears in the page — with the
   exercise still open, as a learner first meets it — and checks that no cell shows an error.
3. Serves build/site/ (``make site``; built here first if missing) on another free port, loads its index, checks
   that it links every course notebook, follows the link to the capstone and finds a rendered output there.

Without /usr/bin/chromium it prints how to install it and exits 0; ``--require`` (``make test BROWSER=required``,
as ``.ci/run`` runs it) makes that an error. Screenshots of each step go to build/browser-check/.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# as root, with this machine's closed network: no sandbox, no background connections, a fresh profile
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 300
UI_TIMEOUT_S = 90  # JupyterLab's page, a notebook, a kernel start, a menu


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_output_line(notebook: Path) -> str:
    """The last line of text the notebook's last code cell printed (its committed output), review questions left
    out: in the learner copy their answers are None, so they print that the review is open."""
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code" and c.get("outputs")
             and "# ANSWER" not in "".join(c["source"])]
    for out in reversed(cells[-1]["outputs"]):
        text = "".join(out.get("text", "")) or "".join(out.get("data", {}).get("text/plain", ""))
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    raise SystemExit(f"{notebook.name}: its last code cell has no text output to look for")


def _start_course(port: int, token: str, folder: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env |= {"JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(folder.parent / "runtime")}
    with log.open("w") as out:
        return subprocess.Popen(["make", "--no-print-directory", "course", f"PORT={port}", f"DIR={folder}"], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_url(server: subprocess.Popen, log: Path, port: int, token: str) -> str:
    """The URL the server prints (it masks a token given by JUPYTER_TOKEN as '...': the known one goes in)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    prefix = f"http://127.0.0.1:{port}/lab/tree/START_HERE.ipynb?token="
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if prefix in text:
            return prefix + token
        if server.poll() is not None:
            raise SystemExit(f"make course exited with {server.returncode} before serving:\n{text[-3000:]}")
        time.sleep(1)
    raise SystemExit(f"make course printed no URL in {START_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def check_jupyterlab(browser, url: str, notebook: str, expected: str, shots: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_S * 1000)
    page.goto(url)
    page.locator(".jp-RenderedMarkdown h1", has_text="Start here").first.wait_for()
    page.screenshot(path=shots / "1_start_here.png")
    base = url.split("/lab/")[0]
    page.goto(f"{base}/lab/tree/{notebook}")
    page.locator(".jp-Notebook .jp-Cell >> visible=true").first.wait_for()
    page.locator(".jp-StatusBar-Widget", has_text="| Idle").first.wait_for()  # the kernel has started
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    started = time.monotonic()
    page.locator(".jp-OutputArea-output", has_text=expected).first.wait_for(timeout=RUN_TIMEOUT_S * 1000)
    seconds = time.monotonic() - started
    page.screenshot(path=shots / "2_notebook_ran.png", full_page=False)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", has_text="Traceback")
    if errors.count():
        raise SystemExit(f"{notebook}: a cell shows a traceback in JupyterLab:\n{errors.first.inner_text()[:2000]}")
    still_open = page.locator(".jp-OutputArea-output", has_text="is still open").count()
    print(f"✔ JupyterLab from `make course`: {notebook} ran to its last output in {seconds:.0f} s "
          f"(“{expected}”); exercise checkers saying 'still open': {still_open}")
    page.close()


def check_site(browser, site: Path, notebooks: list[Path], shots: Path) -> None:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/index.html")
        hrefs = page.eval_on_selector_all("table a", "els => els.map(e => e.getAttribute('href'))")
        missing = [p.stem for p in notebooks if f"{p.stem}.html" not in hrefs]
        if missing:
            raise SystemExit(f"the site's index does not link {missing}")
        page.screenshot(path=shots / "3_site_index.png")
        last = notebooks[-1]
        page.locator(f"table a[href='{last.stem}.html']").first.click()
        page.wait_for_url(f"**/{last.stem}.html")
        outputs = page.locator(".cell_output").count()
        if outputs == 0:
            raise SystemExit(f"the site's {last.stem} page shows no cell output")
        page.screenshot(path=shots / "4_site_notebook.png")
        print(f"✔ static site: the index links all {len(notebooks)} notebooks; {last.stem} shows {outputs} outputs")
        page.close()
    finally:
        httpd.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require", action="store_true", help="fail, not skip, without /usr/bin/chromium")
    parser.add_argument("--notebook", default="00_why_quantize.ipynb", help="the learner notebook to run")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        msg = f"no {CHROMIUM}: install Debian's chromium (apt-get install chromium) to run the browser check"
        if args.require:
            print(f"error: {msg}", file=sys.stderr)
            return 1
        print(f"skipped: {msg}")
        return 0
    from playwright.sync_api import sync_playwright

    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not (ROOT / "notebooks" / args.notebook).is_file():
        print(f"error: --notebook {args.notebook}: no such course notebook", file=sys.stderr)
        return 2
    expected = _last_output_line(ROOT / "notebooks" / args.notebook)
    site = ROOT / "build" / "site"
    if not (site / "index.html").is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_site.py")], check=True)
    work = ROOT / "build" / "browser-check"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port, token = _free_port(), secrets.token_hex(16)
    log = work / "course.log"
    server = _start_course(port, token, work / "student", log)
    try:
        url = _wait_for_url(server, log, port, token)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=CHROMIUM_ARGS)  # Playwright gives it a fresh, empty profile
            try:
                check_jupyterlab(browser, url, args.notebook, expected, work)
                check_site(browser, site, notebooks, work)
            finally:
                browser.close()
    finally:
        _stop(server)
    print(f"screenshots: {work.relative_to(ROOT)}/*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
