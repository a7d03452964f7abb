"""`ServeConfig`: the settings of `medicosam serve`, declared once (its options derive from them)."""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import os
from typing import List, Optional

from ..errors import InputError
from ..options import option

TOKEN_ENVIRONMENT = "MEDICOSAM_TOKEN"
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass
class ServeConfig:
    """How the server runs. `model` is a registry name, URL or checkpoint path (`--model` / `--checkpoint`)."""

    model: str
    host: str = option("127.0.0.1", "address to listen on; any other than loopback needs a token")
    port: int = option(8765, "TCP port")
    token: Optional[str] = option(None, f"access token(s), comma-separated, one per group of annotators that "
                                  f"may share uploads (default: ${TOKEN_ENVIRONMENT}); clients send "
                                  "'Authorization: Bearer TOKEN'")
    device: str = option("auto", "auto, cpu, cuda or mps")
    cache_mb: int = option(8192, "one embedding cache shared by all sessions, in MB")
    max_upload_mb: int = option(1024, "largest request body (a compressed volume), in MB")
    max_volume_mb: int = option(4096, "largest volume once decompressed, in MB")
    max_request_mb: int = option(256, "most a request's masks, logits and propagation seeds may take in all "
                                 "once decompressed, in MB")
    max_volumes: int = option(256, "most uploaded volumes held at once, all tokens together (the least recently "
                              "used one no session holds makes room)")
    volumes_mb: int = option(16384, "most memory the uploaded volumes may take together, in MB (the least "
                             "recently used one no session holds makes room)")
    session_minutes: float = option(60.0, "a session (and an upload no session uses) expires after this idle time")
    fast: bool = option(True, "offer the fast path (clients choose per session; --no-fast: official fp32 only)")
    allow_custom: bool = False  # `--allow-custom` (`medicosam.cli.add_allow_custom`): see `load_sam`
    offline: Optional[bool] = option(None, "never use the network (default: $MEDICOSAM_OFFLINE)")
    ssl_certfile: Optional[str] = option(None, "serve HTTPS with this certificate (PEM); or put a TLS reverse "
                                         "proxy in front", metavar="PEM")
    ssl_keyfile: Optional[str] = option(None, "the certificate's private key (PEM)", metavar="PEM")

    def __post_init__(self) -> None:
        if self.token is None:
            self.token = os.environ.get(TOKEN_ENVIRONMENT) or None
        if not 0 < self.port < 65536:
            raise InputError(f"--port {self.port} is not a TCP port: use 1..65535")
        for name in ("cache_mb", "max_upload_mb", "max_volume_mb", "max_request_mb", "max_volumes", "volumes_mb"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} {getattr(self, name)}: use 1 or more")
        if self.session_minutes <= 0:
            raise InputError(f"--session-minutes {self.session_minutes}: use a positive time")
        if self.token is not None and any(len(t) < 8 for t in self.tokens):
            raise InputError("every token must have at least 8 characters: make one with "
                             "`python -c \"import secrets; print(secrets.token_urlsafe(24))\"`")
        if not self.tokens and not is_loopback(self.host):
            raise InputError(f"--host {self.host} lets other machines connect: give --token (or "
                             f"${TOKEN_ENVIRONMENT}), or keep the default 127.0.0.1")

    @property
    def tokens(self) -> List[str]:
        return [t.strip() for t in (self.token or "").split(",") if t.strip()]

    def get_owner(self, authorization: Optional[str]) -> Optional[str]:
        """Whose request this is: an opaque owner name for a valid token ("" without tokens), None if refused.

        Every token is compared in constant time (hmac.compare_digest), whichever matches.
        """
        if not self.tokens:
            return ""
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        owner = None
        for number, token in enumerate(self.tokens):
            if hmac.compare_digest(given.strip().encode(), token.encode()):
                owner = f"token{number}"
        return owner
