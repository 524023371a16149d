"""Teachers: the models that write reflections, behind one interface (see docs/ARCHITECTURE.md).

    teacher = load_teacher("http://127.0.0.1:8000/v1", model="my-model")   # or "default", a Hub id, a directory
    completions = teacher.generate([[{"role": "user", "content": "..."}]])

* :mod:`.base` — the interface: :class:`GenerationConfig`, :class:`Completion`, :class:`Teacher`,
  :class:`TeacherSession` (cache lookups, joining identical requests in flight), counters;
* :mod:`.http` — HTTP resilience: fault classification, ``Retry-After``, priority slots, URL health;
* :mod:`.endpoint` — :class:`EndpointTeacher`, any OpenAI-compatible server;
* :mod:`.local` — :class:`LocalTeacher`, a transformers model run in-process;
* :mod:`.cache` — the persistent SQLite response cache;
* :mod:`.factory` — :func:`load_teacher`, what a ``--teacher`` value means;
* :mod:`.batch`, :mod:`.batch_teacher`, :mod:`.openai_batch` — batch generation (``--teacher-batch``): the
  request and results files, the teacher that collects missing requests, ``--submit openai``.

A teacher pickles without any live client or model: async clients belong to the event loop that made
them, so each :meth:`Teacher.session` (one per ``asyncio.run``) makes its own.
"""

from .base import GENERATION_KEYS, Completion, GenerationConfig, Teacher, TeacherSession, TeacherStats, run_sync
from .cache import ResponseCache, cache_key
from .endpoint import EndpointTeacher
from .factory import load_teacher
from .http import parse_retry_after
from .local import LocalTeacher

__all__ = [
    "GENERATION_KEYS", "Completion", "EndpointTeacher", "GenerationConfig", "LocalTeacher", "ResponseCache", "Teacher",
    "TeacherSession", "TeacherStats", "cache_key", "load_teacher", "parse_retry_after", "run_sync",
]
