#!/usr/bin/env python3
"""Drives loadgen's web UI in headless Chromium through the page itself (Playwright).

Usage: ui_browser.py URL CHROMIUM OUT_DIR

Starts a run of 2 users from the page's form, waits for the users figure and the users
chart to show 2, applies a new user count of 6, waits for both to follow, stops, waits
for the run to end, downloads the stats CSV through its link, and takes a screenshot.
Prints one JSON line of what it saw; exits non-zero (with the reason) on any failure.
Every wait is bounded.
"""
import json
import sys

from playwright.sync_api import sync_playwright

url, chromium, out = sys.argv[1], sys.argv[2], sys.argv[3]
seen = {}
WAIT = 20_000  # ms, per step

with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path=chromium,
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    )
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1600}, accept_downloads=True)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append("request failed: " + r.url))
        external = []
        page.on("request", lambda r: None if r.url.startswith(url) else external.append(r.url))
        page.goto(url + "/", wait_until="load")
        page.wait_for_function("window.loadgenView && window.loadgenView.phase === 'idle'", timeout=WAIT)
        seen["presets"] = page.eval_on_selector_all("#preset option", "os => os.map(o => o.value)")
        seen["host_field"] = page.input_value("#host")

        page.fill("#users", "2")
        page.fill("#spawn_rate", "20")
        page.click("#start")
        page.wait_for_function(
            "document.getElementById('users_now').textContent === '2'"
            " && window.loadgenView.run && window.loadgenView.run.series.length >= 2"
            " && window.loadgenView.run.series.at(-1)[6] === 2",
            timeout=WAIT,
        )
        seen["phase_running"] = page.text_content("#phase")

        page.fill("#new_users", "6")
        page.click("#apply")
        page.wait_for_function(
            "document.getElementById('users_now').textContent === '6'"
            " && window.loadgenView.run.series.at(-1)[6] === 6",
            timeout=WAIT,
        )
        # The users chart: the plotted series the page drew from, before and after.
        users = page.evaluate("window.loadgenView.run.series.map(p => p[6])")
        seen["users_series"] = users
        seen["target_figure"] = page.text_content("#target_now")
        seen["stats_rows"] = page.eval_on_selector_all("#stats tbody tr", "rs => rs.map(r => r.cells[1].textContent)")
        seen["verdicts"] = page.eval_on_selector_all(".verdict", "vs => vs.map(v => v.className)")

        page.click("#stop")
        page.wait_for_function("window.loadgenView.phase === 'done'", timeout=WAIT)
        page.wait_for_selector("#downloads a", timeout=WAIT)
        seen["downloads"] = page.eval_on_selector_all("#downloads a", "as => as.map(a => a.textContent)")
        with page.expect_download(timeout=WAIT) as d:
            page.click("#downloads a:text('stats CSV')")
        csv_path = out + "/downloaded_stats.csv"
        d.value.save_as(csv_path)
        seen["csv"] = csv_path
        seen["csv_name"] = d.value.suggested_filename
        seen["requests_total"] = page.evaluate("window.loadgenView.run.total.requests")
        shot = out + "/ui.png"
        page.screenshot(path=shot, full_page=True)
        seen["screenshot"] = shot
        seen["page_errors"] = errors
        seen["external_requests"] = external
    finally:
        browser.close()

print(json.dumps(seen))
