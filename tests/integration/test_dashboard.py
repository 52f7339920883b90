"""The status page in a real browser (headless Chromium) while events flow through a worker.

The page is served by :class:`pipeline.dashboard.Dashboard` over the worker's Redis
namespace and ``/metrics``; deletions go through the real broker. The browser loads the
page, its charts must plot the values Redis and the metrics hold (read from the charts'
data and the DOM, never from a screenshot), the receipt lookup must find a request the
worker applied a moment earlier (by request id, and by subject id hashed in the page),
and every request the browser made must have gone to the page's own loopback address.
Degradation: a metrics target that does not answer and a Redis that does not answer are
both named on the page.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.error
import urllib.request
import uuid

import pytest
from sklearn.datasets import load_digits

from pipeline.config import Settings
from pipeline.dashboard import Dashboard
from pipeline.sdk import DeletionClient
from pipeline.store import Store
from pipeline.training import Table, train_model

MODEL = "digits-page"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _subject(i: int) -> str:
    return f"person-{i % 120}@example.org"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM and CHROMEDRIVER, (
        "chromium and chromedriver are missing: `make tools` installs Debian's chromium and "
        "chromium-driver packages"
    )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[dev]'")

    os.environ.setdefault("SE_AVOID_STATS", "true")  # selenium never reports usage
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,2200",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def live(pipeline_factory):
    """A worker with a trained model, and the page over its namespace and metrics."""
    with pipeline_factory("dashboard", metrics_interval=0.5) as pipe:
        X, y = load_digits(return_X_y=True)
        train_model(
            pipe.store,
            MODEL,
            Table(
                X=X / 16.0,
                y=y,
                subjects=[_subject(i) for i in range(len(y))],
                ids=[f"r{i}" for i in range(len(y))],
            ),
            params={"lam": 1e-3, "sigma": 1.0, "fit_intercept": True},
            holdout=0.2,
        )
        settings = Settings(dashboard_refresh=0.5)
        with Dashboard(pipe.store, settings, title="unlearn test") as page:
            yield pipe, page


def _js(driver, script: str):
    return driver.execute_script(script)


def _chart(driver, chart_id: str) -> list[list]:
    """The data arrays a uPlot chart plots (x first), from the page's registry."""
    return _js(
        driver,
        f"const c = window.unlearnDashboard.charts[{json.dumps(chart_id)}];"
        "return c ? c.chart.data.map((s) => Array.from(s)) : null;",
    )


def _canvas_drawn(driver, chart_id: str) -> bool:
    """The chart's canvas exists, has a size, and holds painted pixels."""
    return bool(
        _js(
            driver,
            f"const c = document.querySelector('#{chart_id} canvas');"
            "if (!c || !c.width || !c.height) return false;"
            "const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let painted = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) painted++;"
            "return painted > 100;",
        )
    )


def _lookup(driver, by: str, text: str) -> None:
    driver.find_element("css selector", f"input[name=by][value={by}]").click()
    box = driver.find_element("id", "lookup-id")
    box.clear()
    box.send_keys(text)
    _js(driver, "delete document.getElementById('lookup-result').dataset.found;")
    driver.find_element("id", "lookup-go").click()


