"""The two bearer tokens of the HTTP admin API: one to read, one to change the cluster.

Reading (status, ring, stats, inspect...) and changing (stage, commit, clear a plan) are
authorised separately, as Garage's admin API and Riak Control do: a dashboard or a
monitoring script gets the read token only. Each token is a file, generated on the
node's first start with 256 random bits (``secrets``) and mode 0600 in its data
directory, or named in ``[http] read_token_file`` / ``admin_token_file`` (so that every
node of a cluster can share one pair, as ``dynq up`` does). The admin token reads too.

Operators holding a peer key get the URL with the admin token over ZeroMQ (the
``console`` op, ``dynq console``): a peer key can already change membership, so that
lets in nobody who could not already.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

READ_TOKEN_FILE = "http-read.token"
ADMIN_TOKEN_FILE = "http-admin.token"
MIN_TOKEN_CHARS = 16  # a shorter hand-written token is refused at start


class TokenError(ValueError):
    """A token file that cannot be read, created, or is too short."""


def load_or_create(path: Path) -> str:
    """The token in ``path``; a new random one written there (0600) if the file is missing.
    Nodes sharing the file (``dynq up``) may race to create it: the token is written whole
    to a file of this process's own, then linked into place, so a reader never sees a
    half-written one, and the first link wins."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # this process's own (a crashed one's: rewritten)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
        except FileExistsError:  # another node sharing the file created it first
            return load_or_create(path)
        except OSError as exc:
            raise TokenError(f"cannot create the token file {path}: {exc}") from exc
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return token
    except OSError as exc:
        raise TokenError(f"cannot read the token file {path}: {exc}") from exc
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise TokenError(f"the token in {path} must be at least {MIN_TOKEN_CHARS} characters without spaces")
    return token


@dataclass(frozen=True)
class Tokens:
    read: str
    admin: str

    @classmethod
    def load(cls, read_path: Path, admin_path: Path) -> Tokens:
        tokens = cls(load_or_create(read_path), load_or_create(admin_path))
        if hmac.compare_digest(tokens.read, tokens.admin):
            raise TokenError(f"{read_path} and {admin_path} hold the same token: reading and changing "
                             "must be authorised separately")
        return tokens

    def scope_of(self, presented: str | None) -> str | None:
        """"admin", "read", or None for a missing or unknown token (compared in constant time)."""
        if not presented:
            return None
        if hmac.compare_digest(presented.encode(), self.admin.encode()):
            return "admin"
        if hmac.compare_digest(presented.encode(), self.read.encode()):
            return "read"
        return None


def tokens_for(data_dir: Path, read_file: Path | None, admin_file: Path | None) -> Tokens:
    """The node's tokens: the configured files, else DATA_DIR/http-{read,admin}.token."""
    return Tokens.load(read_file or data_dir / READ_TOKEN_FILE, admin_file or data_dir / ADMIN_TOKEN_FILE)
