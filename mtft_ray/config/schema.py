"""The experiment config: pydantic models that reject unknown keys.

One YAML file per experiment maps onto :class:`ExperimentConfig`. Every section has defaults,
so an empty file is the built-in default experiment (glyphs, EfficientNet-Lite0).

Example:
    >>> cfg = ExperimentConfig.model_validate({"finetune": {"lr": 1e-4}})
    >>> cfg.tasks.m  # samples per task = n_way * (n_shot + n_query)
    25
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from mtft_ray.config.sources import options_model
from mtft_ray.errors import MtftError


def format_validation_error(e: ValidationError) -> str:
    """Pydantic's errors as one line: ``unknown key 'data.foo'; tasks.M: ...``."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def plain_name(v: str) -> str:
    """``v`` if it can name a folder under ``runs/`` (no path separators, not ``.``/``..``)."""
    if v in ("", ".", "..") or not all(c.isascii() and (c.isalnum() or c in "._-") for c in v):
        raise ValueError(f"{v!r} is not a plain name (letters, digits and . _ - only; it names the "
                         f"output folder runs/<name>)")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Marks a field that says only *how* a run executes (or how far it goes), not what it computes:
# a run may resume from its checkpoints after such a field changed (``resume_safe_fields``).
RESUME_SAFE = {"resume_safe": True}


def resume_safe_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every field marked :data:`RESUME_SAFE` in ``model`` and its sections.

    >>> "finetune.epochs" in resume_safe_fields(ExperimentConfig)
    True
    """
    out = []
    for name, f in model.model_fields.items():
        if (f.json_schema_extra or {}).get("resume_safe"):
            out.append(prefix + name)
        elif isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            out += resume_safe_fields(f.annotation, f"{prefix}{name}.")
    return out


class SplitConfig(_Strict):
    """How classes are split into finetuning (source), validation and target sets.

    ``by: domain`` holds whole domains out (glyphs: held-out scripts, like Omniglot's
    background/evaluation split); ``by: class`` splits the classes of every domain.
    Explicit domain lists win over counts.
    """

    by: Literal["domain", "class"] = "domain"
    target_domains: list[str] | int = 8
    val_domains: list[str] | int = 3
    target_fraction: float = Field(0.3, gt=0, lt=1)  # for by: class
    val_fraction: float = Field(0.1, ge=0, lt=1)  # for by: class
    seed: int = 0

    @field_validator("target_domains", "val_domains")
    @classmethod
    def _domain_count(cls, v: list[str] | int, info: ValidationInfo) -> list[str] | int:
        least = 1 if info.field_name == "target_domains" else 0
        if (isinstance(v, int) and v < least) or (least and v == []):
            raise ValueError(f"give a number of domains >= {least} or a list of domain names, got {v}")
        return v


class DataConfig(_Strict):
    source: str = "glyphs"
    options: dict = Field(default_factory=dict)  # validated by the source's own Options model
    image_size: int = Field(64, ge=16, le=1024)
    cache_dir: str | None = Field(None, json_schema_extra=RESUME_SAFE)  # default: $MTFT_RAY_CACHE or ~/.cache/mtft-ray
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="after")
    def _check_options(self) -> "DataConfig":
        self.source_options()
        return self

    def source_options(self) -> BaseModel:
        """The validated options model of the chosen source."""
        try:
            return options_model(self.source).model_validate(self.options)
        except MtftError as e:
            raise ValueError(str(e)) from None
        except ValidationError as e:
            raise ValueError(f"options of source {self.source!r}: {format_validation_error(e)}") from None


BackboneFamily = Literal["timm", "hf", "open_clip"]
FAMILY_PREFIXES = {"hf:": "hf", "open_clip:": "open_clip", "timm:": "timm"}


class BackboneConfig(_Strict):
    """The pretrained encoder: a timm model (default), a Hugging Face ``transformers`` model
    (``hf:<hub id>``: CLIP / SigLIP / DINOv2 vision towers, BERT-like text encoders) or an
    ``open_clip`` image tower (``open_clip:<architecture>``). ``family`` overrides the prefix.

    ``config`` changes the architecture's configuration (HF ``AutoConfig`` fields, open_clip
    vision-tower fields): with ``weights: none`` it builds a random-init model of any size
    offline, e.g. a two-layer CLIP vision tower for tests.
    """

    name: str = "tf_efficientnet_lite0"
    family: Literal["auto", "timm", "hf", "open_clip"] = "auto"
    weights: Literal["package", "hub", "file", "none"] = "package"
    weights_path: str | None = None  # a weights file (timm, open_clip) or a model folder (hf)
    config: dict | None = None

    @model_validator(mode="after")
    def _path_for_file(self) -> "BackboneConfig":
        if self.weights == "file" and not self.weights_path:
            raise ValueError("backbone.weights is 'file' but backbone.weights_path is not set")
        if self.config is not None and self.resolved_family == "timm":
            raise ValueError("backbone.config is for hf and open_clip backbones; a timm model is chosen by its name")
        return self

    @property
    def resolved_family(self) -> BackboneFamily:
        """``family``, or the one the name's prefix says (no prefix: timm)."""
        if self.family != "auto":
            return self.family
        return next((f for p, f in FAMILY_PREFIXES.items() if self.name.startswith(p)), "timm")

    @property
    def model_id(self) -> str:
        """The name without its family prefix (``hf:bert-base-uncased`` -> ``bert-base-uncased``)."""
        for prefix in FAMILY_PREFIXES:
            if self.name.startswith(prefix):
                return self.name[len(prefix):]
        return self.name


