"""The page of ``vitx serve`` in Debian's chromium, driven by Playwright against a real uvicorn on 127.0.0.1: upload,
two methods, two maps; another class, its maps; a garbage upload's error shown; a method that does not apply greyed
out with its reason; and no request to any host but the server."""
from __future__ import annotations

from pathlib import Path

import pytest

import vitx
from vitx.errors import VitxError
from vitx.registry import get_method


CHROMIUM = Path("/usr/bin/chromium")   # vitx.serve.background.CHROMIUM, without importing the extra
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed: apt-get install chromium")
SAMPLE = Path(vitx.__file__).parent / "data" / "samples" / "1_circle.png"
WAIT_MS = 45_000
IMAGES_LOADED = """n => { const images = [...document.querySelectorAll('.map-card img')];
  return images.length >= n && images.every(image => image.complete && image.naturalWidth > 0); }"""


@pytest.fixture(scope="module")
def origin():
    from vitx.serve.app import create_app
    from vitx.serve.background import serving
    with serving(create_app()) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    from vitx.serve.background import CHROMIUM_ARGS
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, origin):
    """The page, loaded, on shapes-vit; ``page.requests`` lists every URL it asked for, ``page.errors`` every
    uncaught error of its script."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.requests, page.errors = [], []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(origin + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.select_option("#model", "shapes-vit")
    page.wait_for_selector("#methods input[data-method=generic-attention]")
    yield page
    context.close()


def upload(page, name: str, data: bytes):
    page.set_input_files("#file", files=[{"name": name, "mimeType": "image/png", "buffer": data}])


def test_explain_two_methods_then_another_class(page, origin):
    upload(page, "circle.png", SAMPLE.read_bytes())
    page.wait_for_function("document.querySelectorAll('#predictions li').length === 5")
    first = page.locator("#predictions li").nth(0).get_attribute("data-class")
    assert first == "circle"
    for box in page.locator("#methods input[data-method]:checked").all():
        box.uncheck()
    page.check("input[data-method=generic-attention]")
    page.check("input[data-method=raw-attention]")
    page.click("#explain")
    page.wait_for_function(IMAGES_LOADED, arg=2)
    cards = page.locator(".map-card")
    assert sorted(cards.evaluate_all("cards => cards.map(card => card.dataset.method)")) == [
        "generic-attention", "raw-attention"]
    assert all("circle" in text for text in page.locator(".map-card .target").all_inner_texts())
    assert page.locator(".map-card a", has_text="NPY").count() == 2
    assert page.locator("#command").inner_text().startswith("vitx explain ")
    assert "generic-attention" in page.locator("#command").inner_text()
    assert page.locator("#legend").is_visible()

    other = page.locator("#predictions li").nth(1)
    name = other.get_attribute("data-class")
    other.locator("button").click()
    page.wait_for_function("name => { const t = [...document.querySelectorAll('.map-card .target')];"
                           " return t.length === 2 && t.every(p => p.textContent === 'class: ' + name); }", arg=name)
    page.wait_for_function(IMAGES_LOADED, arg=2)
    assert page.locator(".map-card").count() == 2
    assert page.locator("#error").is_hidden()
    assert_clean(page, origin)


def test_an_image_dropped_on_the_page_is_predicted(page, origin):
    page.evaluate("""async url => {
        const blob = await (await fetch(url)).blob();
        const data = new DataTransfer();
        data.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
        document.querySelector('#drop').dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true}));
    }""", "/api/samples/18_star.png")
    page.wait_for_function("document.querySelectorAll('#predictions li').length === 5")
    assert page.locator("#chosen-name").inner_text() == "dropped.png"
    assert page.locator("#predictions li").nth(0).get_attribute("data-class") == "star"
    assert_clean(page, origin)


def test_garbage_upload_shows_the_error(page, origin):
    with page.expect_response(lambda response: response.url.endswith("/api/predictions")) as answer:
        upload(page, "garbage.png", b"this is not an image, only text pretending to be one")
    response = answer.value
    assert 400 <= response.status < 500
    message = response.json()["error"]
    page.wait_for_selector("#error:not([hidden])")
    assert page.locator("#error").inner_text() == message
    assert message and "\n" not in message
    assert_clean(page, origin)


def test_a_method_that_does_not_apply_is_greyed_out_with_its_reason(page, origin):
    model = vitx.load_model("shapes-vit")
    with pytest.raises(VitxError) as refused:
        get_method("nest-cam").check_model(model, model.layout(model.preprocess([str(SAMPLE)])))
    family = page.locator("#methods .family[data-family=nest]")
    assert family.get_attribute("open") is None   # a family none of whose methods applies starts folded
    family.locator("summary").click()
    row = family.locator(".method[data-method=nest-cam]")
    assert row.locator("input[data-method]").is_disabled()
    reason = row.locator(".reason")
    assert reason.is_visible()
    assert reason.text_content() == str(refused.value)
    assert row.get_attribute("title") == str(refused.value)
    assert page.locator("#methods input[data-method=generic-attention]").is_enabled()
    assert_clean(page, origin)


def assert_clean(page, origin: str):
    """The script raised nothing, and every request went to the server (a blob: URL of the page's own upload preview
    is the page's, no host's)."""
    assert not page.errors, f"the page's script failed: {page.errors}"
    assert page.requests, "the page made no request at all"
    strangers = [url for url in page.requests
                 if not (url.startswith(origin + "/") or url.startswith(f"blob:{origin}/"))]
    assert not strangers, f"requests to other hosts: {strangers}"
