"""A distribution-spec registry client on requests, and publishing a layout to it.

Order matters to registries (see docs): blobs before the manifest naming
them, every platform manifest (pushed by digest) before the index, the index
by digest and then under each tag. Blobs already in the repository are not
sent again; blobs pushed to a sibling repository in the same run (the
family's shared lower layers) are cross-mounted instead of uploaded.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import requests

from builder.common.http import Http, RetryPolicy
from builder.errors import BuildError
from builder.oci.layout import INDEX_MT, MANIFEST_MT, Layout

ACCEPT = f"{INDEX_MT}, {MANIFEST_MT}"
CHUNK = 8 << 20
MONOLITHIC_MAX = 16 << 20


@dataclass
class PushStats:
    uploaded: int = 0
    uploaded_bytes: int = 0
    mounted: int = 0
    skipped: int = 0
    manifests: int = 0
    manifests_skipped: int = 0
    requests: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class Registry:
    def __init__(self, host: str, insecure: bool = False, auth: Optional[tuple[str, str]] = None,
                 retries: int = 4, backoff: float = 0.25, chunk_size: int = CHUNK,
                 monolithic_max: int = MONOLITHIC_MAX, sleep: Callable[[float], None] = time.sleep):
        self.host = host
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self.auth = auth
        self.http = Http(RetryPolicy(retries, backoff, sleep=sleep), timeout=(10, 300))
        self.session = self.http.session
        self.chunk_size, self.monolithic_max = chunk_size, monolithic_max
        self.tokens: dict[str, str] = {}    # scope -> bearer token
        self.stats = PushStats()

    # --- HTTP with auth and retries ----------------------------------------------------------

    def _authorization(self, scope: str) -> dict:
        if scope in self.tokens:
            return {"Authorization": f"Bearer {self.tokens[scope]}"}
        if self.auth and "basic" in self.tokens:
            return {"Authorization": "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()}
        return {}

    def _login(self, header: str, scope: str) -> None:
        scheme, params = _challenge(header)
        if scheme == "basic":
            if not self.auth:
                raise BuildError(f"registry {self.host} wants a user name and password (basic auth)")
            self.tokens["basic"] = "1"
            return
        if scheme != "bearer" or "realm" not in params:
            raise BuildError(f"registry {self.host}: unsupported authentication challenge {header!r}")
        q: dict = {"service": params.get("service", "")}
        if scope:
            q["scope"] = scope.split(" ")   # one scope parameter per repository
        r = self.session.get(params["realm"], params=q, auth=self.auth, timeout=30)
        if r.status_code != 200:
            raise BuildError(f"registry {self.host}: token request to {params['realm']} failed: HTTP {r.status_code}")
        doc = r.json()
        token = doc.get("token") or doc.get("access_token")
        if not token:
            raise BuildError(f"registry {self.host}: token server gave no token")
        self.tokens[scope] = token

    def request(self, method: str, url: str, scope: str = "", ok=(200,), data=None, headers=None,
                allow_redirects=True) -> requests.Response:
        if not url.startswith("http"):
            url = self.base + url
        path = urllib.parse.urlsplit(url).path
        for authed in (False, True):
            h = dict(headers or {})
            h.update(self._authorization(scope))
            body = data() if callable(data) else data
            self.stats.requests += 1
            r = self.http.send(method, url, f"registry {self.host}: {method} {path}", data=body, headers=h,
                               allow_redirects=allow_redirects)
            if r.status_code == 401 and not authed and "WWW-Authenticate" in r.headers:
                self._login(r.headers["WWW-Authenticate"], scope)
                continue
            break
        if r.status_code not in ok:
            detail = r.text[:300].strip()
            raise BuildError(f"registry {self.host}: {method} {path}: HTTP {r.status_code} {detail}")
        return r

    def _loc(self, r: requests.Response) -> str:
        loc = r.headers.get("Location")
        if not loc:
            raise BuildError(f"registry {self.host}: upload session without a Location")
        return urllib.parse.urljoin(self.base + "/", loc)

    @staticmethod
    def _with(loc: str, **params) -> str:
        return loc + ("&" if "?" in loc else "?") + urllib.parse.urlencode(params)

    # --- blobs -------------------------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> bool:
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", f"repository:{repo}:pull", ok=(200, 404))
        return r.status_code == 200

    def mount(self, repo: str, digest: str, source: str) -> Optional[str]:
        """Mount from a sibling repository; None when mounted, else the upload session it opened."""
        scope = f"repository:{repo}:pull,push repository:{source}:pull"
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/?" + urllib.parse.urlencode({"mount": digest, "from": source}),
                         scope, ok=(201, 202))
        return None if r.status_code == 201 else self._loc(r)

    def upload(self, repo: str, digest: str, size: int, open_blob, session: Optional[str] = None) -> None:
        scope = f"repository:{repo}:pull,push"
        loc = session or self._loc(self.request("POST", f"/v2/{repo}/blobs/uploads/", scope, ok=(202,)))
        if size <= self.monolithic_max:
            def body():
                with open_blob() as fh:
                    return fh.read()
            self.request("PUT", self._with(loc, digest=digest), scope, ok=(201,), data=body,
                         headers={"Content-Type": "application/octet-stream"})
        else:
            offset = 0
            with open_blob() as fh:
                while offset < size:
                    chunk = fh.read(self.chunk_size)
                    end = offset + len(chunk) - 1
                    r = self.request("PATCH", loc, scope, ok=(202,), data=chunk,
                                     headers={"Content-Type": "application/octet-stream",
                                              "Content-Range": f"{offset}-{end}"})
                    loc = self._loc(r)
                    offset = end + 1
            self.request("PUT", self._with(loc, digest=digest), scope, ok=(201,),
                         headers={"Content-Type": "application/octet-stream", "Content-Length": "0"})
        self.stats.uploaded += 1
        self.stats.uploaded_bytes += size

    # --- manifests ---------------------------------------------------------------------------

    def manifest_digest(self, repo: str, ref: str) -> Optional[str]:
        r = self.request("HEAD", f"/v2/{repo}/manifests/{ref}", f"repository:{repo}:pull", ok=(200, 404),
                         headers={"Accept": ACCEPT})
        if r.status_code == 404:
            return None
        return r.headers.get("Docker-Content-Digest")

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> None:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.manifest_digest(repo, ref) == digest:
            self.stats.manifests_skipped += 1
            return
        self.request("PUT", f"/v2/{repo}/manifests/{ref}", f"repository:{repo}:pull,push", ok=(201,),
                     data=data, headers={"Content-Type": media_type})
        self.stats.manifests += 1


@dataclass(frozen=True)
class PushTarget:
    name: str                 # image name, e.g. freebsd14.2-minimal
    tags: tuple[str, ...]
    index_digest: str


def foreign_base_names(layout: Layout, targets: list[PushTarget], host: str, namespace: str) -> list[str]:
    """base.name annotations that point outside HOST/NAMESPACE: the release file's publish.namespace
    named another registry when these images were built (the name is in the manifest, so fixed then)."""
    prefix = f"{host}/{namespace}/" if namespace else f"{host}/"
    out = set()
    for t in targets:
        for d in layout.read_json(t.index_digest).get("manifests", []):
            name = (layout.read_json(d["digest"]).get("annotations") or {}).get("org.opencontainers.image.base.name")
            if name and not name.startswith(prefix):
                out.add(name)
    return sorted(out)


def targets_in_layout(layout: Layout, names: Optional[list[str]] = None) -> list[PushTarget]:
    """Each image's multi-arch index and the tags naming it (refs NAME:TAG to an index)."""
    by: dict[tuple[str, str], list[str]] = {}
    for ref, desc in sorted(layout.refs().items()):
        if desc.media_type != INDEX_MT or ":" not in ref:
            continue
        name, tag = ref.rsplit(":", 1)
        if names and name not in names:
            continue
        by.setdefault((name, desc.digest), []).append(tag)
    return [PushTarget(n, tuple(tags), d) for (n, d), tags in sorted(by.items())]


