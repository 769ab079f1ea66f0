"""Public-domain English prose for the demo model, fetched as Debian packages.

The only text corpus we can reach here comes through apt. Jane Austen's six novels
(1811-1818, public domain) ship in Debian's `r-cran-janeaustenr` (package code MIT);
they are stored as an R lazy-load database, so we read it with the small R
unserializer below instead of installing R. We pin the package version so the corpus
is byte-for-byte reproducible, and record what we used next to the cache.
"""
from __future__ import annotations

import glob
import json
import re
import os
import struct
import subprocess
import tempfile
import zlib

PACKAGE = "r-cran-janeaustenr"
VERSION = "1.0.0-1"  # Debian bookworm; a different version would change the corpus
DATA_DIR = "usr/lib/R/site-library/janeaustenr/data"
BOOKS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma",
         "northangerabbey", "persuasion"]


class _RReader:
    """Just enough of R's XDR serialization format (R Internals, 'Serialization
    Formats') to read character vectors; anything else is an error, not a guess."""

    def __init__(self, buf: bytes):
        self.b, self.i, self.refs = buf, 0, []

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.b, self.i)
        self.i += 4
        return v

    def header(self) -> None:
        if self.b[:2] != b"X\n":
            raise ValueError("not an XDR R serialization")
        self.i = 2
        version = self.int()
        self.int(), self.int()  # writer's R version, minimal reader version
        if version == 3:
            n = self.int()
            self.i += n  # native encoding name

    def item(self):
        flags = self.int()
        typ, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if typ in (254, 253, 252, 251, 247, 242, 241):  # NULL and the special environments
            return None
        if typ == 255:  # reference to an earlier symbol/environment
            idx = flags >> 8 or self.int()
            return self.refs[idx - 1]
        if typ == 1:  # symbol
            name = self.item()
            self.refs.append(name)
            return name
        if typ == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            s = self.b[self.i:self.i + n].decode("utf-8", errors="replace")
            self.i += n
            return s
        if typ in (2, 6):  # pairlist (attributes): attr?, tag?, car, cdr
            out = {}
            node_flags_attr, node_tag = has_attr, has_tag
            while True:
                if node_flags_attr:
                    self.item()
                tag = self.item() if node_tag else None
                out[tag] = self.item()
                nxt = self.int()
                if (nxt & 0xFF) == 254:
                    return out
                if (nxt & 0xFF) not in (2, 6):
                    raise ValueError(f"unexpected pairlist tail type {nxt & 0xFF}")
                node_flags_attr, node_tag = nxt & (1 << 9), nxt & (1 << 10)
        if typ == 16:  # character vector
            n = self.int()
            v = [self.item() for _ in range(n)]
        elif typ in (10, 13):  # logical, integer
            n = self.int()
            v = list(struct.unpack_from(f">{n}i", self.b, self.i))
            self.i += 4 * n
        elif typ == 14:  # double
            n = self.int()
            v = list(struct.unpack_from(f">{n}d", self.b, self.i))
            self.i += 8 * n
        elif typ == 19:  # list
            n = self.int()
            v = [self.item() for _ in range(n)]
        else:
            raise ValueError(f"R type {typ} not supported by this small reader")
        if has_attr:
            self.item()
        return v


def _read_lazyload_db(rdb_path: str) -> list:
    """Every object in an R .rdb file, in file order (each is a 4-byte length + zlib)."""
    raw = open(rdb_path, "rb").read()
    objects, pos = [], 0
    while pos < len(raw):
        d = zlib.decompressobj()
        data = d.decompress(raw[pos + 4:])
        pos = len(raw) - len(d.unused_data)
        r = _RReader(data)
        r.header()
        objects.append(r.item())
    return objects


def fetch_deb(workdir: str) -> str:
    """apt-get download the pinned package and unpack it; returns the unpacked root."""
    subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    deb = glob.glob(os.path.join(workdir, f"{PACKAGE}_*.deb"))[0]
    root = os.path.join(workdir, "root")
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    return root


def load_austen(cache_dir: str) -> dict[str, str]:
    """The six novels as {name: text}, cached as JSON in cache_dir."""
    cache = os.path.join(cache_dir, "austen.json")
    if os.path.exists(cache):
        return json.load(open(cache))
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = fetch_deb(tmp)
        objs = _read_lazyload_db(os.path.join(root, DATA_DIR, "Rdata.rdb"))
    # Each novel is a character vector of lines; which is which we tell by its title page.
    novels = [o for o in objs if isinstance(o, list) and len(o) > 1000 and all(isinstance(s, (str, type(None))) for s in o[:50])]
    titles = {
        "sensesensibility": "SENSE AND SENSIBILITY", "prideprejudice": "PRIDE AND PREJUDICE",
        "mansfieldpark": "MANSFIELD PARK", "emma": "EMMA", "northangerabbey": "NORTHANGER ABBEY",
        "persuasion": "PERSUASION",
    }
    out = {}
    for name, title in titles.items():
        for lines in novels:
            head = " ".join(s or "" for s in lines[:10]).upper()
            if title in head and name not in out and not (name == "emma" and "PARK" in head):
                out[name] = _join_lines(lines)
                break
    if sorted(out) != sorted(BOOKS):
        raise RuntimeError(f"found {sorted(out)} in {PACKAGE}, expected {BOOKS}")
    json.dump(out, open(cache, "w"))
    json.dump({"package": PACKAGE, "version": VERSION, "books": BOOKS,
               "chars": {k: len(v) for k, v in out.items()}},
              open(os.path.join(cache_dir, "austen-source.json"), "w"), indent=1)
    return out


def _join_lines(lines: list) -> str:
    """Rejoin hard-wrapped lines into paragraphs (blank line = paragraph break)."""
    paras, cur = [], []
    for s in lines:
        s = (s or "").strip()
        if s:
            cur.append(re.sub(r" {2,}", " ", s))  # the texts put two spaces after a full stop
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return "\n\n".join(paras)


if __name__ == "__main__":
    import sys
    books = load_austen(sys.argv[1] if len(sys.argv) > 1 else "tools/train/out/data")
    for k, v in books.items():
        print(k, len(v), repr(v[:120]))
