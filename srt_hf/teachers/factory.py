"""What a ``--teacher`` value means: the one place that decides between a server and a local model."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from .base import GenerationConfig, Teacher
from .endpoint import EndpointTeacher
from .local import LocalTeacher


def load_teacher(
    teacher: str | os.PathLike | None,
    *,
    model: str | None = None,
    config: GenerationConfig | None = None,
    cache_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Teacher:
    """A teacher from a name: http(s) URLs (comma-separated for several) give an :class:`EndpointTeacher`
    serving ``model``; anything else (``default``, a Hub id, a directory, a .gguf) a :class:`LocalTeacher`."""
    if isinstance(teacher, str) and teacher.strip().startswith(("http://", "https://")):
        return EndpointTeacher(teacher, model=model, config=config, cache_path=cache_path, **kwargs)
    if model is not None:
        raise ConfigError("`model` (the served model name) only applies to endpoint teachers (URLs); for a local teacher pass the model itself as `teacher`.")
    return LocalTeacher(teacher, config=config, cache_path=cache_path, **kwargs)
