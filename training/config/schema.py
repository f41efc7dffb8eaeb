"""Config sections owned by training/. Each component receives only its own section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmtrain.pipelines.config import ANY_FINITE, Checked, DataConfig, InvalidValue, above, at_least, within
from mmtrain.pipelines.contract import IMAGE_MEAN, IMAGE_STD
from mmtrain.training.config.metric_names import check_sweep_metric

# Keys a trainer does not read, with what to set instead: set to anything but their default, they are
# refused, and `config show` leaves them out (the data keys stay readable in configs saved before).
UNUSED_BY_ANY = {
    "data.tokenize_batch_size": "nothing: read, decode and tokenize run fused (data.workers sizes the pool)",
    "data.tokenize_actors": "nothing: read, decode and tokenize run fused (data.workers sizes the pool)",
}
UNUSED_BY_VLM = {
    **UNUSED_BY_ANY,
    "optim.lr": "lrs.projector, lrs.lm and lrs.vision: the VLM learns at one rate per module (0 freezes it)",
}


def refuse_unused(config, unused: dict[str, str]) -> None:
    """InvalidValue for a key in `unused` set to other than its default."""
    for key, instead in unused.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value != getattr(type(getattr(config, section))(), name):
            raise InvalidValue(f"{key}={value!r} does nothing for this trainer; set {instead}")


Activation = Literal["gelu", "quick_gelu"]  # quick_gelu: x * sigmoid(1.702 x), OpenAI CLIP's


@dataclass(frozen=True)
class VisionConfig(Checked):
    RANGES = {
        "image_size": at_least(1),
        "patch_size": at_least(1),
        "width": at_least(1),
        "layers": at_least(1),
        "heads": at_least(1),
        "mlp_ratio": above(0),
        "image_mean": within(0, 1),
        "image_std": above(0),
    }

    image_size: int = 64
    patch_size: int = 8
    width: int = 192
    layers: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0
    activation: Activation = "gelu"
    # Per-channel normalisation on the device; a pretrained tower brings its own (preprocessor_config.json).
    image_mean: tuple[float, float, float] = IMAGE_MEAN
    image_std: tuple[float, float, float] = IMAGE_STD


@dataclass(frozen=True)
class TextConfig(Checked):
    RANGES = {
        "vocab_size": at_least(0),
        "width": at_least(1),
        "layers": at_least(1),
        "heads": at_least(1),
        "mlp_ratio": above(0),
    }

    vocab_size: int = 0  # 0 = the tokenizer's vocabulary size, filled in when the run starts
    width: int = 192
    layers: int = 3
    heads: int = 3
    mlp_ratio: float = 4.0
    activation: Activation = "gelu"


@dataclass(frozen=True)
class ClipModelConfig(Checked):
    RANGES = {"embed_dim": at_least(1)}

    embed_dim: int = 128
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)


@dataclass(frozen=True)
class LossConfig(Checked):
    RANGES = {"init_temperature": above(0), "max_logit_scale": above(0), "siglip_init_bias": ANY_FINITE}

    kind: Literal["infonce", "siglip"] = "infonce"
    init_temperature: float = 0.07  # logit scale starts at 1/temperature
    learnable_temperature: bool = True
    max_logit_scale: float = 100.0  # clamped after every optimizer step
    siglip_init_bias: float = -10.0


@dataclass(frozen=True)
class OptimConfig(Checked):
    RANGES = {
        "lr": at_least(0),
        "weight_decay": at_least(0),
        "betas": within(0, 1, high_open=True),
        "eps": at_least(0),
        "warmup_steps": at_least(0),
        "min_lr_ratio": within(0, 1),
        "grad_clip_norm": at_least(0),
        "grad_accum_steps": at_least(1),
    }

    lr: float = 5e-4
    weight_decay: float = 0.1  # not applied to biases, norms, embeddings or the logit scale
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip_norm: float = 1.0  # 0 = off
    # Micro-batches per optimizer step. CLIP accumulates with cached features, so N micro-batches of B
    # are one batch of N x B, negatives included; the VLM averages the micro-batches' gradients.
    grad_accum_steps: int = 1
    # On resume with a different loop.max_steps: false keeps the run's schedule (it ends where it
    # was planned to); true starts a new warmup + cosine from the current step to the new max_steps.
    restart_schedule: bool = False


@dataclass(frozen=True)
class LoopConfig(Checked):
    RANGES = {
        "max_steps": at_least(1),
        "epochs": at_least(0),
        "batch_size_per_worker": at_least(1),
        "log_every": at_least(0),
        "eval_every": at_least(0),
        "checkpoint_every": at_least(0),
        "seed": at_least(0),
    }

    max_steps: int = 200
    # Passes over the training data; 0 = as many as max_steps needs. The run ends at max_steps or
    # at the end of the last epoch, whichever comes first.
    epochs: int = 0
    batch_size_per_worker: int = 64
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    checkpoint_every: int = 50
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False
    # blocks: keep only each transformer block's input and recompute its activations in the backward
    # (our towers through torch's checkpoint wrapper, a Hugging Face LM through its own gradient
    # checkpointing): one more forward per step, for a fraction of the activation memory.
    activation_checkpointing: Literal["none", "blocks"] = "none"
    seed: int = 0


@dataclass(frozen=True)
class ScalingConfig(Checked):
    RANGES = {"num_workers": at_least(1), "cpus_per_worker": above(0)}

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    placement_strategy: Literal["PACK", "SPREAD"] = "PACK"  # SPREAD: one worker per node where possible
    # ddp: every worker holds the whole model, its gradients and optimizer state. fsdp: FSDP2 shards
    # parameters, gradients and optimizer state over the workers, per transformer block (on GPU with
    # bf16 compute and fp32 reduction and master weights); each worker then holds about 1/num_workers.
    strategy: Literal["ddp", "fsdp"] = "ddp"


@dataclass(frozen=True)
class EvalConfig(Checked):
    RANGES = {"batch_size": at_least(1), "max_retrieval_samples": at_least(1)}

    zero_shot: bool = True  # class names + templates from the eval shards' manifest.json
    retrieval: bool = True
    classes: list[str] = field(default_factory=list)  # [] = the eval shards' manifest.json classes
    classes_file: str = ""  # or one class name per line
    templates: list[str] = field(default_factory=list)  # [] = the manifest's caption templates
    batch_size: int = 256
    max_retrieval_samples: int = 5000  # recall@K over at most this many eval pairs
    # Benchmarks evaluated with the eval shards, at every evaluation: built-in names (conf/eval), YAML
    # files or directories of class folders / a Karpathy JSON (as `mmtrain eval clip --benchmark`
    # takes them). Logged as BENCHMARK/METRIC, e.g. cifar10/acc1.
    benchmarks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db; "none" = off
    experiment: str = ""  # MLflow experiment; "" = one per trainer: mmtrain-clip, mmtrain-vlm
    parent_run_id: str = ""  # set by a sweep: this run is nested under the sweep's run
    log_figures: bool = True  # sample grid, similarity and confusion matrices as PNG artifacts
    # What of the final checkpoint goes into the MLflow run: "weights" = the trained weights alone
    # (weights/model.safetensors + config.yaml); "full" = the whole checkpoint, optimizer state and
    # every rank's shards included (gigabytes for a ViT-B; it resumes); "none" = nothing (the
    # checkpoints stay in run.output_dir either way).
    log_checkpoint: Literal["none", "weights", "full"] = "weights"
    # A name: at the end of a successful run, export the model (CLIP: transformers CLIPModel, VLM: LLaVA)
    # and register it as a new version of this MLflow registered model, as a pyfunc model that
    # mlflow.pyfunc.load_model serves (training/tracking/exported_model.py). "" = no registration.
    register_model: str = ""


@dataclass(frozen=True)
class RunSettings(Checked):
    RANGES = {"max_failures": at_least(-1), "local_num_cpus": at_least(0), "keep_checkpoints": at_least(1)}

    name: str = "clip"  # the run's directory under output_dir, and its MLflow run name
    # A run whose directory holds checkpoints: "never" = refuse to start (naming the two commands
    # that work: resume it, or another run.name); "must" = continue it (`train --resume`), refuse
    # when there is nothing to continue; "auto" = continue when there is, start when not (unattended
    # jobs that a scheduler restarts; sweep trials).
    resume: Literal["never", "auto", "must"] = "never"
    output_dir: str = "runs"  # checkpoints, Ray Train state and the default MLflow store
    max_failures: int = 2  # worker failures survived (each resumes from the last checkpoint)
    ray_address: str = ""  # "" = start a local Ray instance
    local_num_cpus: int = 0  # logical CPUs for a local instance; 0 = max(6, 3 x cores)
    keep_checkpoints: int = 2


@dataclass(frozen=True)
class ClipRunConfig:
    # A Hugging Face CLIPModel directory (config.json, model.safetensors, tokenizer) to fine-tune from:
    # its architecture, weights, tokenizer, context length, image size and normalisation replace the
    # preset's (training/models/hf_clip.py). "" = random initialisation.
    init_from: str = ""
    run: RunSettings = field(default_factory=RunSettings)
    data: DataConfig = field(default_factory=DataConfig)
    model: ClipModelConfig = field(default_factory=ClipModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    UNUSED_KEYS = UNUSED_BY_ANY

    def __post_init__(self):
        refuse_unused(self, self.UNUSED_KEYS)
        if self.data.packing.enabled:
            raise InvalidValue(
                "data.packing packs conversations for VLM training; CLIP's rows are one image and one "
                "caption each: remove data.packing (or set data.packing.max_tokens=0)"
            )


# --- VLM (LLaVA-style) -------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionEncoderConfig(Checked):
    RANGES = {"feature_layer": within(-1024, 1024)}

    checkpoint: str = ""  # a CLIP checkpoint directory, or a CLIP run directory (its latest checkpoint)
    feature_layer: int = -2  # -2 = penultimate block (LLaVA); CLS is always dropped


@dataclass(frozen=True)
class ProjectorConfig(Checked):
    RANGES = {"hidden_width": at_least(0)}

    type: str = "mlp2x_gelu"  # "linear" or "mlp{N}x_gelu"
    hidden_width: int = 0  # 0 = the LM's width


@dataclass(frozen=True)
class LoraConfig(Checked):
    """LoRA adapters on the LM (the peft library): the LM's own weights stay frozen, and only the
    adapters train, sit in the optimizer and are saved. Their learning rate is lrs.lm."""

    RANGES = {"rank": at_least(0), "alpha": at_least(0), "dropout": within(0, 1, high_open=True)}

    rank: int = 0  # 0 = no LoRA
    alpha: float = 16.0  # the adapters' output is scaled by alpha / rank
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass(frozen=True)
class LanguageModelConfig:
    path: str = ""  # a local HF causal-LM directory (`mmtrain models tiny-lm` / `import-gguf`)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class VlmModelConfig:
    vision: VisionEncoderConfig = field(default_factory=VisionEncoderConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    lm: LanguageModelConfig = field(default_factory=LanguageModelConfig)


@dataclass(frozen=True)
class ModuleLearningRates(Checked):
    """One learning rate per module group; 0 freezes the module (no gradient, not in the optimizer)."""

    RANGES = {"vision": at_least(0), "projector": at_least(0), "lm": at_least(0)}

    vision: float = 0.0
    projector: float = 1e-3
    lm: float = 0.0


@dataclass(frozen=True)
class VlmEvalConfig(Checked):
    RANGES = {
        "max_generate_samples": at_least(0),
        "max_new_tokens": at_least(1),
        "batch_size": at_least(1),
        "table_rows": at_least(0),
    }

    max_generate_samples: int = 200  # held-out questions answered by greedy generation, over all ranks
    max_new_tokens: int = 8
    batch_size: int = 32
    table_rows: int = 20  # sample generations saved as an MLflow artifact


@dataclass(frozen=True)
class VlmRunConfig(Checked):
    RANGES = {"max_length": at_least(1)}

    stage: Literal["captions", "conversations"] = "captions"  # 1: alignment, 2: instruction tuning
    init_from: str = ""  # stage 2: a stage-1 checkpoint or run directory to take the projector from
    max_length: int = 128  # tokens per sample, image tokens included
    run: RunSettings = field(default_factory=lambda: RunSettings(name="vlm"))
    data: DataConfig = field(default_factory=DataConfig)
    model: VlmModelConfig = field(default_factory=VlmModelConfig)
    lrs: ModuleLearningRates = field(default_factory=ModuleLearningRates)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    eval: VlmEvalConfig = field(default_factory=VlmEvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    UNUSED_KEYS = UNUSED_BY_VLM

    def __post_init__(self):
        super().__post_init__()
        refuse_unused(self, self.UNUSED_KEYS)
        packing = self.data.packing
        if packing.enabled and packing.max_tokens < self.max_length:
            raise InvalidValue(
                f"data.packing.max_tokens={packing.max_tokens} is shorter than max_length={self.max_length}: "
                "a packed row must hold the longest sample (raise it, or set max_tokens=0 to not pack)"
            )
        if packing.enabled and 0 < packing.max_images < self.data.max_images_per_sample:
            raise InvalidValue(
                f"data.packing.max_images={packing.max_images} holds fewer images than "
                f"data.max_images_per_sample={self.data.max_images_per_sample}: raise it, or 0 for as many as fit"
            )


# --- Ray Tune sweeps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerConfig(Checked):
    RANGES = {"grace_period": at_least(1), "reduction_factor": above(1)}

    type: Literal["asha", "fifo"] = "asha"  # asha stops weak trials early; fifo runs all to the end
    grace_period: int = 10  # training steps every trial gets before it can be stopped
    reduction_factor: int = 2  # asha keeps about 1/reduction_factor of the trials at each rung


@dataclass(frozen=True)
class SweepConfig(Checked):
    """A Ray Tune sweep: which trainer, its base config, and a search space over config keys."""

    RANGES = {
        "num_samples": at_least(1),
        "max_concurrent_trials": at_least(0),
        "data_cpus_per_trial": above(0),
        "seed": at_least(0),
        "local_num_cpus": at_least(0),
    }

    name: str = "sweep"  # trials are runs named <name>-<trial id>; --resume finds the sweep by name
    trainer: str = "clip"  # a trainer of training/tasks/registry.py: clip or vlm
    base_config: str = ""  # a conf/clip or conf/vlm preset (relative to the working dir or the repo)
    overrides: list[str] = field(default_factory=list)  # key=value applied to every trial
    # key -> {choice: [...]} | {grid: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]} | {randint: [lo, hi]}
    search_space: dict = field(default_factory=dict)
    metric: str = "val/zero_shot_top1"  # val/<name> is reported at every evaluation (set loop.eval_every)
    mode: Literal["max", "min"] = "max"
    num_samples: int = 4  # trials (each grid point counts num_samples times)
    max_concurrent_trials: int = 0  # 0 = as many as the cluster's free resources hold
    data_cpus_per_trial: float = 1.0  # CPUs each trial's Ray Data pipeline may use
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    output_dir: str = "runs"  # the sweep lives in <output_dir>/sweeps/<name>/
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db; "none" = off
    experiment: str = ""  # MLflow experiment of the sweep and its trials; "" = mmtrain-<trainer>-sweeps
    seed: int = 0
    ray_address: str = ""  # "" = a local Ray instance
    local_num_cpus: int = 0  # logical CPUs for a local instance; 0 = max(6, 3 x cores)

    def __post_init__(self):
        super().__post_init__()
        check_sweep_metric(self.metric)
