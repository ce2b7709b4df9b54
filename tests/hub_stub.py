"""A loopback stand-in for the Hugging Face Hub, for testing `hub_exports.push` without a network.

It speaks only the requests that huggingface_hub 2.4.0 makes for `HfApi.create_repo(..., exist_ok=True)`
followed by `HfApi.upload_folder(...)` when `HF_HUB_DISABLE_XET=1`. With xet disabled the client first
asks `/preupload` how to send each file; we answer "regular" for all of them, so every file's bytes
arrive base64-encoded inside the NDJSON body of the `/commit` request and no LFS or xet storage
has to be faked. Committed files are written to `<root>/<owner>/<name>/<path>`, and every request
is recorded as `(method, path)` so tests can assert which calls were made.
"""

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_REPO_ROUTE = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit)/(?P<rev>[^/]+)")


class LoopbackHub:
    """A Hub stub on 127.0.0.1 (free port), served from a daemon thread while the `with` block runs."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: list[tuple[str, str]] = []
        self.repos: set[str] = set()
        self.url = ""
        self._lock = threading.Lock()  # requests arrive on one thread per connection
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> "LoopbackHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = unquote(urlsplit(self.path).path)
                # Always drain the body first: replying before the client has sent it all can reset
                # the connection and surface as a confusing client-side error instead of our answer.
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hub._lock:
                    hub.requests.append((self.command, path))
                if self.headers.get("Content-Encoding") or self.headers.get("Transfer-Encoding"):
                    # huggingface_hub sends plain bodies with a Content-Length; anything else would be misread.
                    status, payload, error_code = 415, {"error": "compressed or chunked bodies unsupported"}, None
                else:
                    status, payload, error_code = hub._handle(self.command, path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if error_code:  # the client maps X-Error-Code to RepositoryNotFoundError and friends
                    self.send_header("X-Error-Code", error_code)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

            def log_message(self, *args):  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, method: str, path: str, body: bytes):
        """Return `(status, json_payload, x_error_code)` for one request."""
        if (method, path) == ("POST", "/api/repos/create"):
            spec = json.loads(body)
            if not spec.get("organization") or spec.get("type", "model") != "model":
                return 400, {"error": "the stub only creates '<owner>/<name>' model repos"}, None
            repo_id = f"{spec['organization']}/{spec['name']}"
            with self._lock:
                existed = repo_id in self.repos
                self.repos.add(repo_id)
            # Like the Hub, an existing repo is a 409; `exist_ok=True` accepts it but still reads "url".
            return (409 if existed else 200), {"url": f"{self.url}/{repo_id}"}, None
        if (method, path) == ("POST", "/api/validate-yaml"):  # README.md front matter check
            return 200, {"errors": [], "warnings": []}, None
        route = _REPO_ROUTE.fullmatch(path) if method == "POST" else None
        if route is None:
            # Anything else (e.g. GET /api/agent-harnesses when telemetry is on) is optional for the
            # client: a quick JSON 404 lets it carry on instead of waiting on a timeout.
            return 404, {"error": f"hub stub does not implement {method} {path}"}, None
        repo_id, op, rev = route["repo"], route["op"], route["rev"]
        if repo_id not in self.repos:
            return 404, {"error": f"Repository {repo_id} not found"}, "RepoNotFound"
        if rev != "main":  # only one branch is modelled, so other revisions cannot exist
            return 404, {"error": f"Invalid rev id: {rev}"}, "RevisionNotFound"
        if op == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]}, None
        return self._commit(repo_id, body)

    def _commit(self, repo_id: str, body: bytes):
        repo_dir = (self.root / repo_id).resolve()
        writes = []
        # Validate the whole commit before writing anything, so a rejected commit leaves no trace.
        for item in (json.loads(line) for line in body.splitlines() if line.strip()):
            if item["key"] == "header":
                continue
            value = item["value"]
            if item["key"] != "file" or value.get("encoding") != "base64":
                return 400, {"error": f"unsupported commit operation {item['key']!r}"}, None
            target = (repo_dir / value["path"]).resolve()
            if not target.is_relative_to(repo_dir):  # never let a crafted path escape the root
                return 400, {"error": f"invalid path {value['path']!r}"}, None
            writes.append((target, base64.b64decode(value["content"])))
        with self._lock:
            for target, content in writes:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            oid = f"{len(self.requests):040x}"  # any 40-hex string passes the client's checks
        return 200, {"commitOid": oid, "commitUrl": f"{self.url}/{repo_id}/commit/{oid}"}, None
