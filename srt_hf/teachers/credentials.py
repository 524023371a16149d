"""Which credential goes to which host: the HF token to Hugging Face hosts only, a user's key to its own host.

    creds = Credentials(api_key_env="VLLM_API_KEY", headers={"X-Org": "team-a"})
    creds.headers_for("http://10.0.0.5:8000/v1/chat/completions")   # {'authorization': 'Bearer …', 'x-org': …}

Rules (docs/ARCHITECTURE.md):

* an explicit ``api_key`` (or the environment variable ``api_key_env`` names) is sent as
  ``Authorization: Bearer …`` to the teacher's own hosts;
* without one, Hugging Face hosts (huggingface.co and its subdomains such as the Inference Providers router,
  hf.co, Inference Endpoints on huggingface.cloud) get the user's HF token (``HF_TOKEN`` or
  ``hf auth login``), api.openai.com gets ``OPENAI_API_KEY``, and every other host gets no key at all;
* ``headers`` (e.g. Azure's ``api-key``) go to the teacher's own hosts;
* a host the teacher was not configured with (a redirect target) gets nothing.

Secrets live only in memory: they are not in ``repr``, pickles, cache keys, fingerprints or run.json, and
:meth:`Credentials.describe` names them without their values.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence
from urllib.parse import urlparse

from ..errors import ConfigError

HF_HOSTS = ("huggingface.co", "hf.co", "huggingface.cloud")
#: A key read from the environment by default, for hosts that always need one.
DEFAULT_KEY_ENV = {"api.openai.com": "OPENAI_API_KEY"}


def host_of(url: str) -> str:
    return (urlparse(url).hostname or "").lower()


def is_hf_host(url_or_host: str) -> bool:
    """Whether a URL (or a bare host name) belongs to Hugging Face."""
    host = host_of(url_or_host) if "://" in url_or_host else url_or_host.lower()
    return any(host == h or host.endswith("." + h) for h in HF_HOSTS)


def parse_header(line: str) -> tuple[str, str]:
    """``'Name: value'`` -> ``('name', 'value')`` (the CLI's ``--teacher-header``)."""
    name, sep, value = line.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        raise ConfigError(f"--teacher-header expects 'Name: value' (e.g. 'api-key: …'); got {line.split(':')[0]!r}…")
    return name.strip().lower(), value.strip()


class Credentials:
    """The key and headers of one teacher, handed out per request host."""

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        self.hosts = {h.lower() for h in hosts}
        self.api_key_env = api_key_env
        self._api_key = api_key
        self._headers = {k.lower(): v for k, v in (headers or {}).items()}
        if api_key_env and api_key is None and not os.environ.get(api_key_env):
            raise ConfigError(
                f"The teacher's API key is to come from ${api_key_env}, which is not set; export it "
                "or name another variable with --teacher-api-key-env."
            )

    def __repr__(self) -> str:  # never the values
        return f"Credentials({self.describe()!r})"

    def __reduce__(self):
        raise TypeError("Credentials hold secrets and are never pickled; the teacher rebuilds them from its settings.")

    def describe(self) -> dict[str, object]:
        """What is configured, without any secret: for logs, run.json and cards."""
        source = "argument" if self._api_key else (f"${self.api_key_env}" if self.api_key_env else "default for the host")
        return {"api_key": source, "headers": sorted(self._headers)}

    def _key_for(self, host: str) -> str | None:
        if self._api_key:
            return self._api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        if is_hf_host(host):
            from huggingface_hub import get_token

            return get_token()
        env = DEFAULT_KEY_ENV.get(host)
        return os.environ.get(env) or None if env else None

    def headers_for(self, url: str) -> dict[str, str]:
        """The credential headers for a request to ``url`` (lower-case names)."""
        host = host_of(url)
        if host not in self.hosts:
            return {}
        headers = dict(self._headers)
        key = self._key_for(host)
        if key and "authorization" not in headers:
            headers["authorization"] = f"Bearer {key}"
        return headers
