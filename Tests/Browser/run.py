#!/usr/bin/python3
"""Browser tests of the dashboard in real headless Chromium (issue 15).

Usage: Tests/Browser/run.py [--suite unit|e2e|all] [--bin .build/debug] [--out DIR] [--keep]

- unit: the dashboard's modules (crypto core, payloads, WebCodecs, WebM, zip) against real
  vectors: openssl keys, `custos seal` files and `custos-agent record` recordings on Xvfb.
  The page Tests/Browser/pages/unit.html runs them under the collector's CSP and reports each.
- e2e: the real custos-collector's admin listener, a real agent on Xvfb, the dashboard UI.

Screenshots go to --out (default .build/browser-tests). Exits 1 if any test failed.
Prints one line per test and a closing "N passed, N failed".
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fixtures  # noqa: E402
from support import REPO, Failure, browser_log, chromium, log, require_tools, static_server, wait_for  # noqa: E402

passed = []
failed = []


def record(name, ok, detail=""):
    (passed if ok else failed).append(name)
    log(f"{'ok  ' if ok else 'FAIL'} {name}{(': ' + detail) if detail else ''}")


def run_unit(args, work, out):
    t0 = time.time()
    manifest = fixtures.make(args.bin, work)
    log(f"fixtures made in {time.time() - t0:.1f} s ({manifest['video']['agent']}; {manifest['png']['agent']})")
    with static_server(work) as base, chromium() as driver:
        driver.get(base + "/tests/unit.html")
        try:
            wait_for(driver, "document.body && document.body.dataset.state === 'done'", 180, "the unit page to finish")
        finally:
            driver.save_screenshot(os.path.join(out, "unit.png"))
        results = json.loads(driver.execute_script("return document.getElementById('results-json').textContent"))
        for r in results:
            record("unit: " + r["name"], r["ok"], r.get("detail", ""))
        artifacts = json.loads(driver.execute_script("return document.getElementById('artifacts-json').textContent"))
        import unit_checks  # checks of the bytes the page produced (WebM, zip) with real tools
        unit_checks.BIN[0] = args.bin
        for name, check in unit_checks.CHECKS:
            try:
                check(artifacts, work)
                record("unit: " + name, True)
            except Exception as e:  # noqa: BLE001
                record("unit: " + name, False, str(e))
        errors = [e for e in browser_log(driver) if e.get("level") == "SEVERE"]
        record("unit: no browser console errors (CSP violations, uncaught errors)", not errors,
               "; ".join(e["message"][:300] for e in errors))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["unit", "e2e", "all"], default="all")
    p.add_argument("--bin", default=os.path.join(REPO, ".build", "debug"), help="folder of the built custos binaries")
    p.add_argument("--out", default=os.path.join(REPO, ".build", "browser-tests"), help="screenshots and artifacts")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = p.parse_args()
    args.bin = os.path.abspath(args.bin)
    os.makedirs(args.out, exist_ok=True)
    require_tools("chromium", "chromedriver", "Xvfb", "xsetroot", "xdotool", "openssl")
    for b in ["custos", "custos-agent", "custos-collector"]:
        if not os.access(os.path.join(args.bin, b), os.X_OK):
            raise SystemExit(f"run.py: {args.bin}/{b} is missing: build first (make build)")
    started = time.time()
    suites = ["unit", "e2e"] if args.suite == "all" else [args.suite]
    for suite in suites:
        work = tempfile.mkdtemp(prefix=f"custos-browser-{suite}-")
        try:
            fn = {"unit": run_unit, "e2e": run_e2e}[suite]
            fn(args, work, args.out)
        except Exception as e:  # noqa: BLE001 - report and go on with the next suite
            record(f"{suite}: suite ran to the end", False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        finally:
            if args.keep:
                log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    log(f"browser tests: {time.time() - started:.0f} s; screenshots in {args.out}")
    log(f"{len(passed)} passed, {len(failed)} failed")
    return 1 if failed or not passed else 0


def run_e2e(args, work, out):
    import e2e
    e2e.run(args, work, out, record)


if __name__ == "__main__":
    sys.exit(main())
