"""The explanation page and the API docs in a real headless Chromium, against a real service.

What the page shows is compared with what the API answers for the same question: the ranking
with ``POST /score``, the heatmap with ``GET /explain``, to the precision the page prints.
The docs must render from this service alone: every request the browser makes goes to it.

``AFM_UI_SCREENSHOT=docs/ui.png`` also saves the page of a version trained on what users
watched, a movie selected, as that PNG.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from service.settings import Settings
from tests.integration.serving.helpers import ServerThread, wait_until

pytestmark = pytest.mark.integration

PROBABILITY_DIGITS = 4  # as the page prints them (service/static/ui/app.js)
WEIGHT_DIGITS = 3
SELECTED_ROW = 2  # the page selects the best movie itself; the test picks the third


def wait_for(driver: WebDriver, css: str, timeout: float = 30):
    return WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.CSS_SELECTOR, css))


def console_errors(driver: WebDriver) -> list[dict]:
    """Console entries at error level since the last call (reading the log empties it)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(driver: WebDriver) -> list[str]:
    """URLs the browser requested since the last call, from Chromium's performance log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def shown(value: str, expected: float, digits: int) -> bool:
    """``value`` is ``expected`` printed to ``digits`` decimals (either rounding of a tie)."""
    return abs(float(value) - expected) <= 0.5 * 10**-digits + 1e-9


def save_screenshot(driver: WebDriver, target: Path) -> None:
    """The viewport as a 256-colour PNG: a third of the size, the same to the eye."""
    from PIL import Image  # Pillow comes with matplotlib

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.quantize(256, dither=Image.Dither.NONE).save(target, optimize=True)


@pytest.fixture(scope="module")
def page(browser: WebDriver, server: ServerThread) -> WebDriver:
    """The page as a person reaches it: the index at /, then its link."""
    browser.get(f"{server.url}/")
    browser.find_element(By.LINK_TEXT, "Explanation page").click()
    wait_for(browser, "body[data-state=ready]")
    return browser


def test_page_ranks_as_score_does(page: WebDriver, http: httpx.Client) -> None:
    feature_set = http.get("/feature-set").json()
    user_id = int(page.find_element(By.ID, "user-id").get_attribute("value"))
    candidates = [
        int(m)
        for m in re.split(r"[\s,]+", page.find_element(By.ID, "candidates").get_attribute("value"))
    ]
    top_k = int(page.find_element(By.ID, "top-k").get_attribute("value"))
    assert user_id == feature_set["sample_users"][0]
    assert candidates == [m["movie_id"] for m in feature_set["popular_movies"][:20]]

    answer = http.post(
        "/score", json={"user_id": user_id, "movie_ids": candidates, "top_k": top_k}
    ).json()["scores"]
    rows = page.find_elements(By.CSS_SELECTOR, "#ranking tbody tr")
    assert [int(row.get_attribute("data-movie-id")) for row in rows] == [
        s["movie_id"] for s in answer
    ]
    titles = {m["movie_id"]: m["title"] for m in feature_set["popular_movies"]}
    for row, score in zip(rows, answer, strict=True):
        probability = row.find_element(By.CSS_SELECTOR, ".probability").text
        assert shown(probability, score["probability"], PROBABILITY_DIGITS), (row.text, score)
        title = row.find_element(By.CSS_SELECTOR, ".title")
        assert title.text == titles[score["movie_id"]]
        assert title.get_attribute("title") == titles[score["movie_id"]]  # in full on hover
    status = page.find_element(By.ID, "status").text
    assert feature_set["source"].split(" at ")[0] in status
    assert " at /" in feature_set["source"] and "/" not in status  # no server path on the page
    assert console_errors(page) == []


def test_heatmap_shows_the_explain_weights(page: WebDriver, http: httpx.Client) -> None:
    row = page.find_elements(By.CSS_SELECTOR, "#ranking tbody tr")[SELECTED_ROW]
    movie_id = int(row.get_attribute("data-movie-id"))
    row.click()
    wait_for(page, f"#explanation[data-movie-id='{movie_id}'] #heatmap td[data-pair]")
    user_id = int(page.find_element(By.ID, "user-id").get_attribute("value"))
    explained = http.get("/explain", params={"user_id": user_id, "movie_id": movie_id}).json()

    cells = page.execute_script(
        "const head = document.querySelector('#heatmap thead tr').cells;"
        "return [...document.querySelectorAll('#heatmap td[data-pair]')].map(td => ["
        "  td.dataset.pair, td.textContent, td.title,"
        "  td.parentElement.cells[0].textContent, head[td.cellIndex].textContent])"
    )
    by_pair: dict[str, list[tuple[str, str]]] = {}
    for pair, text, title, row_label, column_label in cells:
        # Each cell sits on its pair's row and column ("age: 25-34" is field "age").
        axes = {row_label.split(":")[0], column_label.split(":")[0]}
        assert axes == set(pair.split("|")), (pair, row_label, column_label)
        by_pair.setdefault(pair, []).append((text, title))
    assert len(by_pair) == len(explained["pairs"])
    for pair in explained["pairs"]:
        shown_cells = by_pair["|".join(pair["fields"])]
        assert len(shown_cells) == 2  # the matrix is symmetric: (a, b) and (b, a)
        for text, title in shown_cells:
            assert shown(text, pair["weight"], WEIGHT_DIGITS), (pair, text)
            # Weights can all be equal (1 / pairs); contributions tell the pairs apart.
            contribution = re.search(r"contribution ([+−][\d.]+)", title).group(1)
            assert shown(contribution.replace("−", "-"), pair["contribution"], 3), (pair, title)
    blank = page.find_elements(By.CSS_SELECTOR, "#heatmap td.empty")
    assert len(blank) == len(explained["features"])  # the diagonal
    assert all(cell.text == "" for cell in blank)

    labels = [f"{f['field']}: {f['label']}" for f in explained["features"]]
    axis = page.execute_script(
        "return [...document.querySelectorAll('#heatmap th.row')].map(th => th.textContent)"
    )
    assert axis == labels

    terms = page.execute_script(
        "return [...document.querySelectorAll('#terms tr[data-term]')]"
        ".map(tr => [tr.dataset.term, tr.dataset.key, Number(tr.dataset.value)])"
    )
    assert [t[1] for t in terms if t[0] == "linear"] == list(explained["linear"])
    assert {t[1] for t in terms if t[0] == "pair"} == {
        "|".join(p["fields"]) for p in explained["pairs"]
    }
    check = page.find_element(By.ID, "check")
    assert check.get_attribute("data-agrees") == "true"
    assert f"{explained['logit']:+.3f}".replace("-", "−") in check.text

    user = {
        item.get_attribute("data-field"): item.find_element(By.TAG_NAME, "dd").text
        for item in page.find_elements(By.CSS_SELECTOR, "#user-features [data-field]")
    }
    for feature in explained["features"]:
        if feature["field"] in user:
            assert user[feature["field"]].startswith(feature["label"])
    assert user  # the user's fields are shown
    assert console_errors(page) == []


def test_a_movie_nothing_is_known_about_is_listed_last_and_says_so(page: WebDriver) -> None:
    page.find_element(By.ID, "candidates").send_keys(", 987654")  # no model id, no features
    top_k = page.find_element(By.ID, "top-k")
    top_k.clear()
    top_k.send_keys("50")  # every candidate
    page.find_element(By.ID, "score-button").click()
    wait_for(page, "body[data-state=ready]")
    rows = page.find_elements(By.CSS_SELECTOR, "#ranking tbody tr")
    assert rows[-1].get_attribute("data-movie-id") == "987654"
    assert "unknown: no features, not in training" in rows[-1].text
    assert all("unknown" not in row.text for row in rows[:-1])
    assert console_errors(page) == []


def test_errors_show_the_problem_detail(page: WebDriver, http: httpx.Client) -> None:
    user_box = page.find_element(By.ID, "user-id")
    user_box.clear()
    user_box.send_keys("-1")
    page.find_element(By.ID, "score-button").click()
    error = wait_for(page, "body[data-state=error] #error")
    candidates = [m["movie_id"] for m in http.get("/feature-set").json()["popular_movies"][:3]]
    problem = http.post("/score", json={"user_id": -1, "movie_ids": candidates}).json()
    assert problem["detail"] in error.text
    assert page.find_elements(By.CSS_SELECTOR, "#ranking tbody tr") == []
    # The only console error is Chromium's note of the 422 answer itself.
    assert all("422" in entry["message"] for entry in console_errors(page))

    user_box.clear()
    user_box.send_keys("1")
    page.find_element(By.ID, "candidates").send_keys(", x1")
    page.find_element(By.ID, "score-button").click()
    assert "“x1” is not a movie id" in page.find_element(By.ID, "error").text


def test_docs_render_offline(browser: WebDriver, server: ServerThread) -> None:
    requested_urls(browser)  # forget the earlier pages' requests
    browser.get(f"{server.url}/docs")
    operation = wait_for(browser, ".swagger-ui .opblock-summary-path[data-path='/score']")
    assert operation.text.startswith("/score")
    urls = requested_urls(browser)
    assert any(u.endswith("/static/docs/swagger-ui-bundle.js") for u in urls)
    local = (server.url, f"blob:{server.url}/", "data:")  # Swagger UI makes blob: URLs
    assert [u for u in urls if not u.startswith(local)] == []
    assert console_errors(browser) == []


def test_metrics_name_the_page_routes(http: httpx.Client) -> None:
    """Run after the pages above were loaded: each of their requests is under its route."""
    routes = set(
        re.findall(
            r'afm_request_duration_seconds_count\{[^}]*route="([^"]*)"', http.get("/metrics").text
        )
    )
    assert {"/", "/ui", "/static/ui", "/static/docs", "/docs", "/openapi.json"} <= routes
    assert "unmatched" not in routes


def test_page_shows_what_the_user_watched_and_what_the_candidate_attends_to(
    browser: WebDriver, history_server: ServerThread
) -> None:
    """A version trained on what users watched: the user panel lists the watched movies,
    most recent first; a candidate's explanation lists them by its attention, as /explain."""
    browser.get(f"{history_server.url}/ui")
    wait_for(browser, "body[data-state=ready]")
    user_id = int(browser.find_element(By.ID, "user-id").get_attribute("value"))
    row = browser.find_elements(By.CSS_SELECTOR, "#ranking tbody tr")[SELECTED_ROW]
    movie_id = int(row.get_attribute("data-movie-id"))
    row.click()
    wait_for(browser, f"#explanation[data-movie-id='{movie_id}'] #watched-attention li")
    params = {"user_id": user_id, "movie_id": movie_id}
    explained = httpx.get(f"{history_server.url}/explain", params=params).json()
    watched = explained["watched"]
    assert len(watched) > 3

    by_recency = browser.execute_script(
        "return [...document.querySelectorAll('#user-features [data-field=watched] li')]"
        ".map(li => Number(li.dataset.movieId))"
    )
    assert by_recency == [m["movie_id"] for m in sorted(watched, key=lambda m: m["position"])]
    when = next(f for f in explained["features"] if f["field"] == "last_watched")
    shown_when = browser.find_element(
        By.CSS_SELECTOR, "#user-features [data-field=last_watched] dd"
    )
    assert when["label"].endswith(" ago") and shown_when.text.startswith(when["label"])
    shown_watched = browser.execute_script(
        "return [...document.querySelectorAll('#watched-attention li')].map(li =>"
        "  [Number(li.dataset.movieId), li.querySelector('.weight').textContent,"
        "   li.querySelector('.title').textContent])"
    )
    assert [m for m, _, _ in shown_watched] == [m["movie_id"] for m in watched]
    for (_, weight, title), movie in zip(shown_watched, watched, strict=True):
        assert shown(weight, movie["weight"], WEIGHT_DIGITS) and title == movie["title"]
    label = next(f["label"] for f in explained["features"] if f["field"] == "watched")
    axis = browser.execute_script(
        "return [...document.querySelectorAll('#heatmap th.row')].map(th => th.textContent)"
    )
    assert f"watched: {label}" in axis and len(axis) == len(explained["features"])
    assert "watched" not in browser.find_element(By.ID, "movie-facts").text  # the user's
    assert console_errors(browser) == []

    if target := os.environ.get("AFM_UI_SCREENSHOT"):
        save_screenshot(browser, Path(target))


