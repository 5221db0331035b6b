"""A 60-second run of the soak (tests/soak.py; `make soak` runs it for 10 minutes): mixed
streaming and non-streaming traffic with client aborts, upstream resets mid-stream and config
reloads; no crash, no file-descriptor growth, memory back near its baseline, every request
counted once by the gateway, every record verifies."""

from __future__ import annotations

import json
import os

import soak


def test_soak_60s(tmp_path):
    r = soak.run(float(os.environ.get("SOAK_SECONDS", "60")), 6, tmp_path)
    print(json.dumps(r, indent=2))
    assert r["sent"] > 1000 and r["faults_injected"] > 100 and r["reloads"] >= 10, r
    assert soak.check(r) == [], r
