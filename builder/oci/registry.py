"""A distribution-spec registry client on requests, and publishing a layout to it.

Order matters to registries (see docs): blobs before the manifest naming
them, every platform manifest (pushed by digest) before the index, the index
by digest and then under each tag. Blobs already in the repository are not
sent again; blobs pushed to a sibling repository in the same run (the
family's shared lower layers) are cross-mounted instead of uploaded.

A registry is not trusted to be reasonable (see ``Limits``): every reply is read
with a byte limit and every request, its retries, redirects and login within a
deadline; JSON is checked for depth and shape before use; credentials go only
to the registry's own scheme, host and port, and plain HTTP only with
``insecure``; repository names and tags follow the distribution-spec grammar
before any of them becomes a URL or a file name.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

from builder.common.http import Budget, Http, Reply, RetryPolicy, watching
from builder.errors import BuildError
from builder.oci import attest
from builder.oci.layout import EMPTY_BLOB, INDEX_MT, MANIFEST_MT, Descriptor, Layout, canonical, descriptors
from builder.oci.sign import (DSSE_MT, DSSE_SCHEME, DSSE_SCHEME_VALUE, DSSE_SIGNED_BY, DSSE_STATEMENT,
                              SigningPlan, dsse_envelope, sign_manifest)

ACCEPT = f"{INDEX_MT}, {MANIFEST_MT}"
CHUNK = 8 << 20
MONOLITHIC_MAX = 16 << 20


@dataclass(frozen=True)
class Limits:
    """What one registry operation may cost; tests make them small."""
    reply: int = 4 << 20            # bytes of a reply read whole: manifests, indexes, referrers, tokens, errors
    blob: int = 1 << 30             # bytes of a blob read whole (diff and reproduce hold layers in memory)
    deadline: float = 120.0         # seconds for a request and its reply: every attempt, redirect and the login
    blob_deadline: float = 30 * 60.0  # ... when a blob's body goes up or comes down (open_blob: the whole read)


LIMITS = Limits()
JSON_DEPTH = 32                     # an OCI index nests 5 deep; json.loads itself stops near 1000
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})

# --- names: the distribution-spec grammar ----------------------------------------------------
# A name or reference becomes a URL path (requests folds dot segments: ../evil/img would reach
# /v2/evil/img) and a lookaside directory, so nothing outside the grammar gets that far.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
NAME_MAX = 255                      # what registries (and docker's reference grammar) accept
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")   # the registered algorithms
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
# the API paths we send: /v2/ and /v2/NAME/{blobs/DIGEST, blobs/uploads/, manifests/REF, referrers/DIGEST, tags/list}
_API_PATH = re.compile(r"/v2/(?:(?P<name>.+)/(?:blobs/(?P<blob>[^/]+)|blobs/uploads/|manifests/(?P<ref>[^/]+)"
                       r"|referrers/(?P<subject>[^/]+)|tags/list))?")


def check_name(name: str, what: str) -> str:
    """name if it is a repository name of the distribution spec, else a refusal naming what and it."""
    if not isinstance(name, str) or len(name) > NAME_MAX or not _NAME.fullmatch(name):
        raise BuildError(f"{what}: {str(name)[:300]!r} is not a repository name (lowercase [a-z0-9] components "
                         f"joined by '.', '_', '__' or '-', separated by '/', at most {NAME_MAX} characters); "
                         "refusing")
    return name


def _grammar(value: str, pattern, what: str, expected: str) -> str:
    """value if the distribution spec's grammar admits it, else a refusal naming what, the value and the rule."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BuildError(f"{what}: {str(value)[:300]!r} is not {expected}; refusing")
    return value


def check_tag(tag: str, what: str) -> str:
    return _grammar(tag, _TAG, what, "a tag ([A-Za-z0-9_] then up to 127 of [A-Za-z0-9._-])")


def check_reference(ref: str, what: str) -> str:
    """A manifest reference: a tag or a digest."""
    return ref if _DIGEST.fullmatch(ref) else check_tag(ref, what)


def check_digest(digest: str, what: str) -> str:
    return _grammar(digest, _DIGEST, what, "a digest (sha256:<64 hex> or sha512:<128 hex>)")


