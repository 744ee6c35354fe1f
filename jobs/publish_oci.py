"""A small OCI distribution client: push files as one ORAS-style artifact (blobs, then an image manifest with an
`artifactType` and the empty config), and read one back.

The registry API (distribution spec v1.1): `HEAD/GET /v2/<name>/blobs/<digest>`, `POST /v2/<name>/blobs/uploads/`
then `PUT <location>?digest=…` with the blob, `PUT/GET /v2/<name>/manifests/<tag>`. Login follows the registry's
`WWW-Authenticate` challenge: Basic, or Bearer with a token from its realm (the docker token protocol).

Blobs stream from disk in chunks (a GGUF of many GB is never held in memory). What cannot succeed on retry — refused
credentials, a denied push, a repository the registry rejects — is a ConfigError; a registry that is down or answers
5xx is an OciUnavailable, which the job runtime treats as a failure worth retrying.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx

from kubetune.jobs.errors import ConfigError

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
TITLE_ANNOTATION = "org.opencontainers.image.title"
CHUNK_BYTES = 8 << 20
TIMEOUT = httpx.Timeout(30.0, read=300.0)

# The env the publish job reads its login from (set from spec.publish.oci.credentialsSecret by the operator).
DOCKERCONFIG_ENV = "KUBETUNE_REGISTRY_DOCKERCONFIG"
USERNAME_ENV = "KUBETUNE_REGISTRY_USERNAME"
PASSWORD_ENV = "KUBETUNE_REGISTRY_PASSWORD"


class OciUnavailable(RuntimeError):
    """The registry could not be reached or failed on its side: retrying later may succeed."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class Layer:
    """A file to push, with its media type and title (the file name `oras pull` writes it under)."""

    path: Path
    media_type: str
    title: str


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Reference:
    """`host[:port]/repository:tag` split into its parts."""

    registry: str
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


def split_repository(repository: str, tag: str) -> Reference:
    registry, _, name = repository.partition("/")
    return Reference(registry, name, tag)


def credentials_from_env(registry: str, env: Mapping[str, str] = os.environ) -> Credentials | None:
    """The login for `registry`: username/password variables, else the docker config's entry for that host."""
    username, password = env.get(USERNAME_ENV), env.get(PASSWORD_ENV)
    if username and password:
        return Credentials(username, password)
    config_text = env.get(DOCKERCONFIG_ENV)
    if not config_text:
        return None
    try:
        auths = json.loads(config_text).get("auths", {})
    except (ValueError, AttributeError):
        raise ConfigError(f"{DOCKERCONFIG_ENV} (the credentials Secret's .dockerconfigjson) is not a docker config "
                          "JSON object: create the Secret with kubectl create secret docker-registry") from None
    entry = next((auths[host] for host in (registry, f"https://{registry}", f"http://{registry}") if host in auths),
                 None)
    if not isinstance(entry, dict):
        raise ConfigError(f"the registry credentials Secret has no entry for {registry} (it has: "
                          f"{', '.join(sorted(auths)) or 'none'})")
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]))
    try:
        user, _, secret = base64.b64decode(str(entry.get("auth", ""))).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        user, secret = "", ""
    if not user or not secret:
        raise ConfigError(f"the registry credentials Secret's entry for {registry} has no username and password")
    return Credentials(user, secret)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


