"""A tiny Hugging Face Hub for tests: in-memory model repos served over HTTP on 127.0.0.1 (port 0, one thread), with
just the endpoints huggingface_hub's snapshot_download, hf_hub_download and HfApi.model_info use, so the real client
runs end to end against it. Every request is recorded, so a test can assert what was (not) fetched.

    with FakeHub({"org/tiny": {"model_index.json": b"{}", "unet/x.safetensors": b"..."}}) as hub:
        snapshot_download("org/tiny", endpoint=hub.url, cache_dir=tmp)
        hub.downloaded("org/tiny")  -> {"model_index.json", "unet/x.safetensors"}

Like the Hub: LFS files (*.safetensors, *.bin, ...) answer the resolve HEAD with a 302 to another host name
('localhost' for '127.0.0.1', the "CDN"), with X-Linked-Etag (the sha256) and X-Linked-Size, so the client takes the
metadata from the 302 itself; other files carry their git blob sha1 as ETag. A gated repo shows its listing but
answers every file with 401 (not logged in) or 403 and X-Error-Code: GatedRepo. No X-Xet-Hash is ever sent (hf_xet
would switch protocols)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS = (".safetensors", ".bin", ".ckpt", ".pt", ".gguf")


def git_sha1(data: bytes) -> str:
    """The git blob id of a file's content (what the Hub's ETag and the cache's blob name are for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    """One repo: commits (sha -> files), the newest being what 'main' points at."""

    def __init__(self, files: dict[str, bytes], gated: int | None = None):
        self.commits: dict[str, dict[str, bytes]] = {}
        self.gated = gated  # 401 or 403 on every file, else None
        self.push(files)

    def push(self, files: dict[str, bytes]) -> str:
        """A new commit with these files; 'main' moves to it."""
        digest = json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items()))
        self.main = hashlib.sha1(f"{len(self.commits)}:{digest}".encode()).hexdigest()
        self.commits[self.main] = dict(files)
        return self.main

    def files(self, revision: str | None) -> tuple[str, dict[str, bytes]] | None:
        sha = self.main if revision in (None, "main") else revision
        return (sha, self.commits[sha]) if sha in self.commits else None


def entry(path: str, data: bytes) -> dict:
    """A tree listing entry, with the LFS pointer's sha256 for LFS files."""
    out = {"type": "file", "path": path, "size": len(data), "oid": git_sha1(data)}
    if path.endswith(LFS):
        out["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return out


class FakeHub:
    """The server: FakeHub(repos, gated={"org/g": 401}).start() (or a with-block); .url, .requests, .stop()."""

    def __init__(self, repos: dict[str, dict[str, bytes]], gated: dict[str, int] | None = None):
        self.repos = {rid: Repo(files, (gated or {}).get(rid)) for rid, files in repos.items()}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects of the Hub

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def downloaded(self, repo: str) -> set[str]:
        """The paths of `repo` whose content was fetched (GET on resolve, or on the CDN for LFS files)."""
        got = set()
        by_sha = {hashlib.sha256(data).hexdigest(): path for files in self.repos[repo].commits.values()
                  for path, data in files.items()}
        for method, path in self.requests:
            if method != "GET":
                continue
            if m := re.fullmatch(rf"/{re.escape(repo)}/resolve/[^/]+/(.+)", unquote(urlsplit(path).path)):
                got.add(m[1])
            elif (m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path)) and m[1] in by_sha:
                got.add(by_sha[m[1]])
        return got

    # ---- HTTP

    def _send(self, h, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False,
              ctype: str = "application/json") -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _error(self, h, status: int, code: str, message: str, head: bool, extra: dict | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(h, status, body, {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})}, head)

    def _lookup(self, h, rid: str, revision: str | None, head: bool):
        repo = self.repos.get(rid)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found", head)
        found = repo.files(revision)
        if found is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        return repo, *found

    def _handle(self, h, head: bool) -> None:
        self.requests.append((h.command, h.path))
        url = urlsplit(h.path)
        path, query = unquote(url.path), parse_qs(url.query)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            self._model_info(h, m[1], m[2], query, head)
        elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
            self._tree(h, m[1], m[2], (m[3] or "").strip("/"), query, head)
        elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            self._resolve(h, m[1], m[2], m[3], head)
        elif m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
            self._cdn(h, m[1], head)
        else:
            self._error(h, 404, "NotFound", "not found", head)

    def _model_info(self, h, rid: str, revision: str | None, query: dict, head: bool) -> None:
        if not (found := self._lookup(h, rid, revision, head)):
            return
        repo, sha, files = found
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path in sorted(files):
            e = entry(path, files[path])
            sibling = {"rfilename": path}
            if blobs:
                sibling |= {"size": e["size"], "blobId": e["oid"]}
                if "lfs" in e:
                    sibling["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": 134}
            siblings.append(sibling)
        body = {"id": rid, "modelId": rid, "sha": sha, "private": False, "gated": "auto" if repo.gated else False,
                "siblings": siblings, "lastModified": "2024-01-01T00:00:00.000Z", "tags": [], "downloads": 0}
        self._send(h, 200, json.dumps(body).encode(), head=head)

    def _tree(self, h, rid: str, revision: str, under: str, query: dict, head: bool) -> None:
        if not (found := self._lookup(h, rid, revision, head)):
            return
        _, _, files = found
        paths = [p for p in sorted(files) if not under or p.startswith(under + "/")]
        if query.get("recursive", ["false"])[0].lower() != "true":
            paths = [p for p in paths if "/" not in p[len(under) + 1 if under else 0:]]
        self._send(h, 200, json.dumps([entry(p, files[p]) for p in paths]).encode(), head=head)

    def _resolve(self, h, rid: str, revision: str, name: str, head: bool) -> None:
        if not (found := self._lookup(h, rid, revision, head)):
            return
        repo, sha, files = found
        headers = {"X-Repo-Commit": sha}
        if repo.gated:
            return self._error(h, repo.gated, "GatedRepo", f"Access to model {rid} is restricted. You must have "
                               f"access to it and be authenticated to access it. Please log in.", head, headers)
        if name not in files:
            return self._error(h, 404, "EntryNotFound", f"{name} does not exist on {revision}", head, headers)
        e, data = entry(name, files[name]), files[name]
        if "lfs" in e:  # like the Hub: a 302 to the CDN (another host), the metadata in X-Linked-*
            headers |= {"X-Linked-Etag": f'"{e["lfs"]["oid"]}"', "X-Linked-Size": str(len(data)),
                        "ETag": f'"{e["oid"]}"', "Location": f"http://localhost:{self.port}/cdn/{e['lfs']['oid']}"}
            return self._send(h, 302, b"", headers, head)
        headers["ETag"] = f'"{e["oid"]}"'
        self._send(h, 200, data, headers, head, ctype="application/octet-stream")

    def _cdn(self, h, sha256: str, head: bool) -> None:
        data = next((v for r in self.repos.values() for files in r.commits.values() for v in files.values()
                     if hashlib.sha256(v).hexdigest() == sha256), None)
        if data is None:
            return self._send(h, 404, b"", head=head)
        if rng := re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", "")):
            start, end = int(rng[1]), int(rng[2] or len(data) - 1)
            return self._send(h, 206, data[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{len(data)}"},
                              head, ctype="application/octet-stream")
        self._send(h, 200, data, head=head, ctype="application/octet-stream")