def test_the_page_follows_the_stream_and_answers_a_receipt_lookup(live, browser) -> None:
    pipe, page = live
    store = pipe.store
    browser.get(page.url)
    pipe.wait_for(
        lambda: int(_js(browser, "return document.body.dataset.refreshes || 0")) >= 1,
        30,
        "the page's first refresh",
    )
    assert _js(browser, "return document.title") == "unlearn test: status"

    # events flow: deletions by subject through the broker, applied by the worker
    request_ids = [f"wave-{uuid.uuid4().hex[:8]}-{k}" for k in range(6)]
    with DeletionClient(pipe.bootstrap, pipe.prefix) as client:
        for k, rid in enumerate(request_ids):
            client.request(subject_id=_subject(k), reason="test: erasure", request_id=rid)

    def all_final() -> bool:
        return all((rs := store.receipts.get(r)) and rs[0].status.final for r in request_ids)

    pipe.wait_for(all_final, 90, "the six deletions applied")
    meta = store.models.metadata(MODEL)
    assert meta.version > 1

    # the model's card and charts show the live version, records and certificate
    card = f"#model-{MODEL}"

    def shown_version() -> int | None:
        return _js(
            browser,
            f"const v = document.querySelector('{card} .version');"
            "return v ? Number(v.dataset.version) : null;",
        )

    pipe.wait_for(lambda: shown_version() == meta.version, 30, "the page to show the new version")
    assert int(_js(browser, f"return document.querySelector('{card} .records').textContent")) == (
        meta.n_records
    )
    versions, certificates, budgets = _chart(browser, f"chart-{MODEL}-certificate")
    history = {m.version: m for m in store.models.history(MODEL)}
    # every version Redis holds, and those the page saw before an erasure retired them
    assert versions[-1] == meta.version and set(history) <= set(versions)
    assert certificates[-1] == pytest.approx(meta.certificate)
    assert budgets[-1] == pytest.approx(meta.budget)
    score = _chart(browser, f"chart-{MODEL}-score")
    assert score[1][-1] == pytest.approx(meta.holdout_metrics["accuracy"])
    assert len(score) == 2 + 10  # x, overall, and one series per digit class
    records = _chart(browser, f"chart-{MODEL}-records")
    for v, held in history.items():
        assert records[1][versions.index(v)] == held.n_records

    # the stream's charts: a positive deletion rate and latency percentiles, from /metrics
    def stream_seen() -> bool:
        rate = [v for v in _chart(browser, "chart-deletions")[1] if v]
        p50 = [v for v in _chart(browser, "chart-latency")[1] if v is not None]
        return bool(rate) and bool(p50)

    pipe.wait_for(stream_seen, 60, "deletions per second and latency on the page")
    pending = _chart(browser, "chart-pending")
    assert pending[0] and pending[-1][-1] == 100  # the deadline line
    for chart_id in (
        "chart-deletions",
        "chart-latency",
        "chart-pending",
        "chart-dead-letters",
        "chart-lag",
        f"chart-{MODEL}-certificate",
        f"chart-{MODEL}-score",
    ):
        assert _canvas_drawn(browser, chart_id), chart_id

    # the receipt lookup finds a request applied a moment earlier
    fresh = f"fresh-{uuid.uuid4().hex[:8]}"
    person = _subject(77)
    with DeletionClient(pipe.bootstrap, pipe.prefix) as client:
        client.request(subject_id=person, reason="test: lookup", request_id=fresh)
    pipe.wait_for(
        lambda: (rs := store.receipts.get(fresh)) and rs[0].status.final, 90, "the fresh receipt"
    )
    (receipt,) = store.receipts.get(fresh)

    def answered() -> str | None:
        return _js(browser, "return document.getElementById('lookup-result').dataset.found")

    _lookup(browser, "request", fresh)
    pipe.wait_for(answered, 30, "the lookup by request id")
    row = _js(
        browser,
        f"const r = document.querySelector('#lookup-result tr[data-request=\"{fresh}\"]');"
        "return r ? Object.assign({}, r.dataset) : null;",
    )
    assert row == {
        "request": fresh,
        "model": MODEL,
        "status": receipt.status.value,
        "version": str(receipt.version),
    }
    forgotten = "return document.querySelector('#lookup-result .answer').dataset.forgotten"
    assert _js(browser, forgotten) == "true"

    # by subject: hashed in the page, the subject id is sent nowhere and shown nowhere
    _lookup(browser, "subject", person)
    pipe.wait_for(answered, 30, "the lookup by subject")
    found = _js(
        browser,
        "return Array.from(document.querySelectorAll('#lookup-result tr[data-request]'))"
        ".map((r) => r.dataset.request);",
    )
    assert found == [fresh]
    assert "person-" not in browser.page_source
    assert _js(browser, "return document.getElementById('lookup-id').value") == ""

    # no request left the machine: every one went to the page's own address
    origin = page.url.rstrip("/")
    entries = _js(
        browser,
        "return performance.getEntriesByType('navigation').concat("
        "performance.getEntriesByType('resource')).map((e) => e.name);",
    )
    assert entries and all(name.startswith(origin) for name in entries), entries
    sent = [
        msg["params"]["request"]["url"]
        for entry in browser.get_log("performance")
        if (msg := json.loads(entry["message"])["message"])["method"] == "Network.requestWillBeSent"
    ]
    assert any(u.endswith("/api/receipts?request=" + fresh) for u in sent)
    assert all(u.startswith(origin) or u.startswith("data:") for u in sent), sent
    assert not [u for u in sent if "person-" in u]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_the_page_says_which_source_is_down(live, browser) -> None:
    pipe, _page = live
    dead_metrics = f"http://127.0.0.1:{_closed_port()}/metrics"
    settings = Settings(dashboard_refresh=0.5)
    # metrics: a target that does not answer is named, the rest still plots
    with Dashboard(pipe.store, settings, metrics_urls=[dead_metrics]) as page:
        browser.get(page.url)

        def banner() -> list[str]:
            return _js(
                browser,
                "return Array.from(document.querySelectorAll('#banners .banner'))"
                ".map((b) => b.dataset.source + ': ' + b.textContent);",
            )

        shown = pipe.wait_for(lambda: [b for b in banner() if dead_metrics in b], 30, "banner")
        assert shown[0].startswith("metrics: ")
        assert _js(browser, f"return !!document.querySelector('#model-{MODEL} .version')")
    # Redis: nothing answers on that port; the page says so instead of failing
    unreachable = Store.from_url(f"redis://127.0.0.1:{_closed_port()}/0", pipe.namespace)
    with Dashboard(unreachable, settings) as page:
        browser.get(page.url)
        pipe.wait_for(lambda: any(b.startswith("redis: ") for b in banner()), 30, "Redis banner")
        assert "Redis down" in _js(
            browser, "return document.getElementById('source-redis').textContent"
        )
    unreachable.close()


def test_the_page_is_read_only_and_answers_loopback_names_only(live) -> None:
    _pipe, page = live
    request = urllib.request.Request(page.url + "api/snapshot", method="POST", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405
    rebound = urllib.request.Request(page.url + "api/snapshot", headers={"Host": "evil.test"})
    with pytest.raises(urllib.error.HTTPError) as misdirected:
        urllib.request.urlopen(rebound, timeout=10)
    assert misdirected.value.code == 421
    with urllib.request.urlopen(page.url, timeout=10) as reply:
        policy = reply.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(page.url + "api/receipts?subject=not-a-token", timeout=10)
    assert bad.value.code == 400