class OciClient:
    """One registry, one repository; `with OciClient(...) as client:` closes its connections."""

    def __init__(self, registry: str, repository: str, *, plain_http: bool = False,
                 credentials: Credentials | None = None) -> None:
        self.registry = registry
        self.repository = repository
        self.base = f"{'http' if plain_http else 'https'}://{registry}"
        self.credentials = credentials
        self._authorization: str | None = None
        self._http = httpx.Client(timeout=TIMEOUT, follow_redirects=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._http.close()

    # --- push ---------------------------------------------------------------------------------------------------

    def push(self, tag: str, layers: list[Layer], *, artifact_type: str,
             annotations: Mapping[str, str]) -> tuple[str, bytes]:
        """Push `layers` and a manifest tagged `tag`; returns the manifest's digest and bytes."""
        config = Descriptor(EMPTY_MEDIA_TYPE, f"sha256:{hashlib.sha256(EMPTY_BLOB).hexdigest()}", len(EMPTY_BLOB))
        self._push_bytes(config.digest, EMPTY_BLOB)
        descriptors = []
        for layer in layers:
            digest = file_digest(layer.path)
            self._push_file(digest, layer.path)
            descriptors.append(Descriptor(layer.media_type, digest, layer.path.stat().st_size,
                                          {TITLE_ANNOTATION: layer.title}))
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": artifact_type,
            "config": config.to_json(),
            "layers": [d.to_json() for d in descriptors],
            "annotations": dict(annotations),
        }
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        response = self._request("PUT", f"/v2/{self.repository}/manifests/{tag}", content=body,
                                 headers={"Content-Type": MANIFEST_MEDIA_TYPE})
        self._expect(response, (201,), f"push the manifest {tag}")
        answered = response.headers.get("Docker-Content-Digest")
        if answered and answered != digest:
            raise OciUnavailable(f"the registry stored the manifest as {answered}, not {digest}")
        return digest, body

    def _blob_exists(self, digest: str) -> bool:
        response = self._request("HEAD", f"/v2/{self.repository}/blobs/{digest}")
        if response.status_code == 404:
            return False
        self._expect(response, (200,), f"look up blob {digest}")
        return True

    def _push_bytes(self, digest: str, data: bytes) -> None:
        if not self._blob_exists(digest):
            self._upload(digest, data, len(data))

    def _push_file(self, digest: str, path: Path) -> None:
        if not self._blob_exists(digest):
            self._upload(digest, _file_chunks(path), path.stat().st_size)

    def _upload(self, digest: str, content: bytes | Iterator[bytes], size: int) -> None:
        response = self._request("POST", f"/v2/{self.repository}/blobs/uploads/")
        self._expect(response, (202,), "start a blob upload")
        location = response.headers.get("Location")
        if not location:
            raise OciUnavailable("the registry started an upload without a Location")
        url = httpx.URL(self.base).join(location)
        url = url.copy_merge_params({"digest": digest})
        # The login was settled by the POST: a streamed body is sent once, never replayed after a challenge.
        response = self._request("PUT", str(url), content=content,
                                 headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        self._expect(response, (201,), f"upload blob {digest}")

    # --- pull ---------------------------------------------------------------------------------------------------

    def manifest(self, tag: str) -> tuple[str, bytes, str]:
        """The manifest under `tag`: its digest (as the registry reports it), bytes and content type."""
        response = self._request("GET", f"/v2/{self.repository}/manifests/{tag}",
                                 headers={"Accept": MANIFEST_MEDIA_TYPE})
        self._expect(response, (200,), f"read the manifest {tag}")
        return (response.headers.get("Docker-Content-Digest", ""), response.content,
                response.headers.get("Content-Type", ""))

    def blob_to(self, digest: str, dest: Path) -> None:
        """Download a blob to `dest`, verifying its digest."""
        url = f"{self.base}/v2/{self.repository}/blobs/{digest}"
        self._authorize_for("GET", url)
        hasher = hashlib.sha256()
        with self._http.stream("GET", url, headers=self._headers()) as response:
            self._expect(response, (200,), f"read blob {digest}")
            with dest.open("wb") as handle:
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    hasher.update(chunk)
                    handle.write(chunk)
        if f"sha256:{hasher.hexdigest()}" != digest:
            dest.unlink()
            raise OciUnavailable(f"blob {digest} read back with another digest")

    # --- requests and login -------------------------------------------------------------------------------------

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._authorization:
            headers["Authorization"] = self._authorization
        return headers

    def _request(self, method: str, path_or_url: str, *, content: bytes | Iterator[bytes] | None = None,
                 headers: Mapping[str, str] | None = None) -> httpx.Response:
        url = path_or_url if "://" in path_or_url else f"{self.base}{path_or_url}"
        if not isinstance(content, (bytes, type(None))):
            return self._send(method, url, content, headers)  # a stream: login was settled before
        response = self._send(method, url, content, headers)
        if response.status_code == 401 and self._login(response):
            response = self._send(method, url, content, headers)
        return response

    def _authorize_for(self, method: str, url: str) -> None:
        if self._authorization is None:
            response = self._send("HEAD" if method == "GET" else method, url, None, None)
            if response.status_code == 401:
                self._login(response)

    def _send(self, method: str, url: str, content: bytes | Iterator[bytes] | None,
              headers: Mapping[str, str] | None) -> httpx.Response:
        try:
            return self._http.request(method, url, content=content, headers=self._headers(headers))
        except httpx.TransportError as error:
            raise OciUnavailable(f"cannot reach the registry at {self.base}: {error}") from None

    def _login(self, challenge: httpx.Response) -> bool:
        """Answer a 401's challenge; False when there is nothing to answer with."""
        header = challenge.headers.get("WWW-Authenticate", "")
        scheme, _, params_text = header.partition(" ")
        if scheme.lower() == "basic":
            if self.credentials is None:
                return False
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            self._authorization = f"Basic {base64.b64encode(pair).decode()}"
            return True
        if scheme.lower() != "bearer":
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_text))
        realm = params.get("realm")
        if not realm:
            raise OciUnavailable(f"the registry asked for a bearer token without a realm: {header}")
        query = {k: params[k] for k in ("service", "scope") if k in params}
        query.setdefault("scope", f"repository:{self.repository}:pull,push")
        auth = (self.credentials.username, self.credentials.password) if self.credentials else None
        try:
            response = self._http.get(realm, params=query, auth=auth)
        except httpx.TransportError as error:
            raise OciUnavailable(f"cannot reach the registry's token service {realm}: {error}") from None
        self._expect(response, (200,), "get a registry token")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise OciUnavailable(f"the registry's token service {realm} returned no token")
        self._authorization = f"Bearer {token}"
        return True

    def _expect(self, response: httpx.Response, ok: tuple[int, ...], doing: str) -> None:
        status = response.status_code
        if status in ok:
            return
        where = f"{self.registry}/{self.repository}"
        if not response.is_stream_consumed:
            response.read()
        detail = _registry_error(response)
        if status == 401:
            login = "the credentials given" if self.credentials else "no credentials (anonymous)"
            raise ConfigError(f"registry {where} refused {login} ({status}{detail}) while trying to {doing}: check "
                              "spec.publish.oci.credentialsSecret")
        if status == 403:
            raise ConfigError(f"registry {where} denied the push ({status}{detail}) while trying to {doing}: the "
                              "login has no push right on that repository")
        if status in (400, 404, 405) or status == 413:
            raise ConfigError(f"registry {where} refused to {doing} ({status}{detail}): check "
                              "spec.publish.oci.repository (and plainHttp)")
        raise OciUnavailable(f"registry {where} answered {status}{detail} while trying to {doing}")


def _registry_error(response: httpx.Response) -> str:
    """`: CODE message` from a distribution-spec error body, if it has one."""
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        return ""
    if not errors or not isinstance(errors[0], dict):
        return ""
    return f": {errors[0].get('code', '')} {errors[0].get('message', '')}".rstrip()
