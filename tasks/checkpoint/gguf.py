"""GGUF checkpoints: a `.gguf` file as `model.name`, turned once into a model folder every stage loads.

`model.name` may name a GGUF file (llama.cpp's single-file format: config, tokenizer and possibly quantized
weights): a local path, an object-store URI (`s3://bucket/model.gguf?endpoint_override=...`, `gs://...`), or
`package:PACKAGE/FILE.gguf` for a file inside an installed package (the causal demo's SmolLM2). `transformers`
reads such a file itself (`from_pretrained(folder, gguf_file=name)`, with the `gguf` package), dequantizing the
weights to float32; but it parses the whole file's metadata (the tokenizer's vocabulary and merges, hundreds of
thousands of small fields) on every call, config, tokenizer and weights alike, which costs seconds to tens of
seconds each time. So the file is read through `transformers`' GGUF support once per machine: its config,
tokenizer and causal-LM weights are saved as an ordinary model folder (`config.json`, `tokenizer.json`,
`model.safetensors` in float32) in a cache keyed by the file's SHA-256, and every stage (the driver's checks, the
corpus readers' tokenizer, the capture actors, the sanity check) loads that folder, the same bytes everywhere.

The conversion refuses a file that does not hold every weight of its model (`transformers` reports them missing
and would initialise them at random): nothing random is ever saved as if it came from the file. The SHA-256 is
also what the run's config hash covers (`checkpoint_digest`), so a changed file is a different run; it is
computed once per file version (path, size, modification time) and kept in the cache.

The cache lives in `$GPT_STATS_CACHE`, else `$XDG_CACHE_HOME/gpt-stats`, else `~/.cache/gpt-stats`; on a
cluster every node fills its own (or shares one on a shared file system: writers take a lock, and a folder
appears only complete, by rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from tasks.errors import UserError

log = logging.getLogger(__name__)

SUFFIX = ".gguf"
COMPLETE = "gguf-source.json"  # written last into a converted folder: its presence means the folder is whole
HASH_CHUNK = 8 << 20


def is_gguf(name: str) -> bool:
    """Whether `model.name` names a GGUF file (by its suffix, any query string of a URI left out)."""
    return name.split("?", 1)[0].lower().endswith(SUFFIX)


def cache_root() -> Path:
    """Where downloaded files, digests and converted folders are kept."""
    if os.environ.get("GPT_STATS_CACHE"):
        return Path(os.environ["GPT_STATS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpt-stats"


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (created if missing) for the block: one process of a machine converts or
    downloads a given file while the others wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def package_path(name: str) -> Path:
    """The path inside an installed package that `package:MODULE/SUB` names (a model folder, or a GGUF file); a
    UserError when the package is not installed. Whether the path exists is the caller's to check."""
    module, _, sub = name[len("package:"):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model {name!r}: Python package {module!r} is not installed; pip install it")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def _package_file(name: str) -> Path:
    path = package_path(name)
    if not path.is_file():
        module, _, sub = name[len("package:"):].partition("/")
        raise UserError(f"model {name!r}: package {module!r} has no file {sub!r}")
    return path


def _download(uri: str) -> Path:
    """The object at `uri`, copied once into the cache, keyed by its URI (options left out), size and
    modification time; a changed object is downloaded again."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
    except Exception as exc:
        raise UserError(f"model {uri!r} cannot be reached ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        "check the URI and credentials") from None
    if info.type != pafs.FileType.File:
        raise UserError(f"model {uri!r} is not a file in its object store; check the URI")
    key = hashlib.sha256(f"{uri.split('?', 1)[0]}|{info.size}|{info.mtime_ns}".encode()).hexdigest()[:32]
    target = cache_root() / "downloads" / f"{key}{SUFFIX}"
    with _locked(target.with_suffix(".lock")):
        if not target.is_file():
            partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.part")
            log.info("downloading %s (%.1f MB) to %s", uri.split("?", 1)[0], (info.size or 0) / 1e6, target)
            try:
                with fs.open_input_stream(path) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, HASH_CHUNK)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
    return target


def gguf_file(name: str) -> Path:
    """The local GGUF file a `.gguf` model name stands for (downloaded first for a URI); a UserError if absent."""
    if name.startswith("package:"):
        return _package_file(name)
    if "://" in name:
        return _download(name)
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"model {name!r}: no such GGUF file; give the path of a .gguf file")
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, computed once per version of the file (path, size, modification time) and
    kept in the cache."""
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo = cache_root() / "sha256" / (hashlib.sha256(ident.encode()).hexdigest()[:32] + ".txt")
    if memo.is_file():
        return memo.read_text().strip()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f"{memo.name}.{uuid.uuid4().hex}")
    tmp.write_text(digest + "\n")
    os.replace(tmp, memo)
    return digest


def checkpoint_digest(name: str) -> str | None:
    """The SHA-256 of a GGUF model's file (what the config hash covers); None for other model names."""
    return file_sha256(gguf_file(name)) if is_gguf(name) else None


def converted_folder(name: str) -> Path:
    """The model folder converted from the GGUF file `name` names, made on first use (see the module's doc)."""
    source = gguf_file(name)
    digest = file_sha256(source)
    folder = cache_root() / "gguf" / digest[:32]
    if (folder / COMPLETE).is_file():
        return folder
    with _locked(folder.with_name(folder.name + ".lock")):
        if not (folder / COMPLETE).is_file():
            _convert(name, source, digest, folder)
    return folder


def _convert(name: str, source: Path, digest: str, folder: Path) -> None:
    """Read `source` through `transformers`' GGUF support and save it as a model folder at `folder` (built under
    a temporary name and renamed into place whole)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    log.info("converting GGUF %s (sha256 %s) into %s", source, digest[:16], folder)
    work = folder.with_name(f"{folder.name}.{uuid.uuid4().hex}.part")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        kw = dict(gguf_file=source.name)
        tokenizer = AutoTokenizer.from_pretrained(source.parent, **kw)
        model, info = AutoModelForCausalLM.from_pretrained(source.parent, dtype=torch.float32, output_loading_info=True,
                                                           **kw)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"model {name!r}: transformers cannot read this GGUF file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); check that its architecture is one "
                        "transformers supports for GGUF") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise UserError(f"model {name!r}: the GGUF file lacks {len(missing)} weight(s) of its "
                        f"{type(model).__name__} ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); they "
                        "would be random: use a complete file")
    try:
        work.mkdir(parents=True)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the saved weights are plain float32 tensors
        config.save_pretrained(work)
        tokenizer.save_pretrained(work)
        save_file(_untied(model), str(work / "model.safetensors"), metadata={"format": "pt"})
        (work / COMPLETE).write_text(json.dumps({"model": name, "file": str(source), "sha256": digest}) + "\n")
        if folder.exists():
            shutil.rmtree(folder)  # an incomplete leftover of an interrupted conversion
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _untied(model) -> dict:
    """The model's tensors, each stored once: a tensor shared by several names (a tied head) is kept under its
    first name in module order, the base model's (`model.embed_tokens.weight`, not `lm_head.weight`), which
    `transformers` ties the head to when it loads the folder, as a base model or a language model."""
    out, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[key] = tensor.detach().contiguous()
    return out