def load_json(data: bytes, what: str) -> Any:
    """A registry's JSON: refused (naming what) when it is not JSON or nests deeper than JSON_DEPTH."""
    try:
        doc = json.loads(data)
    except RecursionError as exc:
        raise BuildError(f"{what}: JSON nested too deeply; refusing") from exc
    except ValueError as exc:
        raise BuildError(f"{what}: not JSON ({type(exc).__name__}); refusing") from exc
    # walked without recursion: what json.loads read, code that recurses over it would not survive
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > JSON_DEPTH:
                raise BuildError(f"{what}: JSON nested deeper than {JSON_DEPTH} levels; refusing")
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return doc


def referrers_index(data: bytes, what: str) -> list[dict]:
    """The descriptors a referrers index lists (the API's answer or a sha256-<hex> tag), shape-checked:
    an object whose manifests (absent: none) is a list of descriptors."""
    doc = load_json(data, what)
    if not isinstance(doc, dict):
        raise BuildError(f"{what}: a referrers index must be a JSON object; refusing")
    return [] if doc.get("manifests") is None else descriptors(doc, "manifests", what)


@dataclass
class PushStats:
    uploaded: int = 0
    uploaded_bytes: int = 0
    mounted: int = 0
    skipped: int = 0
    manifests: int = 0
    manifests_skipped: int = 0
    requests: int = 0
    referrers: int = 0            # artifact manifests (SBOM, provenance) pushed
    referrers_unchanged: int = 0  # ... already there
    referrer_blobs: int = 0       # their documents and the empty config, uploaded
    referrer_tags: int = 0        # sha256-<hex> referrers indexes written (registries without the API)
    signatures: int = 0           # simple-signing signatures written to the lookaside

    def to_json(self) -> dict:
        return asdict(self)


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def _origin(url: str) -> tuple[str, str, Optional[int]]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


REDACTED = "<redacted>"
# Authorization values however they are quoted back at us: a header line, a JSON or
# Python dict echo, or a bare "Basic xxx" / "Bearer xxx".
_AUTH_HEADER = re.compile(r"""(?i)(authorization["']?\s*[:=]\s*["']?)[^\r\n"']*""")
_AUTH_VALUE = re.compile(r"(?i)\b(basic|bearer)(\s+)[A-Za-z0-9._~+/=-]+")
_TOKEN = re.compile(r"[\x21-\x7e]+")