MAX_TASK_IDS = 10**8  # M x m sample ids of a task set (8 bytes each): 0.8 GB


class TaskConfig(_Strict):
    """The finetuning tasks: M tasks of n_way classes, n_shot + n_query samples per class."""

    n_way: int = Field(5, ge=2)
    n_shot: int = Field(1, ge=1)
    n_query: int = Field(4, ge=1)
    M: int = Field(400, ge=1)
    within_domain: bool = True  # all classes of a task from one domain (as in Meta-Dataset)
    # draw tasks (and the selection's candidates) only from these source domains; None: all of
    # them. The sweeps' per-domain include flags (search space `subset`) set it
    domains: list[str] | None = None
    # draw tasks from only this many finetuning classes (a seeded subset, nested as it grows):
    # the paper's limited-classes experiment on diversity
    max_classes: int | None = Field(None, ge=2)
    seed: int = 0

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("tasks.domains is empty: name at least one source domain, or leave it unset for all")
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"tasks.domains names a domain twice: {v}")
        return v

    @field_validator("M")
    @classmethod
    def _M_fits(cls, v: int, info: ValidationInfo) -> int:
        if {"n_way", "n_shot", "n_query"} <= info.data.keys():
            m = info.data["n_way"] * (info.data["n_shot"] + info.data["n_query"])
            if v * m > MAX_TASK_IDS:
                raise ValueError(f"M x m = {v} x {m} = {v * m:.3g} sample ids would take {v * m * 8 / 1e9:,.1f} GB "
                                 f"(8 bytes each); the limit is 10^8 ids ({8 * MAX_TASK_IDS / 1e9:.1f} GB), so M <= "
                                 f"{MAX_TASK_IDS // m} here")
        return v

    @property
    def m(self) -> int:
        """Samples per task."""
        return self.n_way * (self.n_shot + self.n_query)


class PeftConfig(_Strict):
    """Parameter-efficient finetuning with ``peft``: only the adapters (and the head's temperature)
    train; the backbone's own weights stay frozen, and checkpoints hold only what trains.

    ``target_modules`` are module-name patterns as peft reads them: a name matches when it equals
    a pattern or ends with ``.<pattern>``. None picks the family's default
    (:func:`mtft_ray.models.adapters.default_target_modules`).
    """

    method: Literal["lora"] = "lora"
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, min_length=1)
    seed: int = 0  # the adapters' initialisation (LoRA's A matrices)