def test_page_asks_for_an_api_key_once_and_keeps_it(
    browser: WebDriver, trained_model_dir: Path, redis_url: str, loaded_prefix: str
) -> None:
    """Last: it leaves the browser on another server. With keys configured, the page's
    first call gets 401; it asks for a key, ranks with it, and asks no more in this tab."""
    settings = Settings(
        model_dir=trained_model_dir,
        redis_url=redis_url,
        redis_prefix=loaded_prefix,
        api_keys="ui-key-1",
    )
    with ServerThread(settings) as keyed:
        wait_until(lambda: httpx.get(f"{keyed.url}/readyz").status_code == 200, what="ready")
        browser.get(f"{keyed.url}/ui")
        WebDriverWait(browser, 30).until(expected_conditions.alert_is_present())
        prompt = browser.switch_to.alert
        assert "API key" in prompt.text
        prompt.send_keys("ui-key-1")
        prompt.accept()
        wait_for(browser, "body[data-state=ready]")
        assert browser.find_elements(By.CSS_SELECTOR, "#ranking tbody tr")
        stored = browser.execute_script("return sessionStorage.getItem('afm-ctr-api-key')")
        assert stored == "ui-key-1"

        browser.get(f"{keyed.url}/ui")  # the same tab: the key is still there
        wait_for(browser, "body[data-state=ready]")
        assert not expected_conditions.alert_is_present()(browser)
        assert all("401" in entry["message"] for entry in console_errors(browser))