class Registry:
    def __init__(self, host: str, insecure: bool = False, auth: Optional[tuple[str, str]] = None,
                 retries: int = 4, backoff: float = 0.25, chunk_size: int = CHUNK,
                 monolithic_max: int = MONOLITHIC_MAX, sleep: Callable[[float], None] = time.sleep,
                 limits: Optional[Limits] = None):
        if not isinstance(host, str) or not _HOST.fullmatch(host):
            raise BuildError(f"registry {str(host)[:200]!r}: not a host name or address with an optional :PORT; "
                             "refusing")
        self.host = host
        self.insecure = insecure
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self.auth = auth
        self.limits = limits or LIMITS
        self.http = Http(RetryPolicy(retries, backoff, sleep=sleep), timeout=(10, 300))
        self.chunk_size, self.monolithic_max = chunk_size, monolithic_max
        self.tokens: dict[str, str] = {}    # scope -> bearer token
        self.stats = PushStats()

    @classmethod
    def for_destination(cls, dest: str, insecure: bool = False, auth: Optional[tuple[str, str]] = None,
                        chunk_size: int = CHUNK, monolithic_max: int = MONOLITHIC_MAX) -> tuple["Registry", str]:
        """The client for ``HOST[:PORT]/NAMESPACE`` and the namespace: the one way publish and nightly reach
        a registry, so both read a destination (and refuse a bad one) alike."""
        host, namespace = parse_destination(dest)
        return cls(host, insecure=insecure, auth=auth, chunk_size=chunk_size, monolithic_max=monolithic_max), namespace

    # --- HTTP with auth and retries ----------------------------------------------------------

    @property
    def session(self):
        return self.http.session

    def _authorization(self, scope: str) -> dict:
        if scope in self.tokens:
            return {"Authorization": f"Bearer {self.tokens[scope]}"}
        if self.auth and "basic" in self.tokens:
            return {"Authorization": "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()}
        return {}

    def redact(self, text: str) -> str:
        """text without our password, our tokens or any Authorization value (servers echo requests)."""
        secrets = [t for k, t in self.tokens.items() if k != "basic"]
        if self.auth and self.auth[1]:
            user, password = self.auth
            pair = f"{user}:{password}"
            secrets += [base64.b64encode(pair.encode()).decode(), pair, password,
                        urllib.parse.quote(password, safe=""), json.dumps(password)[1:-1]]
        for secret in sorted(set(secrets), key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
        return _AUTH_VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)

    def _refuse(self, message: str) -> BuildError:
        return BuildError(self.redact(f"registry {self.host}: {message}"))

    def _own(self, url: str) -> bool:
        """url is on the registry's own scheme, host and port: the only place our credentials go."""
        return _origin(url) == _origin(self.base)

    def _label(self, url: str) -> str:
        # the path on the registry; elsewhere the URL without its query (a signed upload URL's secret)
        parts = urllib.parse.urlsplit(url)
        return parts.path if self._own(url) else f"{parts.scheme}://{parts.netloc}{parts.path}"

    def _check_url(self, url: str, what: str) -> str:
        """A URL the registry named (upload Location, redirect): https, or plain HTTP with --insecure."""
        parts = urllib.parse.urlsplit(url)
        try:
            parts.port
        except ValueError as exc:
            raise self._refuse(f"{what} {url[:200]!r} has a bad port; refusing") from exc
        if parts.scheme == "http" and not self.insecure:
            raise self._refuse(f"{what} {self._label(url)[:200]} is plain HTTP and the registry is https "
                               "(plain HTTP only with --insecure); refusing")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self._refuse(f"{what} {url[:200]!r} is not an http(s) URL; refusing")
        return url

    def _api(self, path: str) -> str:
        """An API path whose repository name and reference follow the grammar: the one place every
        path we send goes through (ours, and those diff and verify-image make)."""
        m = _API_PATH.fullmatch(urllib.parse.urlsplit(path).path)
        if m is None:
            raise self._refuse(f"{path[:200]!r} is not a registry API path; refusing")
        where = f"registry {self.host}"
        if m["name"] is not None:
            check_name(m["name"], where)
        for digest in (m["blob"], m["subject"]):
            if digest is not None:
                check_digest(digest, where)
        if m["ref"] is not None:
            check_reference(m["ref"], where)
        return path

    def _may_send_password(self, realm: urllib.parse.SplitResult) -> bool:
        # the realm comes from the registry's answer: our password goes there only over TLS,
        # to the registry's own host, or when plain HTTP was asked for (--insecure)
        own = urllib.parse.urlsplit(f"//{self.host}").hostname
        return realm.scheme == "https" or (realm.hostname or "").lower() == (own or "").lower() or self.insecure

    def _login(self, header: str, scope: str, budget: Budget) -> None:
        scheme, params = _challenge(header)
        if scheme == "basic":
            if not self.auth:
                raise self._refuse("wants a user name and password (basic auth)")
            self.tokens["basic"] = "1"
            return
        if scheme != "bearer" or "realm" not in params:
            raise self._refuse(f"unsupported authentication challenge {header[:200]!r}")
        realm = params["realm"]
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self._refuse(f"token realm {realm[:200]!r} is not an http(s) URL")
        if self.auth and not self._may_send_password(parts):
            raise self._refuse(f"token realm {realm} is plain HTTP on another host; not sending the password "
                               "there (an https realm is needed, or --insecure)")
        q: dict = {"service": params.get("service", "")}
        if scope:
            q["scope"] = scope.split(" ")   # one scope parameter per repository
        what = self.redact(f"registry {self.host}: token request to {realm}")
        r = self.http.fetch("GET", realm, what, budget.part(what, self.limits.reply), params=q, auth=self.auth)
        if r.status_code != 200:
            raise self._refuse(f"token request to {realm} failed: HTTP {r.status_code}")
        try:
            doc = load_json(r.content, "token")
        except BuildError as exc:
            raise self._refuse(f"token server {realm} answered {r.headers.get('Content-Type', 'something')!r}, "
                               f"not JSON we accept ({str(exc).split(': ', 1)[-1]})") from exc
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise self._refuse(f"token server {realm} gave no usable token")
        self.tokens[scope] = token

    def _budget(self, method: str, url: str, blob: bool) -> Budget:
        # diff and reproduce read layers whole with GET /v2/NAME/blobs/DIGEST
        m = _API_PATH.fullmatch(urllib.parse.urlsplit(url).path) if self._own(url) else None
        reads_blob = method == "GET" and m is not None and m["blob"] is not None
        return Budget(f"registry {self.host}: {method} {self._label(url)}",
                      self.limits.blob if reads_blob else self.limits.reply,
                      self.limits.blob_deadline if blob or reads_blob else self.limits.deadline, task="answer")

    def request(self, method: str, url: str, scope: str = "", ok=(200,), data=None, headers=None,
                blob: bool = False) -> Reply:
        """url: an API path (/v2/..., checked by _api) or an upload URL from _loc. The reply is read
        whole within Limits; ``blob``: a blob's body goes up, so the blob deadline holds."""
        url = self.base + self._api(url) if url.startswith("/") else self._check_url(url, "URL")
        budget = self._budget(method, url, blob)     # each fetch below holds its deadline (watching)
        for authed in (False, True):
            body = data() if callable(data) else data
            r = self._hops(method, url, scope, lambda u, h, what: self.http.fetch(
                method, u, what, budget.part(what, budget.limit), data=body, headers={**(headers or {}), **h},
                allow_redirects=False))
            if r.status_code == 401 and not authed and "WWW-Authenticate" in r.headers and self._own(r.url):
                self._login(r.headers["WWW-Authenticate"], scope, budget)
                continue
            break
        if r.status_code not in ok:
            # redact the whole body before cutting it, so no secret survives half-cut
            detail = self.redact(r.text[:65536])[:300].strip()
            raise self._refuse(f"{method} {self._label(r.url)}: HTTP {r.status_code} {detail}")
        return r

    def _hops(self, method: str, url: str, scope: str, send: Callable):
        """send(url, auth headers, what) for url and, for GET and HEAD, the redirects it answers with:
        each target checked like an upload Location; Authorization only to the registry's own origin."""
        for _ in range(MAX_REDIRECTS + 1):
            self.stats.requests += 1
            r = send(url, self._authorization(scope) if self._own(url) else {},
                     f"registry {self.host}: {method} {self._label(url)}")
            loc = r.headers.get("Location")
            if r.status_code not in REDIRECTS or method not in ("GET", "HEAD") or not loc:
                return r
            r.close()
            url = self._check_url(urllib.parse.urljoin(url, loc), "redirect to")
        raise self._refuse(f"{method} {self._label(url)}: more than {MAX_REDIRECTS} redirects; refusing")

    def _loc(self, r: Reply) -> str:
        loc = r.headers.get("Location")
        if not loc:
            raise self._refuse("upload session without a Location")
        return self._check_url(urllib.parse.urljoin(r.url, loc), "upload Location")

    @staticmethod
    def _with(loc: str, **params) -> str:
        return loc + ("&" if "?" in loc else "?") + urllib.parse.urlencode(params)

    # --- blobs -------------------------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> bool:
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", f"repository:{repo}:pull", ok=(200, 404))
        return r.status_code == 200

    def mount(self, repo: str, digest: str, source: str) -> Optional[str]:
        """Mount from a sibling repository; None when mounted, else the upload session it opened."""
        check_name(source, f"registry {self.host}: mount source")
        check_digest(digest, f"registry {self.host}: mount")
        scope = f"repository:{repo}:pull,push repository:{source}:pull"
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/?" + urllib.parse.urlencode({"mount": digest, "from": source}),
                         scope, ok=(201, 202))
        return None if r.status_code == 201 else self._loc(r)

    def upload(self, repo: str, digest: str, size: int, open_blob, session: Optional[str] = None) -> None:
        scope = f"repository:{repo}:pull,push"
        check_digest(digest, f"registry {self.host}: upload to {repo}")
        loc = session or self._loc(self.request("POST", f"/v2/{repo}/blobs/uploads/", scope, ok=(202,)))
        if size <= self.monolithic_max:
            def body():
                with open_blob() as fh:
                    return fh.read()
            self.request("PUT", self._with(loc, digest=digest), scope, ok=(201,), data=body,
                         headers={"Content-Type": "application/octet-stream"}, blob=True)
        else:
            offset = 0
            with open_blob() as fh:
                while offset < size:
                    chunk = fh.read(self.chunk_size)
                    end = offset + len(chunk) - 1
                    r = self.request("PATCH", loc, scope, ok=(202,), data=chunk,
                                     headers={"Content-Type": "application/octet-stream",
                                              "Content-Range": f"{offset}-{end}"}, blob=True)
                    loc = self._loc(r)
                    offset = end + 1
            self.request("PUT", self._with(loc, digest=digest), scope, ok=(201,),
                         headers={"Content-Type": "application/octet-stream", "Content-Length": "0"}, blob=True)
        self.stats.uploaded += 1
        self.stats.uploaded_bytes += size

    # --- manifests ---------------------------------------------------------------------------

    def manifest_digest(self, repo: str, ref: str) -> Optional[str]:
        r = self.request("HEAD", f"/v2/{repo}/manifests/{ref}", f"repository:{repo}:pull", ok=(200, 404),
                         headers={"Accept": ACCEPT})
        if r.status_code == 404:
            return None
        return r.headers.get("Docker-Content-Digest")

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> bool:
        """Push a manifest under ref unless the registry has exactly it there; whether it was pushed."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.manifest_digest(repo, ref) == digest:
            self.stats.manifests_skipped += 1
            return False
        self.request("PUT", f"/v2/{repo}/manifests/{ref}", f"repository:{repo}:pull,push", ok=(201,),
                     data=data, headers={"Content-Type": media_type})
        self.stats.manifests += 1
        return True

    # --- reading, and referrers ----------------------------------------------------------------

    def get_manifest(self, repo: str, ref: str) -> Optional[bytes]:
        r = self.request("GET", f"/v2/{repo}/manifests/{ref}", f"repository:{repo}:pull", ok=(200, 404),
                         headers={"Accept": ACCEPT})
        return r.content if r.status_code == 200 else None

    def referrers_api(self, repo: str, digest: str) -> Optional[list[dict]]:
        """The registry's referrers list for digest (distribution-spec 1.1), or None if it has no such API."""
        r = self.request("GET", f"/v2/{repo}/referrers/{digest}", f"repository:{repo}:pull",
                         ok=(200, 400, 404, 405, 406), headers={"Accept": INDEX_MT})
        if r.status_code != 200 or not r.headers.get("Content-Type", "").startswith(INDEX_MT):
            return None
        return referrers_index(r.content, f"registry {self.host}: referrers of {repo}@{digest}")

    @contextlib.contextmanager
    def open_blob(self, repo: str, digest: str):
        """A blob as a stream (layers are not held in memory); its digest is checked by the reader,
        who reads it within the blob deadline."""
        import requests
        import urllib3
        scope = f"repository:{repo}:pull"
        path = self._api(f"/v2/{repo}/blobs/{digest}")
        self.request("HEAD", path, scope)     # logs in if the registry wants it
        budget = Budget(f"registry {self.host}: GET blob {digest}", None, self.limits.blob_deadline, task="answer")
        with watching(budget):
            r = self._hops("GET", self.base + path, scope, lambda u, h, what: self.http.send(
                "GET", u, what, budget=budget, headers=h, stream=True, allow_redirects=False))
            if r.status_code != 200:
                r.close()
                raise BuildError(f"registry {self.host}: GET {path}: HTTP {r.status_code}")
            try:
                r.raw.decode_content = True
                yield r.raw
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                if budget.left() <= 0:
                    raise budget.too_slow(0) from exc
                raise BuildError(f"registry {self.host}: GET {path}: {type(exc).__name__}") from exc
            finally:
                r.close()