def publish(layout: Layout, registry: Registry, namespace: str, targets: list[PushTarget],
            dry_run: bool = False, log=lambda m: None) -> PushStats:
    """Push each target's blobs, manifests and index; parents' layers are mounted into children."""
    stats = registry.stats
    where: dict[str, str] = {}          # blob digest -> a repository that has it (this run)
    ns = namespace.strip("/")
    for t in targets:
        repo = f"{ns}/{t.name}" if ns else t.name
        index_bytes = layout.read_blob(t.index_digest)
        index = layout.read_json(t.index_digest)
        for m in index["manifests"]:
            man_bytes = layout.read_blob(m["digest"])
            man = layout.read_json(m["digest"])
            for blob in [man["config"]] + man["layers"]:
                d, size = blob["digest"], blob["size"]
                if dry_run:
                    log(f"would push {repo}@{d} ({size} bytes)")
                    continue
                if registry.blob_exists(repo, d):
                    stats.skipped += 1
                elif d in where and where[d] != repo:
                    session = registry.mount(repo, d, where[d])
                    if session is None:
                        stats.mounted += 1
                        log(f"mounted {d[:19]} from {where[d]} into {repo}")
                    else:
                        registry.upload(repo, d, size, lambda d=d: layout.open_blob(d), session)
                else:
                    registry.upload(repo, d, size, lambda d=d: layout.open_blob(d))
                    log(f"uploaded {d[:19]} ({size} bytes) to {repo}")
                where.setdefault(d, repo)
            if not dry_run:
                registry.put_manifest(repo, m["digest"], man_bytes, MANIFEST_MT)
        if dry_run:
            log(f"would push {repo}:{','.join(t.tags)} -> {t.index_digest}")
            continue
        registry.put_manifest(repo, t.index_digest, index_bytes, INDEX_MT)
        for tag in t.tags:
            registry.put_manifest(repo, tag, index_bytes, INDEX_MT)
        log(f"pushed {repo}:{','.join(t.tags)} -> {t.index_digest}")
    return stats


def credentials(user: Optional[str], password_env: str = "FREEBSD_IMAGES_REGISTRY_PASSWORD"):
    """(user, password) for a registry, the password read from the environment so it never sits in argv."""
    return (user, os.environ.get(password_env, "")) if user else None


def parse_destination(dest: str) -> tuple[str, str]:
    """``registry.example.org[:port]/namespace`` -> (host, namespace)."""
    dest = re.sub(r"^(docker|https?)://", "", dest).rstrip("/")
    host, _, ns = dest.partition("/")
    if not host:
        raise BuildError(f"bad registry destination {dest!r}; want HOST[:PORT]/NAMESPACE")
    return host, ns
