#!/usr/bin/env python3
"""Drives the gateway's live SLO page in headless Chromium (Playwright), for tests/slo_page.rs.

Usage: slo_page_browser.py ADMIN_URL CHROMIUM OUT_DIR

Opens ADMIN_URL/slo/ui, waits for the first report, prints {"phase": "seen", "snapshot": ...}
(what the DOM and the chart's data attributes show) and sets a marker on window. Then, for
each line the test writes on stdin:
  {"expect": {"SLO": N, ...}}  waits until each SLO's chart has plotted a 1m window of exactly
                               N requests (bounded), then prints another snapshot;
  {"finish": true}             takes a screenshot and decodes it (zlib, no imaging library),
                               renders hostile names through the page (the JSON stubbed with
                               page.route), opens ADMIN_URL/slo as a browser does (Accept:
                               text/html) and prints {"phase": "result", ...} and exits.
Console errors, page errors, failed requests and requests to anything but the admin listener
are collected and reported. Exits non-zero (with the reason on stderr) on any failure.
Every wait is bounded.
"""
import json
import struct
import sys
import zlib

from playwright.sync_api import sync_playwright

admin, chromium, out = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
WAIT = 20_000  # ms, per step

SNAPSHOT = """() => {
  const text = e => e ? e.textContent : null;
  const sections = [...document.querySelectorAll("section.slo")].map(s => ({
    name: s.dataset.slo,
    title: text(s.querySelector("h2 .name")),
    routes: text(s.querySelector("h2 .routes")),
    verdict: { text: text(s.querySelector(".verdict")), met: s.querySelector(".verdict").dataset.met },
    objectives: [...s.querySelectorAll("tr.objective")].map(r => ({
      objective: r.dataset.objective, kind: r.dataset.kind, label: text(r.cells[0]),
      cells: [...r.querySelectorAll("td")].map(c => ({
        window: c.dataset.window, met: c.dataset.met, nodata: c.dataset.nodata, text: c.textContent })),
    })),
    budget: [...s.querySelectorAll("tr.budget")].map(r => ({
      objective: r.dataset.objective,
      cells: [...r.querySelectorAll("td")].map(c => ({ window: c.dataset.window, text: c.textContent, over: c.className === "over" })),
    })),
    latency: Object.fromEntries([...s.querySelectorAll("tr[data-row]")].map(r =>
      [r.dataset.row, [...r.querySelectorAll("td")].map(c => c.textContent)])),
    pairs: [...s.querySelectorAll("tr.pair")].map(r => ({
      sli: r.dataset.sli, cells: [...r.querySelectorAll("td")].map(c => c.textContent),
      firing: r.querySelector("td[data-firing]").dataset.firing })),
    chart: { points: Number(s.querySelector("canvas.chart").dataset.points),
             last: JSON.parse(s.querySelector("canvas.chart").dataset.last || "null"),
             width: s.querySelector("canvas.chart").width },
  }));
  return { polls: window.sloPage.polls, failures: window.sloPage.failures,
           status: document.getElementById("status").dataset.state,
           marker: window.__sloMarker || null,
           navigations: performance.getEntriesByType("navigation").length,
           sections };
}"""