@dataclass(frozen=True)
class PushTarget:
    name: str                 # image name, e.g. freebsd14.2-minimal
    tags: tuple[str, ...]
    index_digest: str

    def __post_init__(self):
        # every image publish, nightly and signing handle is one of these: a name or tag outside the
        # grammar (../evil/img, a/../../tmp/img) is refused here, before any request or file is made
        what = f"image {self.name[:200]!r}" if isinstance(self.name, str) else "image"
        check_name(self.name, what)
        for tag in self.tags:
            check_tag(tag, what)


def foreign_base_names(layout: Layout, targets: list[PushTarget], host: str, namespace: str) -> list[str]:
    """base.name annotations that point outside HOST/NAMESPACE: the release file's publish.namespace
    named another registry when these images were built (the name is in the manifest, so fixed then)."""
    prefix = f"{host}/{namespace}/" if namespace else f"{host}/"
    out = set()
    for t in targets:
        for d in layout.read_index(t.index_digest).get("manifests", []):
            name = (layout.read_manifest(d["digest"]).get("annotations") or {}).get("org.opencontainers.image.base.name")
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


def referrers_tag(digest: str) -> str:
    """The referrers tag schema's tag for a subject: sha256:HEX -> sha256-HEX."""
    return digest.replace(":", "-", 1)


