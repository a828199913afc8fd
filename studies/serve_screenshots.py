"""Screenshots of the page of ``vitx serve`` for the README, taken in Debian's chromium (Playwright drives it, nothing
is downloaded) against a real uvicorn on 127.0.0.1: a classifier with three methods and a detector with one map per
object. Run: ``python studies/serve_screenshots.py [--out docs/serve]`` (needs the [serve] and [test] extras)."""
from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

from vitx.serve.app import create_app
from vitx.serve.background import CHROMIUM, CHROMIUM_ARGS, serving

VIEWPORT = {"width": 1360, "height": 980}
SHOTS = [   # file, model, sample, text, methods, which prediction to click (None: Explain as is)
    ("page.png", "shapes-vit", "18_star.png", None, ["generic-attention", "rollout", "integrated-gradients",
                                                    "attention-gradcam"], None),
    ("page_detector.png", "shapes-detr", None, None, ["generic-attention", "raw-attention"], None),
]


def shoot(page, origin: str, out: Path, file: str, model: str, sample: str | None, text: str | None,
          methods: list[str], click: int | None) -> None:
    page.goto(origin + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.select_option("#model", model)
    page.wait_for_selector(f"#methods input[data-method={methods[0]}]")
    if text is not None:
        page.fill("#text", text)
    button = page.locator(f"#samples [data-sample='{sample}']" if sample else "#samples [data-sample]").first
    button.click()
    page.wait_for_selector("#predictions li, #objects li")
    for box in page.locator("#methods input[data-method]:checked").all():
        box.uncheck()
    for name in methods:
        page.check(f"#methods input[data-method={name}]")
    if click is None:
        page.click("#explain")
    else:
        page.locator("#predictions li button").nth(click).click()
    page.wait_for_function("n => { const images = [...document.querySelectorAll('.map-card img')]; return images"
                           ".length >= n && images.every(image => image.complete && image.naturalWidth > 0); }",
                           arg=len(methods), timeout=300_000)
    page.mouse.move(0, 0)
    page.screenshot(path=str(out / file), full_page=True)
    print("wrote", out / file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/serve"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with serving(create_app()) as origin, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        page = browser.new_page(viewport=VIEWPORT)
        page.on("pageerror", lambda error: print("page error:", error))
        for shot in SHOTS:
            shoot(page, origin, args.out, *shot)
        browser.close()


if __name__ == "__main__":
    main()
