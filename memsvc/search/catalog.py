"""The index catalog of one data directory: an entry per index, saved as
root/<name>/meta.json (written atomically) beside the saved index root/<name>/v<iv>/."""
import json
import logging
import shutil
import threading
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from memsvc.core.errors import NotFound
from memsvc.core.search import BUILDING, FAILED, READY, IndexInfo
from memsvc.store.files import write_atomic

LOG = logging.getLogger("memsvc.search")


class Entry:
    """One index: its catalog info, the loaded Index, and the lock its searches and refreshes take."""

    def __init__(self, info: IndexInfo, unindexed=()):
        self.info, self.index = info, None
        self.unindexed = np.asarray(unindexed, np.int64)  # zero rows kept out of a cosine index
        self.lock = threading.Lock()
        self.dropped = self.refreshing = False
        self.worker = None  # the build process, killed by drop


class Catalog:
    """The entries by name. Reloading marks an interrupted build FAILED and loads READY indexes
    (one that cannot load becomes FAILED: a broken index must not stop the server)."""

    def __init__(self, root):
        self.root = Path(root)
        self._entries: dict[str, Entry] = {}
        for meta in sorted(self.root.glob("*/meta.json")):
            try:
                saved = json.loads(meta.read_text())
                entry = Entry(IndexInfo(**saved["info"]), saved.get("unindexed", []))
            except Exception as e:  # noqa: BLE001 - a damaged derived file must not stop the server
                LOG.warning("index catalog: %s is damaged (%s); dropping that index", meta, e)
                shutil.rmtree(meta.parent, ignore_errors=True)
                continue
            if entry.info.state == BUILDING:
                entry.info = replace(entry.info, state=FAILED, error="interrupted by a restart; drop and create it again")
            elif entry.info.state == READY:
                try:
                    from indexes.ann import load_index

                    entry.index = load_index(self.index_dir(entry.info))
                except Exception as e:  # noqa: BLE001 - reported by DescribeIndex
                    LOG.exception("cannot load index %s", entry.info.name)
                    entry.info = replace(entry.info, state=FAILED, error=f"cannot load: {e}")
            self._entries[entry.info.name] = entry

    def __contains__(self, name) -> bool:
        return name in self._entries

    def names(self) -> list:
        return sorted(self._entries)

    def entries(self) -> list:
        return list(self._entries.values())

    def get(self, name, field_name="index") -> Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(f"{field_name}: unknown index {name!r}")
        return entry

    def add(self, entry: Entry):
        """Saves the entry, then lists it: one that cannot be saved (a full disk) is not left behind."""
        try:
            self.save(entry)
        except BaseException:
            shutil.rmtree(self.root / entry.info.name, ignore_errors=True)
            raise
        self._entries[entry.info.name] = entry

    def remove(self, name) -> Entry:
        return self._entries.pop(name)

    def index_dir(self, info: IndexInfo) -> Path:
        return self.root / info.name / f"v{info.version}"

    def save(self, entry: Entry):
        folder = self.root / entry.info.name
        folder.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"info": asdict(entry.info), "unindexed": entry.unindexed.tolist()}, indent=1)
        write_atomic(folder / "meta.json", lambda f: f.write(meta.encode()))