def remote_referrers(registry: Registry, repo: str, digest: str) -> tuple[list[dict], bool]:
    """(descriptors of digest's referrers, whether they came from the referrers API) in repo."""
    api = registry.referrers_api(repo, digest)
    if api is not None:
        return api, True
    raw = registry.get_manifest(repo, referrers_tag(digest))
    if raw is None:
        return [], False
    return referrers_index(raw, f"registry {registry.host}: {repo}:{referrers_tag(digest)}"), False


@dataclass(frozen=True)
class Artifact:
    """An artifact manifest to push: its bytes, descriptor and the blobs it names (digest -> size, opener)."""
    manifest: bytes
    descriptor: Descriptor
    blobs: dict


def layout_artifact(layout: Layout, desc: Descriptor) -> Artifact:
    man = layout.read_manifest(desc.digest)
    blobs = {b["digest"]: (b["size"], lambda d=b["digest"]: layout.open_blob(d)) for b in [man["config"]] + man["layers"]}
    return Artifact(layout.read_blob(desc.digest), desc, blobs)


def memory_artifact(subject: Descriptor, artifact_type: str, media_type: str, data: bytes,
                    annotations: dict[str, str]) -> Artifact:
    digest = Layout.digest_of(data)
    man = attest.artifact_manifest(subject, artifact_type, Descriptor(media_type, digest, len(data)), annotations)
    raw = canonical(man)
    return Artifact(raw, attest.referrer_descriptor(raw, man),
                    {digest: (len(data), lambda: io.BytesIO(data)),
                     Layout.digest_of(EMPTY_BLOB): (len(EMPTY_BLOB), lambda: io.BytesIO(EMPTY_BLOB))})


