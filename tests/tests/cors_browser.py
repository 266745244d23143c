#!/usr/bin/env python3
"""Cross-origin fetch() through the gateway from real pages in headless Chromium (Playwright).

Usage: cors_browser.py PAGE_A_URL PAGE_B_URL TARGET_URL CHROMIUM TOKEN

Opens page A (an allowed origin) and page B (another origin), and from each runs, in the
page itself:

    fetch(TARGET_URL, {method: "PUT", credentials: "include",
                       headers: {"X-Custom": "1", "Authorization": "Bearer TOKEN",
                                 "Content-Type": "application/json"}, body: "{}"})

A custom header, Authorization and a JSON body force a preflight. Records, per page,
whether the fetch resolved, the status, the body the script could read and the exposed
header, or the error's name and message (a CORS refusal is a TypeError). Prints one JSON
line; exits non-zero (with the reason) on a driver failure. Every wait is bounded.
"""
import json
import sys

from playwright.sync_api import sync_playwright

page_a, page_b, target, chromium, token = sys.argv[1:6]
WAIT = 20_000  # ms, per step

FETCH = """
async ([url, token]) => {
  try {
    const r = await fetch(url, {
      method: "PUT",
      credentials: "include",
      headers: {"X-Custom": "1", "Authorization": "Bearer " + token,
                "Content-Type": "application/json"},
      body: "{}",
    });
    return {resolved: true, status: r.status, body: await r.text(),
            exposed: r.headers.get("X-Tenant-Echo"),
            hidden: r.headers.get("X-Not-Exposed")};
  } catch (e) {
    return {resolved: false, error: e.name, message: e.message};
  }
}
"""

seen = {}
with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path=chromium,
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    )
    try:
        for name, url in (("a", page_a), ("b", page_b)):
            page = browser.new_page()
            console = []
            page.on("console", lambda m, c=console: c.append(m.text))
            page.goto(url, wait_until="load", timeout=WAIT)
            page.set_default_timeout(WAIT)
            result = page.evaluate(FETCH, [target, token])
            result["origin"] = page.evaluate("location.origin")
            result["console"] = console
            seen[name] = result
            page.close()
    finally:
        browser.close()

print(json.dumps(seen))
