"""The page's time to first map, in Debian's chromium against ``vitx serve`` (a real server process on 127.0.0.1):
a fresh browser context opens the page, picks the model and a sample, waits for its predictions, ticks the method and
presses Explain; timed until the first map has loaded. The first run after the server starts includes the model's
loading on first use; the warm runs follow it. Run: ``OMP_NUM_THREADS=1 python benchmarks/serve_page.py``."""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

from vitx.serve.background import CHROMIUM, CHROMIUM_ARGS

FIRST_MAP = """() => { const image = document.querySelector('.map-card img');
  return image !== null && image.complete && image.naturalWidth > 0; }"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(origin: str, server: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit("vitx serve exited before it answered")
        try:
            urllib.request.urlopen(origin + "/api/samples", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("vitx serve did not answer in time")


def first_map(browser, origin: str, model: str, sample: str, method: str) -> tuple[float, float]:
    """Seconds from opening the page to the first map, and from pressing Explain to it."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(300_000)
    start = time.perf_counter()
    page.goto(origin + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.select_option("#model", model)
    page.wait_for_selector(f"#methods input[data-method={method}]")
    page.click(f"#samples [data-sample='{sample}']")
    page.wait_for_selector("#predictions li")
    for box in page.locator("#methods input[data-method]:checked").all():
        box.uncheck()
    page.check(f"#methods input[data-method={method}]")
    pressed = time.perf_counter()
    page.click("#explain")
    page.wait_for_function(FIRST_MAP)
    done = time.perf_counter()
    context.close()
    return done - start, done - pressed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-vit")
    parser.add_argument("--method", default="generic-attention")
    parser.add_argument("--sample", default="18_star.png")
    parser.add_argument("--repeats", type=int, default=5, help="warm runs after the first")
    args = parser.parse_args()
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "vitx.cli", "serve", "--port", str(port)], env=os.environ)
    try:
        wait_until_up(origin, server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
            runs = [first_map(browser, origin, args.model, args.sample, args.method)
                    for _ in range(1 + args.repeats)]
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    (cold_page, cold_explain), warm = runs[0], runs[1:]
    print(f"{args.model}, {args.method}, {args.sample}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"first run (model loaded on first use): page opened to first map {cold_page:.2f} s, "
          f"Explain to first map {cold_explain:.2f} s")
    print(f"warm runs ({len(warm)}), median: page opened to first map "
          f"{statistics.median(run[0] for run in warm):.2f} s, Explain to first map "
          f"{statistics.median(run[1] for run in warm):.3f} s "
          f"(range {min(run[1] for run in warm):.3f} to {max(run[1] for run in warm):.3f} s)")


if __name__ == "__main__":
    main()
