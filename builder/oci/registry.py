"""A distribution-spec registry client on requests, and publishing a layout to it.

Order matters to registries (see docs): blobs before the manifest naming
them, every platform manifest (pushed by digest) before the index, the index
by digest and then under each tag. Blobs already in the repository are not
sent again; blobs pushed to a sibling repository in the same run (the
family's shared lower layers) are cross-mounted instead of uploaded.
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
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    import requests

from builder.common.http import Http, RetryPolicy
from builder.errors import BuildError
from builder.oci import attest
from builder.oci.layout import EMPTY_BLOB, INDEX_MT, MANIFEST_MT, Descriptor, Layout, canonical
from builder.oci.sign import (DSSE_MT, DSSE_SCHEME, DSSE_SCHEME_VALUE, DSSE_SIGNED_BY, DSSE_STATEMENT,
                              SigningPlan, dsse_envelope, sign_manifest)

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


REDACTED = "<redacted>"
# Authorization values however they are quoted back at us: a header line, a JSON or
# Python dict echo, or a bare "Basic xxx" / "Bearer xxx".
_AUTH_HEADER = re.compile(r"""(?i)(authorization["']?\s*[:=]\s*["']?)[^\r\n"']*""")
_AUTH_VALUE = re.compile(r"(?i)\b(basic|bearer)(\s+)[A-Za-z0-9._~+/=-]+")
_TOKEN = re.compile(r"[\x21-\x7e]+")


class Registry:
    def __init__(self, host: str, insecure: bool = False, auth: Optional[tuple[str, str]] = None,
                 retries: int = 4, backoff: float = 0.25, chunk_size: int = CHUNK,
                 monolithic_max: int = MONOLITHIC_MAX, sleep: Callable[[float], None] = time.sleep):
        self.host = host
        self.insecure = insecure
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self.auth = auth
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

    def _may_send_password(self, realm: urllib.parse.SplitResult) -> bool:
        # the realm comes from the registry's answer: our password goes there only over TLS,
        # to the registry's own host, or when plain HTTP was asked for (--insecure)
        own = urllib.parse.urlsplit(f"//{self.host}").hostname
        return realm.scheme == "https" or (realm.hostname or "").lower() == (own or "").lower() or self.insecure

    def _login(self, header: str, scope: str) -> None:
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
        r = self.http.send("GET", realm, self.redact(f"registry {self.host}: token request to {realm}"),
                           params=q, auth=self.auth, timeout=30)
        if r.status_code != 200:
            raise self._refuse(f"token request to {realm} failed: HTTP {r.status_code}")
        try:
            doc = r.json()
        except (ValueError, RecursionError) as exc:
            raise self._refuse(f"token server {realm} answered {r.headers.get('Content-Type', 'something')!r}, "
                               "not JSON") from exc
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise self._refuse(f"token server {realm} gave no usable token")
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
            # redact the whole body before cutting it, so no secret survives half-cut
            detail = self.redact(r.text[:65536])[:300].strip()
            raise self._refuse(f"{method} {path}: HTTP {r.status_code} {detail}")
        return r

    def _loc(self, r: requests.Response) -> str:
        loc = r.headers.get("Location")
        if not loc:
            raise self._refuse("upload session without a Location")
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
        try:
            return list(r.json().get("manifests") or [])
        except ValueError:
            return None

    @contextlib.contextmanager
    def open_blob(self, repo: str, digest: str):
        """A blob as a stream (layers are not held in memory); its digest is checked by the reader."""
        scope = f"repository:{repo}:pull"
        self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope)     # logs in if the registry wants it
        self.stats.requests += 1
        r = self.http.send("GET", f"{self.base}/v2/{repo}/blobs/{digest}", f"registry {self.host}: GET blob {digest}",
                           headers=self._authorization(scope), stream=True)
        if r.status_code != 200:
            r.close()
            raise BuildError(f"registry {self.host}: GET /v2/{repo}/blobs/{digest}: HTTP {r.status_code}")
        try:
            r.raw.decode_content = True
            yield r.raw
        finally:
            r.close()


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
    try:
        return list(json.loads(raw).get("manifests") or []), False
    except ValueError as exc:
        raise BuildError(f"registry {registry.host}: {repo}:{referrers_tag(digest)} is not a referrers index") from exc


@dataclass(frozen=True)
class Artifact:
    """An artifact manifest to push: its bytes, descriptor and the blobs it names (digest -> size, opener)."""
    manifest: bytes
    descriptor: Descriptor
    blobs: dict


def layout_artifact(layout: Layout, desc: Descriptor) -> Artifact:
    man = layout.read_json(desc.digest)
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
        registry.put_manifest(repo, t.index_digest, index_bytes, INDEX_MT)
        for tag in t.tags:
            registry.put_manifest(repo, tag, index_bytes, INDEX_MT)
        log(f"pushed {repo}:{','.join(t.tags)} -> {t.index_digest}")
        if signing:
            sign_target(registry.host, repo, t, index, signing, stats)
    return stats


def sign_target(host: str, repo: str, target: PushTarget, index: dict, signing: SigningPlan,
                stats: Optional[PushStats] = None) -> list:
    """Simple-signing signatures of the index and each platform manifest, one per tag, in the lookaside."""
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
    if not host:
        raise BuildError(f"bad registry destination {dest!r}; want HOST[:PORT]/NAMESPACE")
    return host, ns