def attach_referrers(registry: Registry, repo: str, subject: str, artifacts: list[Artifact],
                     current: list[dict], api: bool) -> None:
    """Push artifact manifests naming subject; without a referrers API, list them in the sha256-<hex> tag.

    The tag's index is merged with what is there (other tools' referrers stay) and written only
    when something was missing, so a second publish writes nothing.
    """
    stats = registry.stats
    side = PushStats()
    registry.stats = side         # referrers are counted apart from the images' blobs and manifests
    try:
        for a in artifacts:
            for d, (size, opener) in sorted(a.blobs.items()):
                if not registry.blob_exists(repo, d):
                    registry.upload(repo, d, size, opener)
            registry.put_manifest(repo, a.descriptor.digest, a.manifest, MANIFEST_MT)
        if not api:
            listed = {m.get("digest") for m in current}
            missing = [a.descriptor.to_json() for a in artifacts if a.descriptor.digest not in listed]
            if missing:
                doc = {"schemaVersion": 2, "mediaType": INDEX_MT, "manifests": list(current) + missing}
                registry.put_manifest(repo, referrers_tag(subject), canonical(doc), INDEX_MT)
                stats.referrer_tags += 1
                side.manifests -= 1
    finally:
        registry.stats = stats
        stats.requests += side.requests
        stats.referrers += side.manifests
        stats.referrers_unchanged += side.manifests_skipped
        stats.referrer_blobs += side.uploaded


def _signed_provenance(layout: Layout, subject: Descriptor, descs: list[Descriptor], current: list[dict],
                       signing: SigningPlan) -> Optional[Artifact]:
    """The provenance statement in a DSSE envelope signed with the key, unless one already is attached."""
    man = attest.find_referrer(layout, descs, attest.INTOTO_MT, attest.INTOTO_MT)
    if man is None:
        return None
    statement = man["layers"][0]["digest"]
    for m in current:
        ann = m.get("annotations") or {}
        if ann.get(DSSE_STATEMENT) == statement and ann.get(DSSE_SIGNED_BY) == signing.signer.fingerprint:
            return None
    envelope = dsse_envelope(signing.signer, attest.INTOTO_MT, layout.read_blob(statement))
    ann = {attest.CREATED: (man.get("annotations") or {}).get(attest.CREATED, ""), DSSE_STATEMENT: statement,
           DSSE_SIGNED_BY: signing.signer.fingerprint, DSSE_SCHEME: DSSE_SCHEME_VALUE}
    return memory_artifact(subject, attest.INTOTO_MT, DSSE_MT, canonical(envelope), ann)


