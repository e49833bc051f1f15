"""Shared pieces of the browser tests: processes, Xvfb, keys, a static HTTP server with the
collector's security headers, and headless Chromium through Selenium (Debian's chromium,
chromium-driver and python3-selenium, installed by `make deps`)."""

import base64
import contextlib
import functools
import http.server
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(REPO, "dashboard")
PAGES = os.path.join(REPO, "Tests", "Browser", "pages")

# The collector's headers (DASHBOARD-CONTRACT.md, "HTTP API"): the static test server sends the
# same, so every page and module runs under the strict CSP it will have in production.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Failure(Exception):
    """A check that failed; the message says what was expected and what was seen."""


def log(msg):
    print(msg, flush=True)


def run(cmd, *, env=None, input=None, timeout=120, check=True):
    """Runs cmd (a list); returns CompletedProcess with text output. Raises Failure on a
    non-zero exit when check, naming the command and its stderr."""
    p = subprocess.run(cmd, env=env, input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise Failure(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p


def require_tools(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise Failure(f"missing tools {missing}: run `make deps` (Debian packages chromium, chromium-driver, "
                      f"python3-selenium, xvfb, xdotool, x11-xserver-utils, openssl)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Xvfb:
    """A private Xvfb (-noreset, so the painted root colour stays); the display number is chosen
    by Xvfb itself (-displayfd), so parallel runs never collide."""

    def __init__(self, width=320, height=240, depth=24, user=None):
        """`user`: run the server as this account (setpriv), so its socket names that user
        (the agent's session look-up, docs/CAPTURE.md "Every graphical session")."""
        r, w = os.pipe()
        as_user = ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--clear-groups"] if user else []
        self.proc = subprocess.Popen([*as_user, "Xvfb", "-displayfd", str(w), "-screen", "0", f"{width}x{height}x{depth}",
                                      "-noreset", "-nolisten", "tcp"], pass_fds=(w,),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(w)
        number = b""
        deadline = time.time() + 15
        with os.fdopen(r, "rb") as f:
            while time.time() < deadline and not number.endswith(b"\n"):
                c = f.read(1)
                if not c:
                    break
                number += c
        if not number.strip():
            self.stop()
            raise Failure("Xvfb did not report a display number within 15 s")
        self.name = ":" + number.decode().strip()
        self.env = dict(os.environ, DISPLAY=self.name, XAUTHORITY="/dev/null")

    def run(self, cmd, **kw):
        return run(cmd, env=self.env, **kw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_keypair(directory, name, passphrase, traditional=False):
    """`openssl genrsa -aes256` (PKCS#8 PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC) or with
    -traditional (Proc-Type PEM); returns (private key path, public key path)."""
    passfile = os.path.join(directory, name + ".pass")
    with open(passfile, "w") as f:
        f.write(passphrase + "\n")
    key = os.path.join(directory, name + ".pem")
    pub = os.path.join(directory, name + ".crt")
    run(["openssl", "genrsa", *(["-traditional"] if traditional else []), "-aes256", "-passout", f"file:{passfile}",
         "-out", key, "2048"])
    run(["openssl", "rsa", "-in", key, "-passin", f"file:{passfile}", "-pubout", "-out", pub])
    return key, pub


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves /tests/… from Tests/Browser/pages, /fixtures/… from the run's fixture folder, the
    rest from dashboard/; only GET; every answer with the collector's security headers."""

    roots = {}
    extensions_map = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
                      ".html": "text/html; charset=utf-8", ".json": "application/json", ".svg": "image/svg+xml",
                      ".png": "image/png", "": "application/octet-stream"}

    def translate_path(self, path):
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        for prefix, root in self.roots.items():
            if prefix and path.startswith(prefix):
                rel = path[len(prefix):]
                break
        else:
            root, rel = self.roots[""], path.lstrip("/")
        full = os.path.realpath(os.path.join(root, rel))
        if not (full == root or full.startswith(root + os.sep)):
            return os.path.join(root, "\0refused")
        return full

    def end_headers(self):
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        super().end_headers()

    def do_POST(self):
        # The unit page's vault.js reports locks to the collector; here they go nowhere.
        if self.path == "/api/v1/client-report":
            self.send_response(204)
            self.end_headers()
        else:
            self.send_error(405)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def static_server(fixtures_dir):
    """http://127.0.0.1:PORT (a secure context for WebCrypto and WebCodecs)."""
    handler = type("Handler", (_Handler,), {"roots": {"": os.path.realpath(DASHBOARD), "/tests/": os.path.realpath(PAGES),
                                                      "/fixtures/": os.path.realpath(fixtures_dir)}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium(download_dir=None, ignore_cert_errors=False):
    """Headless Chromium driven by chromedriver (Selenium). Browser console lines are kept
    (goog:loggingPrefs) so a CSP violation or an uncaught error shows in the test output."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--disable-gpu", "--no-first-run", "--disable-extensions", "--disable-background-networking"]:
        options.add_argument(arg)
    if ignore_cert_errors:
        options.add_argument("--ignore-certificate-errors")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if download_dir:
        options.add_experimental_option("prefs", {"download.default_directory": download_dir,
                                                  "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    driver.set_script_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def browser_log(driver):
    try:
        return driver.get_log("browser")
    except Exception:  # noqa: BLE001 - the log is a diagnostic only
        return []


def wait_for(driver, script, timeout, what):
    """Polls `return (script)` in the page until truthy; returns its value. --dump-dom does not
    wait for async work, so the tests poll."""
    deadline = time.time() + timeout
    while True:
        value = driver.execute_script("return (" + script + ")")
        if value:
            return value
        if time.time() > deadline:
            raise Failure(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
