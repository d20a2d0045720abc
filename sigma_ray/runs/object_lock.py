"""One owner at a time for a run directory on S3 (``s3://bucket/prefix/run``): a ``LOCK`` object made by a
conditional create.

S3 has no ``flock``; what it has is a conditional write. The owner creates ``<run dir>/LOCK`` with
``If-None-Match: *`` (the put fails with 412 when the object exists, atomically) and writes its host, pid, start
time and command into it, as the local lock does. While it runs, a thread rewrites the object every
``heartbeat_s`` seconds with ``If-Match: <its ETag>``, so the object's ``LastModified`` is the owner's last sign of
life. A start that finds the object refuses (after ``wait_s``, time for an owner that is just ending) unless the
lock is stale:

- its owner ran on this host and its pid is gone (a crashed or SIGKILLed driver here): taken over at once;
- otherwise its heartbeat is older than ``stale_s`` by the S3 server's own clock (the ``Date`` of the response
  against ``LastModified``, so the machines' clocks do not matter): taken over.

A take-over is itself a conditional write (``If-Match`` the stale object's ETag), so of two starts taking over the
same stale lock one wins and the other is refused. The owner deletes the object when the ``with`` block ends,
again only if it is still its own. An owner whose heartbeat could not be written for ``stale_s`` (a network
partition) may find the lock taken; it says so on stderr, and the next heartbeat sees a foreign ETag and stops.

Only ``s3://`` (and S3-compatible servers through ``AWS_ENDPOINT_URL``) is locked; it needs boto3, which pyarrow's
S3 file system does not replace (pyarrow has no conditional writes).
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from sigma_ray.infra.checks import ConfigError
from sigma_ray.runs.files import LOCK_FILE
from sigma_ray.runs.rundir import RunLockedError

# A heartbeat every 30 s, stale after 120 s: four missed heartbeats before another host may take the run over.
HEARTBEAT_S = 30.0
STALE_S = 120.0


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")`` (no leading or trailing slash on the key prefix)."""
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    return bucket, key.strip("/")


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), which tells a
    reused pid from the owner; None where /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class ObjectRunLock:
    """Exclusive ownership of the S3 run directory ``run_dir`` (``s3://...``) while the ``with`` block runs.

    ``wait_s``: how long a start waits for a live owner to end before it is refused. ``heartbeat_s`` /
    ``stale_s``: seconds between the owner's rewrites of the lock object, and the age of the last one after which
    another host may take the lock over. Raises ConfigError (naming ``storage_path``) when the bucket cannot be
    written, RunLockedError naming the owner when the run directory is taken.
    """

    def __init__(self, run_dir: str, wait_s: float = 10.0, heartbeat_s: float = HEARTBEAT_S,
                 stale_s: float = STALE_S, client: Any = None):
        if not run_dir.startswith("s3://"):
            raise ValueError(f"{run_dir} is not an s3:// URI")
        if stale_s <= heartbeat_s:
            raise ValueError(f"stale_s ({stale_s}) must exceed heartbeat_s ({heartbeat_s})")
        self.run_dir = run_dir.rstrip("/")
        self.bucket, prefix = split_s3(self.run_dir)
        self.key = f"{prefix}/{LOCK_FILE}" if prefix else LOCK_FILE
        self.wait_s, self.heartbeat_s, self.stale_s = wait_s, heartbeat_s, stale_s
        self._client = client
        self._etag: str | None = None
        self._owner: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()   # the heartbeat thread and __exit__ both use the ETag

    @property
    def client(self):
        if self._client is None:
            try:
                import boto3
            except ImportError:
                raise ConfigError(f"storage_path {self.run_dir}: an s3:// run directory is locked through boto3, "
                                  f"which is not installed (pip install 'sigma-ray[s3]')") from None
            self._client = boto3.client("s3")   # credentials, region and AWS_ENDPOINT_URL as the AWS CLI reads them
        return self._client

    # ------------------------------------------------------------------------------------------------ S3 calls

    def _body(self) -> bytes:
        return (json.dumps({**self._owner, "heartbeat": datetime.datetime.now(datetime.timezone.utc)
                            .isoformat(timespec="seconds")}) + "\n").encode()

    def _put(self, **condition: str) -> str | None:
        """Write the lock object under ``condition`` (IfNoneMatch / IfMatch); its new ETag, or None on 412."""
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), **condition)["ETag"]
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                return None   # 412: the condition failed; 409: a concurrent conditional write won
            raise

    def _holder(self) -> tuple[dict[str, Any] | None, str | None, float]:
        """(the owner record, its ETag, the heartbeat's age in s by the server's clock); (None, None, 0) when
        the lock object is gone."""
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None, 0.0
            raise
        text = obj["Body"].read().decode(errors="replace")
        try:
            holder = json.loads(text)
        except ValueError:
            holder = {}
        server_now = obj["ResponseMetadata"]["HTTPHeaders"].get("date")
        now = (datetime.datetime.strptime(server_now, "%a, %d %b %Y %H:%M:%S %Z").replace(
            tzinfo=datetime.timezone.utc) if server_now else datetime.datetime.now(datetime.timezone.utc))
        return holder if isinstance(holder, dict) else {}, obj["ETag"], (now - obj["LastModified"]).total_seconds()

    def _stale(self, holder: dict[str, Any], age_s: float) -> str | None:
        """Why the lock of ``holder`` (heartbeat ``age_s`` old) is stale, or None when its owner may be alive."""
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            pid = holder["pid"]
            if not _pid_alive(pid):
                return f"its owner, pid {pid} on this host, is gone"
            start = _pid_start(pid)
            if start is not None and holder.get("pid_start") not in (None, start):
                return f"pid {pid} on this host is another process now"
        if age_s > self.stale_s:
            return f"its last heartbeat is {age_s:.0f} s old (stale after {self.stale_s:.0f} s)"
        return None

    # --------------------------------------------------------------------------------------------- ownership

    def __enter__(self) -> "ObjectRunLock":
        from botocore.exceptions import BotoCoreError, ClientError

        self._owner = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
                       "argv": sys.argv, "token": uuid.uuid4().hex,
                       "started": datetime.datetime.now().isoformat(timespec="seconds")}
        deadline = time.monotonic() + self.wait_s
        try:
            while True:
                etag = self._put(IfNoneMatch="*")
                if etag is not None:
                    break
                holder, held_etag, age = self._holder()
                if holder is None:
                    continue   # released between our put and our read: try again
                why = self._stale(holder, age)
                if why is not None:
                    etag = self._put(IfMatch=held_etag)
                    if etag is not None:
                        print(f"[sigma-ray] took over the lock of {self.run_dir}: {why}", file=sys.stderr,
                              flush=True)
                        break
                    continue   # someone else took it over first: look again
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                raise RunLockedError(
                    f"{self.run_dir} is in use by another run (host {holder.get('host')}, pid {holder.get('pid')}, "
                    f"started {holder.get('started')}: {' '.join(holder.get('argv', []))}; last heartbeat "
                    f"{age:.0f} s ago, stale after {self.stale_s:.0f} s); wait for it to end or give this run "
                    f"another name") from None
        except (ClientError, BotoCoreError) as e:
            raise ConfigError(f"storage_path {self.run_dir}: cannot write the lock object "
                              f"s3://{self.bucket}/{self.key} ({e})") from None
        self._etag = etag
        self._thread = threading.Thread(target=self._beat, name="sigma-ray-s3-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        """Rewrite the lock object every ``heartbeat_s`` while it is ours; a failed write is retried at the next
        beat (the lock goes stale only after ``stale_s``)."""
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                try:
                    etag = self._put(IfMatch=self._etag)
                except Exception as e:  # noqa: BLE001 - a network error: the next beat retries
                    print(f"[sigma-ray] could not renew the lock of {self.run_dir}: {e}", file=sys.stderr,
                          flush=True)
                    continue
                if etag is None:
                    print(f"[sigma-ray] the lock of {self.run_dir} was taken over by another start after this "
                          f"run's heartbeat went stale; two runs may now write this run directory",
                          file=sys.stderr, flush=True)
                    self._etag = None
                    return
                self._etag = etag

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._etag is not None:
                from botocore.exceptions import ClientError

                try:   # only our own lock object: one taken over by another start stays
                    self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
                except ClientError:
                    pass
                self._etag = None


def run_lock(run_dir: str, wait_s: float = 10.0):
    """The lock that gives the run directory ``run_dir`` one owner: ``flock`` on a local (or NFS) path, the lock
    object on ``s3://``; other URIs (``gs://``...) are not locked (a ``nullcontext``)."""
    import contextlib

    from sigma_ray.runs.files import is_uri
    from sigma_ray.runs.rundir import RunLock

    if run_dir.startswith("s3://"):
        return ObjectRunLock(run_dir, wait_s=wait_s)
    if is_uri(run_dir):
        return contextlib.nullcontext()
    return RunLock(run_dir, wait_s=wait_s)