def wait_until(page, expr, what):
    """Polls `expr` with page.evaluate (CDP evaluation: the page's CSP forbids the eval that
    wait_for_function's in-page polling needs), bounded by WAIT."""
    for _ in range(WAIT // 100):
        if page.evaluate(expr):
            return
        page.wait_for_timeout(100)
    raise SystemExit(f"timed out waiting for {what}: {expr}")


def emit(obj):
    print(json.dumps(obj), flush=True)


def png_pixels(path):
    """(width, height, distinct colours, counter of exact RGB values) of an 8-bit RGB/RGBA PNG."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, ihdr
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = w * bpp
    prev = bytearray(stride)
    counts = {}
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        else:
            assert f == 0, f"filter {f}"
        for x in range(0, stride, bpp):
            k = bytes(line[x:x + 3])
            counts[k] = counts.get(k, 0) + 1
        prev = line
    return w, h, counts


def near(counts, rgb, tol=30):
    return sum(n for k, n in counts.items() if all(abs(a - b) <= tol for a, b in zip(k, rgb)))


def watch(page, problems, external):
    page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
    page.on("request", lambda r: None if r.url.startswith(admin + "/") or r.url.startswith("data:") else external.append(r.url))


result = {}
with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path=chromium,
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    )
    try:
        problems, external, navigations = [], [], []
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        watch(page, problems, external)
        page.on("framenavigated", lambda f: navigations.append(f.url) if f == page.main_frame else None)
        response = page.goto(admin + "/slo/ui", wait_until="load")
        result["page_headers"] = response.headers
        wait_until(page, "window.sloPage && window.sloPage.polls >= 1", "the first report")
        page.evaluate("window.__sloMarker = 'kept'")
        emit({"phase": "seen", "snapshot": page.evaluate(SNAPSHOT)})

        samples = []
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("finish"):
                break
            expect = cmd["expect"]
            cond = ("(e) => Object.entries(e).every(([name, n]) => {"
                    " const c = [...document.querySelectorAll('canvas.chart')].find(c => c.dataset.slo === name);"
                    " const last = c && JSON.parse(c.dataset.last || 'null');"
                    " return last && last.requests === n; })")
            # Bounded: sample the chart's data while waiting for the expected counts.
            for _ in range(WAIT // 250):
                snap = page.evaluate("() => [...document.querySelectorAll('canvas.chart')].map(c => [c.dataset.slo, Number(c.dataset.points), JSON.parse(c.dataset.last || 'null')])")
                samples.append(snap)
                if page.evaluate(cond, expect):
                    break
                page.wait_for_timeout(250)
            else:
                raise SystemExit(f"the chart never showed {expect}: last samples {samples[-3:]}")
            emit({"phase": "seen", "snapshot": page.evaluate(SNAPSHOT)})

        # Two more polls: the chart keeps moving with no reload.
        polls = page.evaluate("window.sloPage.polls")
        wait_until(page, f"window.sloPage.polls >= {polls + 2}", "two more polls")
        result["final"] = page.evaluate(SNAPSHOT)
        result["samples"] = samples
        result["main_frame_navigations"] = navigations

        shot = out + "/slo_page.png"
        page.screenshot(path=shot, full_page=True)
        w, h, counts = png_pixels(shot)
        result["screenshot"] = {
            "path": shot, "width": w, "height": h, "distinct_colours": len(counts),
            "most_common_share": max(counts.values()) / (w * h),
            "header_dark": near(counts, (15, 23, 42), 8),
        }
        # The chart alone (the legend's swatches are outside the canvas): its lines are drawn.
        charts = {}
        for i, name in enumerate(page.eval_on_selector_all("canvas.chart", "cs => cs.map(c => c.dataset.slo)")):
            path = f"{out}/slo_chart_{i}.png"
            page.locator("canvas.chart").nth(i).screenshot(path=path)
            cw, ch, cc = png_pixels(path)
            charts[name] = {
                "width": cw, "height": ch, "distinct_colours": len(cc),
                "p50_blue": near(cc, (37, 99, 235), 25), "p95_orange": near(cc, (217, 119, 6), 25),
                "p99_red": near(cc, (220, 38, 38), 25),
            }
        result["charts"] = charts

        # Hostile names from config (or a tampered /slo) are text, never markup.
        report = page.request.get(admin + "/slo", headers={"Accept": "application/json"}).json()
        evil_name = '<img src=x onerror="window.__pwned=1">'
        evil_route = "</script><script>window.__pwned=2</script>"
        report["slos"][0]["name"] = evil_name
        report["slos"][0]["routes"] = [evil_route]
        report["slos"][0]["windows"][0]["objectives"][0]["objective"] = "<b>bold</b>"
        hostile = browser.new_page()
        watch(hostile, problems, external)
        hostile.route(admin + "/slo", lambda r: r.fulfill(status=200, content_type="application/json", body=json.dumps(report)))
        hostile.goto(admin + "/slo/ui", wait_until="load")
        wait_until(hostile, "window.sloPage && window.sloPage.polls >= 2", "the stubbed reports")
        result["hostile"] = {
            "titles": hostile.eval_on_selector_all("section.slo h2 .name", "es => es.map(e => e.textContent)"),
            "routes": hostile.eval_on_selector_all("section.slo h2 .routes", "es => es.map(e => e.textContent)"),
            "first_objective": hostile.eval_on_selector("tr.objective th", "e => e.textContent"),
            "markup": hostile.evaluate("document.querySelectorAll('main img, main script, main b').length"),
            "pwned": hostile.evaluate("window.__pwned === undefined ? null : window.__pwned"),
        }
        hostile.close()

        # /slo itself, navigated to as a browser does, is the page.
        nav = browser.new_page()
        watch(nav, problems, external)
        r = nav.goto(admin + "/slo", wait_until="load")
        wait_until(nav, "window.sloPage && window.sloPage.polls >= 1 && document.querySelectorAll('section.slo').length > 0", "the page at /slo")
        result["negotiated"] = {
            "content_type": r.headers.get("content-type"), "vary": r.headers.get("vary"),
            "title": nav.title(), "sections": nav.evaluate("document.querySelectorAll('section.slo').length"),
        }
        nav.close()
        result["problems"] = problems
        result["external_requests"] = external
    finally:
        browser.close()

emit({"phase": "result", "result": result})
