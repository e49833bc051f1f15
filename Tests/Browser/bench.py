#!/usr/bin/python3
"""Runs Tests/Browser/pages/bench.html in headless Chromium on the recordings Benchmarks/dashboard.sh
made in --work, and prints its medians (not a test: no pass/fail)."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from support import chromium, static_server, wait_for  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--passphrase", required=True)
    p.add_argument("--runs", type=int, default=15)
    a = p.parse_args()
    with open(os.path.join(a.work, "bench.json"), "w") as f:
        json.dump({"passphrase": a.passphrase, "key": "keypair.pem", "video": "video.custos", "png": "png.custos", "runs": a.runs}, f)
    with static_server(a.work) as base, chromium() as driver:
        driver.get(base + "/tests/bench.html")
        wait_for(driver, "document.body.dataset.state === 'done'", 900, "the benchmark page")
        result = json.loads(driver.execute_script("return document.getElementById('result').textContent"))
    if "error" in result:
        raise SystemExit(f"bench.py: the page failed: {result['error']}")
    for line in result["lines"]:
        print(line)


if __name__ == "__main__":
    main()
