"""Seed 001's Locust suite (the gateway's tests/performance/locustfile.py), for real Locust.

Written from the seed's README (its user classes, waits and tasks), not generated from
loadgen/scenarios/meetinity-gateway.toml; request names match the scenario's so that
tests/locust/parity.py can compare the two tools name by name. Plain FastHttpUser, one
host, no header the seed's suite would not send: the gateway sees what it would see from
the seed's own locustfile.

    locust -f tests/locust/locustfile.py --host http://127.0.0.1:8080 \
        --users 50 --spawn-rate 5 --run-time 5m --headless      # baseline, all classes

Which gateway config each preset runs against: docs/LOCUST.md.

With PARITY_OUT=FILE set, writes at the end of the run a JSON object with, per request
name, the count of each status class ("2xx", "4xx", "429", "5xx", "none" for no
response), the user count per class, and the 429s seen with and without Retry-After.
"""

import json
import os
import random
import time
import uuid
from collections import defaultdict

from locust import FastHttpUser, between, constant_pacing, events, task

NAMES = ["alice", "bob", "carol", "dave"]
TIMEZONES = ["UTC", "Europe/Paris", "America/New_York"]

# Per-process tallies for PARITY_OUT (one Locust process; workers would each write theirs).
STATUS = defaultdict(lambda: defaultdict(int))
CLASSES = defaultdict(int)
RETRY_AFTER = {"429_with_retry_after": 0, "429_without_retry_after": 0}
_next_index = [0]


def next_index():
    """A number per simulated user, for usernames (one subject per user)."""
    _next_index[0] += 1
    return _next_index[0]


def status_class(code):
    if not code:
        return "none"
    if code == 429:
        return "429"
    return f"{code // 100}xx"


@events.request.add_listener
def _tally(name, response, exception, **_kw):
    code = getattr(response, "status_code", 0) or 0
    STATUS[name][status_class(code)] += 1
    if code == 429:
        headers = getattr(response, "headers", None) or {}
        key = "429_with_retry_after" if headers.get("retry-after") else "429_without_retry_after"
        RETRY_AFTER[key] += 1


@events.quitting.add_listener
def _write(environment, **_kw):
    out = os.environ.get("PARITY_OUT")
    if not out:
        return
    with open(out, "w", encoding="utf-8") as f:
        json.dump(
            {
                "status": {n: dict(c) for n, c in STATUS.items()},
                "users": dict(CLASSES),
                **RETRY_AFTER,
            },
            f,
            indent=1,
            sort_keys=True,
        )


class SeedUser(FastHttpUser):
    """Common to the seed's classes: counts itself, logs in when asked."""

    abstract = True

    def on_start(self):
        CLASSES[type(self).__name__] += 1

    def login(self, prefix):
        """POST /api/auth/session; keeps the session token (None when it failed)."""
        self.token = None
        with self.client.post(
            "/api/auth/session",
            json={"username": f"{prefix}{next_index()}", "password": "secret"},
            name="/api/auth/session",
            catch_response=True,
        ) as r:
            try:
                self.token = r.json()["access_token"]
            except Exception:  # noqa: BLE001 - any bad answer is a failed login
                r.failure(f"no access_token (HTTP {r.status_code})")

    def auth(self):
        return {"Authorization": f"Bearer {self.token}"}


class PublicRouteUser(SeedUser):
    """Unauthenticated: GET /api/hello, POST /api/echo, query parameters; 1-3 s waits."""

    weight = 3
    wait_time = between(1, 3)

    @task(3)
    def hello(self):
        with self.client.get("/api/hello", name="/api/hello", catch_response=True) as r:
            if r.status_code == 200 and "message" not in r.text:
                r.failure("no message in the body")

    @task(2)
    def echo(self):
        body = {"message": f"hello {uuid.uuid4()}", "n": random.randint(1, 1000)}
        self.client.post("/api/echo", json=body, name="/api/echo")

    @task(1)
    def hello_name(self):
        with self.client.get(
            f"/api/hello?name={random.choice(NAMES)}",
            name="/api/hello?name=[name]",
            catch_response=True,
        ) as r:
            if r.status_code == 200 and "Hello, " not in r.text:
                r.failure("no greeting in the body")


