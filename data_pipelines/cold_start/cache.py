"""The per-item, per-stage cache: an append-only JSONL file, one line per finished (sample id, stage, fingerprint).

A line is written whole and flushed to disk before the stage counts as done, so a crash, kill -9 or Ctrl-C loses at
most the stages in flight; a torn last line (killed mid-write) is cut off when the cache is reopened. A stage whose
reply was rejected for good is cached too (`ok: false` with its reason), so a finished build re-run generates
nothing. A request that *failed* (the endpoint did not answer) is never cached: the next run retries it.

The fingerprint (`remote.fingerprint`) hashes everything that determines the stage's result: model, sampling
parameters, attempts, the exact prompt text and the image bytes. A changed config therefore misses the cache and
regenerates what it changes (and what depends on it); the old lines stay in the file, unused, and a return to the
old config finds them again. Lines written before fingerprints existed have none and are never reused.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "cache.jsonl")
>>> c = StageCache(path); _ = c.put("a", "describe", "fp1", ok=True, text="x", tokens=3); c.close()
>>> StageCache(path).get("a", "describe", "fp1")["tokens"], StageCache(path).get("a", "describe", "fp2")
(3, None)
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class StageCache:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[tuple[str, str, str | None], dict[str, Any]] = {}
        if self.path.exists():
            self._load()
        self._lock = threading.Lock()
        self._handle = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a torn last line has no newline yet
        if len(complete) != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
        for line in complete.decode("utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                self._entries.setdefault((entry["id"], entry["stage"], entry.get("fp")), entry)

    def get(self, sample_id: str, stage: str, fp: str) -> dict[str, Any] | None:
        return self._entries.get((sample_id, stage, fp))

    def put(self, sample_id: str, stage: str, fp: str, **fields: Any) -> dict[str, Any]:
        key = (sample_id, stage, fp)
        entry = {"id": sample_id, "stage": stage, "fp": fp, **fields}
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            if key in self._entries:  # never two lines for one key
                return self._entries[key]
            if self._handle.closed:  # a reply after a second Ctrl-C ended the build: the file is no longer ours
                return entry
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._entries[key] = entry
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        with self._lock:  # a reply being written (a worker still in flight) is written whole first
            self._handle.close()