def repositories(host: str, namespace: str, targets: list[PushTarget]) -> list[str]:
    """Each target's repository under namespace, all checked before publish's first request
    (a bad one found later would stop a publish halfway)."""
    return [check_name(f"{namespace}/{t.name}" if namespace else t.name, f"registry {host}: repository")
            for t in targets]


def publish(layout: Layout, registry: Registry, namespace: str, targets: list[PushTarget],
            dry_run: bool = False, log=lambda m: None, signing: Optional[SigningPlan] = None) -> PushStats:
    """Push each target's blobs, manifests and index; parents' layers are mounted into children.

    Each platform manifest's referrers in the layout (SBOM, provenance) follow it; with
    ``signing``, its provenance also goes up in a signed DSSE envelope, and the index and
    every platform manifest are signed under each tag into the lookaside directory.
    """
    stats = registry.stats
    attached = layout.referrers()
    where: dict[str, str] = {}          # blob digest -> a repository that has it (this run)
    ns = namespace.strip("/")
    for t, repo in zip(targets, repositories(registry.host, ns, targets)):
        index_bytes = layout.read_blob(t.index_digest)
        index = layout.read_index(t.index_digest)
        for m in index["manifests"]:
            man_bytes = layout.read_blob(m["digest"])
            man = layout.read_manifest(m["digest"])
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
            descs = attached.get(m["digest"], [])
            if dry_run:
                for r in descs:
                    log(f"would attach {r.artifact_type} {r.digest} to {repo}@{m['digest']}")
                continue
            registry.put_manifest(repo, m["digest"], man_bytes, MANIFEST_MT)
            if descs or signing:
                current, api = remote_referrers(registry, repo, m["digest"])
                arts = [layout_artifact(layout, r) for r in descs]
                subject = Descriptor(m["mediaType"], m["digest"], m["size"])
                signed = _signed_provenance(layout, subject, descs, current, signing) if signing else None
                attach_referrers(registry, repo, m["digest"], arts + ([signed] if signed else []), current, api)
        if dry_run:
            log(f"would push {repo}:{','.join(t.tags)} -> {t.index_digest}")
            if signing:
                log(f"would sign {repo}:{','.join(t.tags)} into {signing.lookaside}")
            continue
        pushed = [registry.put_manifest(repo, ref, index_bytes, INDEX_MT) for ref in (t.index_digest, *t.tags)]
        # say what happened: a second publish of the same layout pushes nothing
        log(f"{'pushed' if any(pushed) else 'unchanged'} {repo}:{','.join(t.tags)} -> {t.index_digest}")
        if signing:
            sign_target(registry.host, repo, t, index, signing, stats)
    return stats


def sign_target(host: str, repo: str, target: PushTarget, index: dict, signing: SigningPlan,
                stats: Optional[PushStats] = None) -> list:
    """Simple-signing signatures of the index and each platform manifest, one per tag, in the lookaside."""
    check_name(repo, f"signing {host}/{repo[:200]}")     # a directory name in the lookaside
    written = []
    for digest in [target.index_digest] + [m["digest"] for m in index["manifests"]]:
        written += sign_manifest(signing.signer, signing.verifier, signing.lookaside, host, repo, digest,
                                 list(target.tags))
    if stats is not None:
        stats.signatures += len(written)
    return written


def credentials(user: Optional[str], password_env: str = "FREEBSD_IMAGES_REGISTRY_PASSWORD"):
    """(user, password) for a registry, the password read from the environment so it never sits in argv."""
    return (user, os.environ.get(password_env, "")) if user else None


def parse_destination(dest: str) -> tuple[str, str]:
    """``registry.example.org[:port]/namespace`` -> (host, namespace)."""
    dest = re.sub(r"^(docker|https?)://", "", dest).rstrip("/")
    host, _, ns = dest.partition("/")
    if not host or not _HOST.fullmatch(host):
        raise BuildError(f"bad registry destination {dest!r}; want HOST[:PORT]/NAMESPACE")
    if ns:
        check_name(ns, f"registry destination {dest!r}: namespace")
    return host, ns