class AuthenticatedUser(SeedUser):
    """Session token; GET /api/users/{id}, GET/PUT /api/profile, POST /api/users; 0.5-2 s."""

    weight = 3
    wait_time = between(0.5, 2)

    def on_start(self):
        super().on_start()
        self.login("user")

    @task(4)
    def get_user(self):
        with self.client.get(
            f"/api/users/{random.randint(1, 1000)}",
            headers=self.auth(),
            name="/api/users/[id]",
            catch_response=True,
        ) as r:
            if r.status_code == 200 and '"id"' not in r.text:
                r.failure("no id in the body")

    @task(2)
    def profile(self):
        self.client.get("/api/profile", headers=self.auth(), name="/api/profile")

    @task(1)
    def update_profile(self):
        body = {"display_name": f"User {id(self)}", "timezone": random.choice(TIMEZONES)}
        with self.client.put(
            "/api/profile",
            json=body,
            headers=self.auth(),
            name="/api/profile [update]",
            catch_response=True,
        ) as r:
            if r.status_code == 200 and '"updated":true' not in r.text.replace(" ", ""):
                r.failure("profile not updated")

    @task(1)
    def create_user(self):
        body = {
            "username": f"new-{uuid.uuid4()}",
            "email": f"u{random.randint(1, 100000)}@example.com",
        }
        with self.client.post(
            "/api/users",
            json=body,
            headers=self.auth(),
            name="/api/users [create]",
            catch_response=True,
        ) as r:
            if r.status_code != 201:
                r.failure(f"HTTP {r.status_code} (expected 201)")
            else:
                r.success()


class RateLimitTestUser(SeedUser):
    """Aggressive (0.1 s pacing); a 429 is the expected outcome, with Retry-After and
    X-RateLimit-* headers."""

    weight = 1
    wait_time = constant_pacing(0.1)

    @task
    def hammer(self):
        with self.client.get(
            "/api/hello", name="/api/hello [ratelimit]", catch_response=True
        ) as r:
            if r.status_code == 429:
                # The seed: "429 Responses" with "Rate Limit Headers: X-RateLimit-*".
                if not r.headers.get("retry-after"):
                    r.failure("429 without Retry-After")
                elif not r.headers.get("x-ratelimit-limit"):
                    r.failure("429 without X-RateLimit-Limit")
                else:
                    r.success()
            elif r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")


class HighThroughputUser(SeedUser):
    """Sustained load, 0.1-0.5 s waits: the users list (cached), hello, one user."""

    weight = 2
    wait_time = between(0.1, 0.5)

    def on_start(self):
        super().on_start()
        self.login("ht")

    @task(3)
    def users(self):
        self.client.get("/api/users", headers=self.auth(), name="/api/users")

    @task(2)
    def hello(self):
        self.client.get("/api/hello", name="/api/hello")

    @task(1)
    def user(self):
        self.client.get(
            f"/api/users/{random.randint(1, 20)}", headers=self.auth(), name="/api/users/[id]"
        )


class MixedWorkloadUser(SeedUser):
    """Half authenticated, half not; reads and writes of 1 KB and 10 KB; 0.5-3 s waits."""

    weight = 3
    wait_time = between(0.5, 3)

    @task
    def authenticated_journey(self):
        self.login("mixed")
        self.client.get("/api/profile", headers=self.auth(), name="/api/profile")
        self.client.post(
            "/api/echo",
            data=os.urandom(5 * 1024).hex(),
            headers={**self.auth(), "Content-Type": "application/octet-stream"},
            name="/api/echo [10KB]",
        )

    @task
    def public_journey(self):
        self.client.get("/api/hello", name="/api/hello")
        self.client.get(f"/api/hello?name={random.choice(NAMES)}", name="/api/hello?name=[name]")
        self.client.post(
            "/api/echo",
            data=os.urandom(512).hex(),
            headers={"Content-Type": "application/octet-stream"},
            name="/api/echo [1KB]",
        )


class StressTestUser(SeedUser):
    """Extreme load: 0.01-0.1 s waits, payloads up to 100 KB."""

    weight = 1
    wait_time = between(0.01, 0.1)

    @task(1)
    def big_echo(self):
        self.client.post(
            "/api/echo",
            data=os.urandom(50 * 1024).hex(),
            headers={"Content-Type": "application/octet-stream"},
            name="/api/echo [100KB]",
        )

    @task(3)
    def hello(self):
        self.client.get("/api/hello", name="/api/hello [stress]")


class HealthCheckMonitor(SeedUser):
    """GET /health every 5 s; the gateway must say ok, within a second."""

    weight = 1
    wait_time = constant_pacing(5)

    @task
    def health(self):
        start = time.monotonic()
        with self.client.get("/health", name="/health", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")
            elif '"ok"' not in r.text:
                r.failure("status is not ok")
            elif time.monotonic() - start > 1:
                r.failure("slower than 1s")