class FinetuneConfig(_Strict):
    """Multitask finetuning (the paper's Algorithm 2)."""

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v <= 0:
            raise ValueError(f"finetune.lr must be > 0 or 'auto', got {v}")
        return v

    @field_validator("lr_candidates")
    @classmethod
    def _candidates(cls, v: list[float]) -> list[float]:
        if min(v) <= 0 or len(set(v)) != len(v):
            raise ValueError(f"finetune.lr_candidates must be distinct rates > 0, got {v}")
        return v

    epochs: int = Field(2, ge=1, json_schema_extra=RESUME_SAFE)  # a finished run may be extended
    tasks_per_step: int = Field(1, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    # measured on glyphs (120 tasks, 1 epoch, validation 5-way 1-shot; pretrained 77%):
    # 1e-4 -> 95%, 3e-4 -> 92%, 1e-3 -> 63% (and 84% with BN statistics left training).
    # On photo patches split by photo (tests/bench/photo_patches.py; pretrained validation 93.6%)
    # 1e-4 only lowers validation (91.8% at best: keep_pretrained keeps the pretrained weights);
    # "auto" chose 3e-5 there and beat direct adaptation by 1.2 points (README).
    # "auto": a short probe of each lr_candidates rate (lr_probe_steps steps from the pretrained
    # weights, scored on validation) picks the rate; result.json records the probe
    lr: float | Literal["auto"] = 1e-4
    lr_candidates: list[float] = Field(default_factory=lambda: [1e-5, 3e-5, 1e-4, 3e-4], min_length=1)
    lr_probe_steps: int = Field(100, ge=1)
    lr_temperature: float = Field(1e-2, ge=0)  # with temperature_group: own
    # the temperature's optimizer group: its own (at lr_temperature, no weight decay, so tau can move)
    # or the backbone's (at lr, as the paper's code does: tau stays near its initial value)
    temperature_group: Literal["own", "backbone"] = "own"
    # tasks visited in a new seeded order every epoch, or in one fixed order (the paper's code)
    task_order: Literal["shuffled", "fixed"] = "shuffled"
    # training-time augmentation of every image of a finetuning step (supports and queries, on the
    # device; never validation or evaluation episodes): "dinov2" is the paper's DINOv2/MoCo/torchvision
    # recipe (random resized crop 0.32-1, flip, colour jitter 0.4/0.4/0.2/0.1 p 0.8, grayscale p 0.2),
    # seeded by (seed, epoch, step, rank); "none" (the paper's CLIP recipes) leaves batches as stored
    augment: Literal["none", "dinov2"] = "none"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    init_temperature: float = Field(10.0, gt=0)
    freeze_bn: bool = True
    # validate the pretrained weights first (epoch 0) and keep them when no finetuned epoch beats
    # them on validation (a warning then says so): finetuning that hurts never passes unnoticed
    keep_pretrained: bool = True
    # validate every N optimizer steps as well as at every epoch end (None: epoch ends only); each
    # validation is a checkpoint candidate and a report to Tune
    val_every: int | None = Field(None, ge=1)
    # stop after this many validations in a row without a new best (None: never stop early)
    patience: int | None = Field(None, ge=1)
    val_episodes: int = Field(300, ge=1)
    val_queries: int = Field(9, ge=1)  # queries per class of validation episodes
    # None: every weight trains (full finetuning); {method: lora, r, ...}: adapters only
    peft: PeftConfig | None = None
    seed: int = 0


class StandardConfig(_Strict):
    """The standard-finetuning baseline: linear probe, then full finetune with cross-entropy
    over the pooled source classes, on the same images with the same budget."""

    # measured on glyphs: AdamW at 1e-3 (the multitask rate) collapses the features under a
    # 1000+-class CE head; 1e-4 with a 1e-3 probe is the strongest setting tried
    lr: float = Field(1e-4, gt=0)
    head_lr: float = Field(1e-3, gt=0)
    probe_fraction: float = Field(0.2, ge=0, lt=1)  # share of the budget spent on the probe
    batch_size: int = Field(25, ge=1)


class EvalConfig(_Strict):
    n_way: int = Field(5, ge=2)
    shots: list[int] = Field(default_factory=lambda: [1, 5])
    n_query: int = Field(15, ge=1)
    episodes: int = Field(2000, ge=1)
    # a class's prototype: the mean of its raw support features, then compared by cosine (the
    # paper's code, and the training loss), or the mean of L2-normalised features (mtft-ray before
    # 0.2: 0.2-0.4 points higher at 5 shots on pretrained glyph features). Identical at 1 shot
    prototype: Literal["raw_mean", "normalized_mean"] = "raw_mean"
    # all classes of an episode from one domain (as the finetuning tasks, tasks.within_domain),
    # episodes split over domains in proportion to their usable classes; False: any classes
    within_domain: bool = False
    seed: int = 0

    @field_validator("shots")
    @classmethod
    def _shots_positive(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 1:
            raise ValueError("eval.shots must be a non-empty list of positive integers")
        return v


class SelectionConfig(_Strict):
    """Which source tasks to finetune on (the paper's Algorithm 1 and its ablations).

    ``level: domain`` selects whole source domains and then draws the M finetuning tasks from
    their classes, so every strategy gets the same budget; ``level: task`` selects tasks from a
    pool of ``pool_size`` candidates and finetunes on exactly those.
    """

    strategy: Literal["all", "selected", "random", "no_consistency", "no_diversity"] = "all"
    level: Literal["domain", "task"] = "domain"
    measure: Literal["mahalanobis", "coverage"] = "coverage"
    k: int | None = Field(None, ge=1)  # for random / no_diversity; default: the k 'selected' finds
    pool_size: int = Field(2000, ge=1)  # candidate tasks (task level) / tasks that describe domains
    rel_tol: float = Field(0.01, ge=0)
    patience: int = Field(3, ge=1)
    min_k: int = Field(1, ge=1)
    max_k: int | None = Field(None, ge=1)
    shrinkage: float | None = Field(None, ge=0, le=1)  # None: Ledoit-Wolf
    target_domain: str | None = None  # select for (and evaluate on) one held-out domain
    target_samples: int = Field(100, ge=1)  # unlabelled target samples the selection sees
    ablation_targets: list[str] | int = 4  # `select --ablation`: target domains, or how many
    seed: int = 0


class RunConfig(_Strict):
    batch_size: int = Field(128, ge=1)  # inference batch for feature extraction
    threads: int | None = None  # torch intra-op threads (default: torch's choice)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"give at least 1 torch thread (or leave it unset for torch's choice), got {v}")
        return v


class DeepSpeedConfig(_Strict):
    """DeepSpeed settings of ``train.strategy: deepspeed``. Batch sizes are not set here: they are
    derived in code from ``finetune.tasks_per_step`` and the number of workers."""

    zero_stage: int = 2
    bf16: bool | None = None  # None: bf16 on GPU, fp32 on CPU

    @field_validator("zero_stage")
    @classmethod
    def _stage(cls, v: int) -> int:
        if v not in (1, 2, 3):
            raise ValueError(f"ZeRO stage must be 1, 2 or 3, got {v}")
        return v


class TrainConfig(_Strict):
    """Where multitask finetuning runs: in this process (``workers: 0``) or on Ray Train workers.

    With workers, each step takes ``finetune.tasks_per_step`` distinct tasks on every worker, so a
    step covers ``tasks_per_step * workers`` tasks and an epoch is still the M tasks.
    """

    workers: int = Field(0, ge=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, ge=0, json_schema_extra=RESUME_SAFE)
    gpus_per_worker: float | None = Field(None, ge=0, json_schema_extra=RESUME_SAFE)  # default: 1 with use_gpu
    resources_per_worker: dict[str, float] = Field(default_factory=dict, json_schema_extra=RESUME_SAFE)  # extra custom resources
    torch_threads: int | None = Field(None, ge=1, json_schema_extra=RESUME_SAFE)  # per worker (default: CPUs per worker, at least 1)
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    max_failures: int = Field(0, ge=-1, json_schema_extra=RESUME_SAFE)  # worker-group restarts from the last checkpoint (-1: forever)
    checkpoints_to_keep: int = Field(2, ge=1, json_schema_extra=RESUME_SAFE)  # by validation score; the latest is always kept too
    fail_at_step: int | None = Field(None, ge=1, json_schema_extra=RESUME_SAFE)  # test hook: rank 0 raises once at this global step

    @model_validator(mode="after")
    def _gpu_resources(self) -> "TrainConfig":
        if self.gpus_per_worker and not self.use_gpu:
            raise ValueError("train.gpus_per_worker is set but train.use_gpu is false")
        if self.strategy == "deepspeed" and self.deepspeed.bf16 and not self.use_gpu:
            raise ValueError("train.deepspeed.bf16 needs train.use_gpu (bf16 autocast is GPU-only here)")
        return self


class StorageConfig(_Strict):
    """Where distributed runs keep checkpoints and results: a local folder or ``s3://bucket/prefix``.

    Credentials come only from the standard AWS chain (environment, profile, instance role);
    an S3-compatible service is reached through ``endpoint_url`` or ``$AWS_ENDPOINT_URL``.
    """

    path: str | None = None  # default: the run's output folder
    endpoint_url: str | None = None
    region: str | None = None

    @field_validator("path")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v and "://" in v and not v.startswith(("s3://", "file://")):
            raise ValueError(f"storage.path must be a local path or s3://bucket/prefix, got {v!r}")
        return v


Method = Literal["direct", "standard", "multitask"]


class ExperimentConfig(_Strict):
    name: str = "default"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    tasks: TaskConfig = Field(default_factory=TaskConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    standard: StandardConfig = Field(default_factory=StandardConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    methods: list[Method] = Field(default_factory=lambda: ["direct", "standard", "multitask"])

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return plain_name(v)

    @model_validator(mode="after")
    def _text_needs_a_text_encoder(self) -> "ExperimentConfig":
        """A text source (its options name a tokenizer) needs a Hugging Face text encoder, and
        tokenizes with that encoder's own tokenizer unless ``data.options.tokenizer`` says otherwise."""
        if not hasattr(self.data.source_options(), "tokenizer"):
            return self
        b = self.backbone
        if b.resolved_family != "hf":
            raise ValueError(f"data.source {self.data.source!r} gives tokenized text, but backbone {b.name!r} is a "
                             f"{b.resolved_family} image model: set backbone.name to a Hugging Face text encoder, "
                             f"e.g. hf:sentence-transformers/all-MiniLM-L6-v2")
        if "tokenizer" not in self.data.options and b.weights != "none":
            own = b.weights_path if b.weights == "file" else b.model_id
            self.data.options = {**self.data.options, "tokenizer": own}
        return self

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one method: direct, standard, multitask")
        if len(set(v)) != len(v):
            raise ValueError(f"names a method twice: {v}")
        return v
