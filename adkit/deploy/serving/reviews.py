"""Inspectors' reviews of the service's answers: serve.py --review_db FILE, --keep_images DIR.

A review names an answer by its request_id and says what the part really was:

    false_alarm        the model said defect, the part is good
    defect_confirmed   the model said defect, the part is defective
    missed_defect      the model said good, the part is defective

Reviews go to a SQLite file (WAL journal, synchronous writes, a busy timeout and one connection
per thread: concurrent posts all land, and a row committed before a kill -9 is there after
the restart). The service keeps its last answers in memory (``RecentAnswers``: the last
RECENT_ANSWERS, with their image bytes only when --keep_images is set, at most RECENT_IMAGE_MB),
so a review can be checked against the answer it reviews, and the reviewed image, only it, be
saved then in --keep_images (``KeptImages``: oldest files removed first beyond its size).
``read_reviews`` reads the file or its CSV export for main.py --mode update.
"""
import collections
import csv
import os
import sqlite3
import threading
import time

from adkit.core.errors import UserError

VERDICTS = {  # verdict -> (the model's label it reviews, what the part is)
    "false_alarm": ("defect", "good"),
    "defect_confirmed": ("defect", "defect"),
    "missed_defect": ("good", "defect"),
}
RECENT_ANSWERS = 1000
RECENT_IMAGE_MB = 256
NOTE_CHARS = 2000
COLUMNS = ["id", "time", "model_name", "request_id", "verdict", "truth", "note", "score", "label", "threshold",
           "model", "model_version", "file_name", "part_id", "image"]
_SCHEMA = """CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT, model_name TEXT, request_id TEXT, verdict TEXT,
    truth TEXT, note TEXT, score REAL, label TEXT, threshold REAL, model TEXT, model_version TEXT,
    file_name TEXT, part_id TEXT, image TEXT)"""
_IMAGE_SUFFIXES = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"BM", ".bmp"), (b"II*\0", ".tif"),
                   (b"MM\0*", ".tif"), (b"RIFF", ".webp"))


class RecentAnswers:
    """The service's last answers by request_id (and their image bytes when ``keep_bytes``)."""

    def __init__(self, keep_bytes, count=RECENT_ANSWERS, image_mb=RECENT_IMAGE_MB):
        self.keep_bytes, self.count, self.budget = keep_bytes, count, image_mb * 1024 * 1024
        self._answers = collections.OrderedDict()
        self._bytes = 0

    def add(self, request_id, answer, data):
        kept = data if self.keep_bytes else b""
        self._answers.pop(request_id, None)
        self._answers[request_id] = (answer, kept)
        self._bytes += len(kept)
        while len(self._answers) > self.count or self._bytes > self.budget:
            _, (_, dropped) = self._answers.popitem(last=False)
            self._bytes -= len(dropped)

    def get(self, request_id):
        """(answer, image bytes or b"") or None when it is not among the last answers."""
        return self._answers.get(request_id)


class KeptImages:
    """--keep_images DIR: reviewed images as <model>/<request_id>.<ext>, written atomically; past
    ``max_mb`` the oldest files (by modification time) are removed first."""

    def __init__(self, folder, max_mb):
        self.folder, self.budget = os.path.abspath(folder), int(max_mb * 1024 * 1024)
        self._lock = threading.Lock()
        os.makedirs(self.folder, exist_ok=True)

    def save(self, model_name, request_id, data):
        from adkit.core.io_utils import write_bytes

        suffix = next((s for magic, s in _IMAGE_SUFFIXES if data.startswith(magic)), ".img")
        folder = os.path.join(self.folder, model_name)  # a served model's name: a folder name already
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, safe_file_name(request_id) + suffix)
        with self._lock:
            write_bytes(path, data)
            self._prune(keep=path)
        return path

    def _prune(self, keep):
        files = []
        for where, _, names in os.walk(self.folder):
            for name in names:
                path = os.path.join(where, name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                files.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.budget:
                break
            if path != keep:  # the image just reviewed stays, even alone over the budget
                os.remove(path)
                total -= size


def safe_file_name(request_id):
    """The request id as a file name: a client's X-Request-Id may hold "/" or "..", so anything
    but letters, digits, "-" and "_" makes it the id's SHA-256 instead."""
    import hashlib
    import re

    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", request_id):
        return request_id
    return hashlib.sha256(request_id.encode()).hexdigest()[:32]


class ReviewStore:
    """The SQLite file of reviews; ``add`` and ``rows`` may be called from any thread."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self._local = threading.local()
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._connection().execute(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise UserError(f"--review_db {path}: not a review database ({err})") from None

    def _connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA busy_timeout = 30000")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")  # committed means on disk
            self._local.connection = connection
        return connection

    def add(self, review):
        """Store one review (a dict of COLUMNS but id and time); returns its id."""
        row = {**review, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        names = [c for c in COLUMNS if c != "id"]
        cursor = self._connection().execute(
            f"INSERT INTO reviews ({','.join(names)}) VALUES ({','.join('?' * len(names))})",
            [row.get(c) for c in names])
        return cursor.lastrowid

    def rows(self, model_name=None):
        query = f"SELECT {','.join(COLUMNS)} FROM reviews"
        found = (self._connection().execute(query + " WHERE model_name = ? ORDER BY id", (model_name,))
                 if model_name is not None else self._connection().execute(query + " ORDER BY id"))
        return [dict(zip(COLUMNS, values)) for values in found]


def reviews_csv(rows):
    """The CSV export of review rows (what main.py --mode update --reviews also reads)."""
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def read_reviews(path):
    """The reviews of a --review_db file or of its CSV export, oldest first."""
    if not os.path.isfile(path):
        raise UserError(f"--reviews {path}: file not found (expected serve.py's --review_db file or its CSV export)")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"SQLite format 3"):
        return ReviewStore(path).rows()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"verdict", "image", "model_name"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"--reviews {path}: neither a review database nor its CSV export "
                            f"(columns {', '.join(sorted(missing))} missing)")
        return list(reader)
