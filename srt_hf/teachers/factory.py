"""What a ``--teacher`` value means: the one place that decides between a server and a local model."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from ..errors import ConfigError
from .base import GenerationConfig, Teacher
from .credentials import parse_header
from .endpoint import EndpointTeacher
from .local import LocalTeacher


def is_endpoint(value: str | os.PathLike | None) -> bool:
    """Whether a teacher value names a server (an http(s) URL) rather than a local model."""
    return isinstance(value, str) and value.strip().startswith(("http://", "https://"))


def load_teacher(
    teacher: str | os.PathLike | Sequence[str] | None,
    *,
    model: str | None = None,
    config: GenerationConfig | None = None,
    cache_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Teacher:
    """A teacher from a name: http(s) URLs (a list, or comma-separated) give an :class:`EndpointTeacher` serving
    ``model`` (``kwargs``: ``api_key``, ``api_key_env``, ``headers``, ``extra_body``); anything else
    (``default``, a Hub id, a directory, a .gguf) a :class:`LocalTeacher` (``kwargs``: ``device``, ``dtype``…)."""
    values = [str(t) for t in teacher] if isinstance(teacher, (list, tuple)) else [teacher]
    urls = [v for v in values if is_endpoint(v)]
    if urls:
        if len(urls) != len(values):
            raise ConfigError("Repeat --teacher only with server URLs; a local teacher is one model.")
        local_only = sorted(k for k in ("device", "dtype") if kwargs.get(k))
        if local_only:
            raise ConfigError(f"{', '.join(local_only)} only apply to a local teacher (a model), not to the server {urls[0]!r}: "
                              "drop --teacher-device / --teacher-dtype, or set them on the server.")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("device", "dtype")}
        return EndpointTeacher(",".join(urls), model=model, config=config, cache_path=cache_path, **kwargs)
    if len(values) > 1:
        raise ConfigError("Repeat --teacher only with server URLs; a local teacher is one model.")
    if model is not None:
        raise ConfigError("`model` (the served model name) only applies to endpoint teachers (URLs); for a local teacher pass the model itself as `teacher`.")
    endpoint_only = sorted(k for k, v in kwargs.items() if k in ("api_key", "api_key_env", "headers", "extra_body") and v)
    if endpoint_only:
        raise ConfigError(f"{', '.join(endpoint_only)} only apply to teacher servers (URLs), not to the local teacher {values[0]!r}.")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("api_key", "api_key_env", "headers", "extra_body")}
    return LocalTeacher(values[0], config=config, cache_path=cache_path, **kwargs)


def endpoint_options(api_key_env: str | None, header_lines: Sequence[str] | None, extra_body: str | None) -> dict[str, Any]:
    """The CLI's ``--teacher-api-key-env``, ``--teacher-header`` and ``--teacher-extra-body`` as keyword arguments."""
    options: dict[str, Any] = {}
    if api_key_env:
        options["api_key_env"] = api_key_env
    if header_lines:
        options["headers"] = dict(parse_header(line) for line in header_lines)
    if extra_body:
        try:
            body = json.loads(extra_body)
        except ValueError as err:
            raise ConfigError(f"--teacher-extra-body is not valid JSON ({err}); pass an object, e.g. '{{\"top_k\": 20}}'.") from None
        if not isinstance(body, dict):
            raise ConfigError("--teacher-extra-body must be a JSON object, e.g. '{\"top_k\": 20}'.")
        options["extra_body"] = body
    return options
