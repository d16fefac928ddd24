"""The dashboard in a real browser (`make ui-test`): headless Chromium against a real master
and slave.

Starts `cluster master` (with a secret, random port, a fresh SQLite file) and `cluster slave`
as subprocesses, then drives Debian's `chromium` through `chromium-driver` (selenium) and
checks what a user relies on:

  1. a task submitted while the Tasks page is open appears, and its progress bar moves,
     without a reload;
  2. its page shows its log lines as they arrive;
  3. the kill button of a running task asks for the master's secret, kills it, and the page
     shows KILLED;
  4. the state filter shows only tasks in that state;
  5. the Overview and Slaves pages show the slave and its resources;
  6. the name filter; Tab walks the skip link and the page links, Enter follows them; no
     page is wider than a 390px phone screen;
and saves a screenshot of each page (`--out`, default `.ui-test/`; `--docs` also refreshes
`docs/dashboard.png`, the one in the README).

Exits 0 only when every check passed; a missing browser, driver or selenium is a failure
(`ui-test NOT RUN: ...`, or `FAILED (CI=true)` under CI), never a pass.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

REPO = Path(__file__).resolve().parents[1]
SECRET = "ui-test-secret"
CHROMIUM = ("chromium", "chromium-browser")
DRIVER = ("chromedriver", "chromium-driver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,860"]
PROGRESS_COMMAND = ("for i in $(seq 1 24); do echo PROGRESS $((i*4)); echo line $i; "
                    "sleep 0.5; done")
T = TypeVar("T")
# Proxies from the environment are ignored: the cluster is on 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Failure(Exception):
    """A check failed: the message says which and what was seen."""


def log(message: str) -> None:
    print(f"ui-test: {message}", flush=True)


def not_run(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        print(f"ui-test FAILED (CI=true): {reason}", file=sys.stderr, flush=True)
    else:
        print(f"ui-test NOT RUN: {reason}", file=sys.stderr, flush=True)
    sys.exit(1)


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 30.0,
               interval: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; Failure naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a stale element, a page mid-render
            last_error = f" (last error: {type(exc).__name__}: {str(exc)[:200]})"
        time.sleep(interval)
    raise Failure(f"{what}: not seen within {timeout:g}s{last_error}")


# -- the cluster ---------------------------------------------------------------------------


class Cluster:
    """A real master and slave, `cluster` subprocesses on 127.0.0.1, random ports."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = ""

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTER_", "LIBPROCESS_"))}
        env["CLUSTER_SECRET"] = SECRET
        out = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=self.work,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        self._spawn("master", ["master", "--host", "127.0.0.1", "--port", "0",
                               "--db", str(self.work / "cluster.db")])
        line = eventually("the master's 'listening on' line", lambda: self._listening("master"),
                          timeout=30)
        self.url = "http://" + line.rsplit(" ", 1)[1]
        self._spawn("slave", ["slave", "--master", self.url[len("http://"):], "--host",
                              "127.0.0.1", "--port", "0", "--cpus", "4", "--mem", "2048",
                              "--work-dir", str(self.work / "slave")])
        eventually("an active slave", lambda: [s for s in self.get("/master/slaves")["slaves"]
                                               if s["state"] == "active"], timeout=30)

    def _listening(self, name: str) -> str | None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise Failure(f"{name} exited with {proc.returncode}: "
                              f"{(self.work / f'{name}.log').read_text()[-2000:]}")
        for line in (self.work / f"{name}.log").read_text(errors="replace").splitlines():
            if " listening on " in line:
                return line.strip()
        return None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {SECRET}",
                                              "Content-Type": "application/json"})
        try:
            with OPENER.open(req, timeout=10) as resp:
                return resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers

    def get(self, path: str) -> Any:
        status, body, _ = self.request("GET", path)
        if status != 200:
            raise Failure(f"GET {path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def submit(self, command: str, name: str) -> str:
        status, body, _ = self.request("POST", "/master/tasks", {"command": command, "name": name})
        if status != 201:
            raise Failure(f"submit {name}: HTTP {status}: {body[:200]!r}")
        return str(json.loads(body)["ids"][0])

    def serves_dashboard(self) -> bool:
        """Phase 2: the master serves GET / as HTML and has /master/events."""
        status, body, headers = self.request("GET", "/")
        if status != 200 or not str(headers.get("Content-Type", "")).startswith("text/html"):
            return False
        req = urllib.request.Request(self.url + "/master/events", method="HEAD")
        try:
            with OPENER.open(req, timeout=5) as r:
                return str(r.headers.get("Content-Type", "")).startswith("text/event-stream")
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the slave first: it kills its tasks
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


# -- the browser ---------------------------------------------------------------------------


def find(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def prerequisites() -> tuple[str, str]:
    """The browser and its driver, checked before anything starts (exits when missing)."""
    chromium, driver = find(CHROMIUM), find(DRIVER)
    if chromium is None or driver is None:
        not_run("Debian's chromium and chromium-driver are not installed (make ui-test "
                "installs them as root: apt-get install -y chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        not_run("selenium is not installed (it is in the test extra: make install)")
    return chromium, driver


def open_browser(chromium: str, driver: str, profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # An explicit driver path: selenium never tries to download one.
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


class Page:
    """The few browser operations the checks need, on top of a selenium driver."""

    def __init__(self, driver: Any, base: str, out: Path) -> None:
        from selenium.webdriver.common.by import By

        self.d, self.base, self.out, self.by = driver, base, out, By
        self.shots: list[Path] = []

    def go(self, fragment: str) -> None:
        self.d.get(f"{self.base}/{fragment}")

    def nav(self, fragment: str) -> None:
        """Change the hash route in place, as a click on a link does: no reload."""
        self.d.execute_script("location.hash = arguments[0]", fragment)

    def css(self, selector: str) -> list[Any]:
        return list(self.d.find_elements(self.by.CSS_SELECTOR, selector))

    def one(self, selector: str) -> Any:
        found = self.css(selector)
        return found[0] if found else None

    def text(self, selector: str) -> str:
        node = self.one(selector)
        return str(node.text) if node is not None else ""

    def shot(self, name: str) -> None:
        path = self.out / f"{name}.png"
        self.d.save_screenshot(str(path))
        self.shots.append(path)
        log(f"screenshot {path}")

    def js_errors(self) -> list[str]:
        try:
            entries = self.d.get_log("browser")
        except Exception:  # noqa: BLE001 - not every driver keeps the console
            return []
        # Answers the pages expect and handle are logged by Chromium too: the 401 that makes
        # the kill button ask for the secret, a 404 for logs not written yet.
        expected = ("/master/events", "/kill - Failed to load resource: the server "
                    "responded with a status of 401", "/logs?")
        return [e["message"] for e in entries if e.get("level") == "SEVERE"
                and not any(x in e["message"] for x in expected)]


def row_progress(page: Page, tid: str) -> float | None:
    node = page.one(f'tr[data-task-id="{tid}"] .bar')
    return None if node is None else float(node.get_attribute("aria-valuenow"))


def run_checks(cluster: Cluster, page: Page) -> None:
    # 1. A task appears and its progress moves, without a reload.
    page.go("#/tasks")
    eventually("the Tasks table", lambda: page.one("#tasks-table caption"))
    eventually("the live indicator", lambda: page.one("#live[data-mode='live']"), timeout=20)
    page.d.execute_script("window.__noReload = 'still here'")
    batch = [cluster.submit("sleep 0.5; echo ok", f"ui-batch-{i}") for i in (1, 2)]
    batch.append(cluster.submit("echo oops >&2; exit 3", "ui-broken"))
    tid = cluster.submit(PROGRESS_COMMAND, "ui-progress")
    log(f"submitted task {tid}; waiting for its row")
    eventually(f"task {tid}'s row", lambda: page.one(f'tr[data-task-id="{tid}"]'))
    first = eventually(f"task {tid} progress above 0",
                       lambda: (row_progress(page, tid) or 0) > 0 and row_progress(page, tid))
    moved = eventually(f"task {tid}'s progress bar moving past {first}%",
                       lambda: (row_progress(page, tid) or 0) > first and row_progress(page, tid))
    log(f"progress bar moved {first}% -> {moved}% without a reload")
    eventually("the batch's rows FINISHED and FAILED", lambda: sorted(
        page.text(f'tr[data-task-id="{b}"] .state') for b in batch) == [
        "FAILED", "FINISHED", "FINISHED"])
    if page.d.execute_script("return window.__noReload") != "still here":
        raise Failure("the page was reloaded while waiting for the task")
    shown = [tr.get_attribute("data-task-id") for tr in page.css("#tasks-table tbody tr")]
    if shown != sorted(shown, key=int, reverse=True):
        raise Failure(f"the table is not newest first: {shown}")
    page.shot("tasks")

    # 2. The task's page, its log lines arriving.
    page.one(f'tr[data-task-id="{tid}"] a').click()
    eventually("the task page", lambda: page.one("#task-facts dd[data-key='state']"))
    eventually("log line 2", lambda: "line 2" in page.text("#log"))
    lines = len(page.text("#log").splitlines())
    eventually("more log lines arriving",
               lambda: len(page.text("#log").splitlines()) > lines, timeout=20)
    log(f"log lines arrive: {lines} -> {len(page.text('#log').splitlines())}")
    page.d.set_window_size(1280, 1500)  # the whole page, log included
    page.shot("task")
    page.d.set_window_size(1280, 860)

    # 3. Kill a running task with the button (the master has a secret: the page asks).
    victim = cluster.submit("echo started; sleep 300", "ui-kill")
    page.nav(f"#/tasks/{victim}")
    eventually(f"task {victim} RUNNING", lambda: page.text("#task-facts dd[data-key='state']")
               == "RUNNING", timeout=30)
    page.one("#kill").click()
    dialog = eventually("the secret dialog", lambda: page.one("#secret-dialog[open]"))
    page.one("#secret-input").send_keys(SECRET)
    page.one("#secret-ok").click()
    eventually("the dialog closing", lambda: page.one("#secret-dialog[open]") is None or None)
    eventually(f"task {victim} KILLED on its page",
               lambda: page.text("#task-facts dd[data-key='state']") == "KILLED", timeout=30)
    if dialog is None or page.one("#kill").is_displayed():
        raise Failure("the kill button is still shown for a KILLED task")
    log(f"task {victim} killed from the page")

    # 4. The state filter.
    eventually(f"task {tid} FINISHED", lambda: cluster.get(f"/master/tasks/{tid}")["state"]
               == "FINISHED", timeout=60)
    page.nav("#/tasks")
    eventually("the Tasks table again", lambda: page.one(f'tr[data-task-id="{tid}"]'))
    from selenium.webdriver.support.ui import Select

    for state, wanted, unwanted in (("KILLED", victim, tid), ("FINISHED", tid, victim)):
        Select(page.one("#filter-state")).select_by_value(state)

        def only(state: str = state, wanted: str = wanted, unwanted: str = unwanted) -> bool:
            states = {n.text for n in page.css("#tasks-table tbody .state")}
            return (states == {state} and page.one(f'tr[data-task-id="{wanted}"]') is not None
                    and page.one(f'tr[data-task-id="{unwanted}"]') is None)

        eventually(f"only {state} tasks listed", only)
        if f"state={state}" not in page.d.current_url:
            raise Failure(f"the filter is not in the address: {page.d.current_url}")
        log(f"state filter {state}: only {state} rows")
    page.shot("tasks-filtered")
    Select(page.one("#filter-state")).select_by_value("")
    page.one("#filter-name").send_keys("ui-batch")
    eventually("only the ui-batch tasks listed", lambda: sorted(
        n.text for n in page.css("#tasks-table tbody td.name")) == ["ui-batch-1", "ui-batch-2"])
    log("name filter: only the matching rows")

    # Keyboard: Tab from the top reaches the skip link, then the page links, in order.
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page.d.refresh()  # a fresh page: Tab starts from the top
    eventually("the Tasks table after a reload", lambda: page.one("#tasks-table caption"))
    reached = []
    for _ in range(5):
        ActionChains(page.d).send_keys(Keys.TAB).perform()
        reached.append(page.d.execute_script(
            "const a = document.activeElement; return a ? (a.textContent || a.id).trim() : ''"))
    if reached[:1] != ["Skip to content"] or "Tasks" not in reached or "Slaves" not in reached:
        raise Failure(f"Tab does not walk the skip link and the page links: {reached}")
    page.nav("#/slaves")
    eventually("the Slaves page", lambda: page.one("#slaves .slave"))
    link = page.one(".top nav a[data-page='tasks']")
    link.send_keys(Keys.ENTER)
    eventually("Enter on the Tasks link opens Tasks", lambda: page.one("#tasks-table"))
    log(f"keyboard: Tab reaches {reached[:4]}; Enter follows a link")

    # 5. Overview and Slaves.
    page.nav("#/")
    eventually("the overview's slave count", lambda: page.text("#ov-slaves [data-f='active']")
               == "1")
    eventually("the overview's task counts", lambda: "1 KILLED" in page.text("#ov-task-counts"))
    eventually("the ended-tasks chart", lambda: page.one("#ov-chart svg rect"))
    page.shot("overview")
    busy = cluster.submit("sleep 60", "ui-busy")
    page.nav("#/slaves")
    card = eventually("a slave card", lambda: page.one("#slaves .slave"))
    eventually(f"task {busy} listed on its slave", lambda: page.one(
        f'#slaves .slave a[href="#/tasks/{busy}"]'), timeout=30)
    if "cpus" not in card.text or "active" not in card.text:
        raise Failure(f"the slave card lacks its state or cpus: {card.text!r}")
    page.shot("slaves")

    # A phone's width: nothing wider than the screen but the tables' own scrolling box.
    page.d.set_window_size(390, 844)
    for fragment, ready in (("#/tasks", "#tasks-table"), ("#/", "#ov-slaves"),
                            ("#/slaves", "#slaves .slave"), (f"#/tasks/{tid}", "#log")):
        page.nav(fragment)
        eventually(f"{fragment} at phone width", lambda ready=ready: page.one(ready))
        wide = page.d.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        if wide > 0:
            raise Failure(f"{fragment} is {wide}px wider than a 390px screen")
    page.nav("#/tasks")
    eventually("the tasks at phone width", lambda: page.one(f'tr[data-task-id="{tid}"]'))
    page.shot("tasks-phone")
    page.d.set_window_size(1280, 860)
    errors = page.js_errors()
    if errors:
        raise Failure(f"the browser console has errors: {errors[:5]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / ".ui-test",
                        help="where the screenshots go (default: .ui-test/)")
    parser.add_argument("--docs", action="store_true",
                        help="also copy the Tasks screenshot to docs/dashboard.png")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    chromium, chromedriver = prerequisites()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ui-test-"))
    cluster = Cluster(work)
    driver = None
    ok = False
    try:
        cluster.start()
        base = cluster.url
        if not cluster.serves_dashboard():
            raise Failure(f"the master at {base} does not serve the dashboard (GET / as HTML "
                          "and GET /master/events as text/event-stream)")
        log(f"the master serves the dashboard: {base}/")
        driver = open_browser(chromium, chromedriver, work / "profile")
        page = Page(driver, base, args.out)
        run_checks(cluster, page)
        if args.docs:
            (REPO / "docs").mkdir(exist_ok=True)
            shutil.copyfile(args.out / "tasks.png", REPO / "docs" / "dashboard.png")
        ok = True
    except Failure as exc:
        print(f"ui-test FAILED: {exc}", file=sys.stderr, flush=True)
        if driver is not None:
            with open(args.out / "failure.png", "wb") as f:
                f.write(driver.get_screenshot_as_png())
            print(f"ui-test: the page at failure: {args.out / 'failure.png'}", file=sys.stderr)
        for name in ("master", "slave"):
            path = work / f"{name}.log"
            if path.exists():
                print(f"--- {name}.log (last lines)\n{path.read_text()[-1500:]}", file=sys.stderr)
    finally:
        if driver is not None:
            driver.quit()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - started
    if ok:
        log(f"PASSED in {took:.1f}s (screenshots in {args.out})")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
