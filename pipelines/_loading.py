"""Loading a pipeline's models: from a hub id, a local diffusers folder, a single-file checkpoint, or
miniature components built in code (--tiny); TAESD in place of the full VAE; the family check that
refuses an SDXL model in an SD 1.x pipeline (and the reverse) at start-up."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from pipelines._base import ModelLoadError, ModelMismatch, ModelOptions, ModelUnavailable

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")



# The noise schedule every Stable Diffusion 1.x/2.x/XL model was trained with (their scheduler configs).
SD_BETAS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}


# SD 1.x/2.x pipelines are built without their own safety checker: the server's --safety-checker
# runs after any pipeline.
NO_SAFETY_CHECKER = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def _hub_unavailable(model_id: str, why: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"Model {model_id!r} is not in the local Hugging Face cache and cannot be downloaded ({why}). "
        "Connect to the Hugging Face hub, pass --model-id with a local diffusers folder or a "
        ".safetensors checkpoint, or run with --tiny for miniature random models."
    )

def ensure_hub_model(model_id: str) -> None:
    """Fail at once, with a clear message, when a hub model can be neither read from cache nor fetched."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        snapshot_download(model_id, local_files_only=True, allow_patterns=["*.json"])
        return
    except LocalEntryNotFoundError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise _hub_unavailable(model_id, "HF_HUB_OFFLINE is set")
    try:
        HfApi().model_info(model_id, timeout=10)
    except RepositoryNotFoundError:
        raise ModelUnavailable(f"Model {model_id!r} does not exist on the Hugging Face hub (or needs a login).") from None
    except Exception as error:  # DNS, connection refused, timeout, proxy: all mean "no hub from here"
        raise _hub_unavailable(model_id, f"hub unreachable: {type(error).__name__}") from None

def load_pipeline(cls: Any, model_id: str, dtype: torch.dtype, config_id: str = "", **kwargs: Any) -> Any:
    """Load a diffusers pipeline from a hub id, a local diffusers folder or a single-file checkpoint
    (whose configs come from `config_id`, or from the hub repo diffusers guesses from its keys)."""
    path = Path(model_id).expanduser()
    if path.is_file() and path.suffix in SINGLE_FILE_SUFFIXES:
        log.info("Loading single-file checkpoint %s", path)
        if config_id and not Path(config_id).expanduser().is_dir():
            ensure_hub_model(config_id)
        try:
            return cls.from_single_file(str(path), dtype=dtype, config=config_id or None, **kwargs)
        except OSError as error:
            if config_id:
                raise
            # diffusers looks for the configs of the checkpoint's base model on the hub.
            raise ModelUnavailable(
                f"Single-file checkpoint {model_id!r} needs the configs of its base model, which are not in the "
                "local cache and cannot be downloaded. Pass --model-config-id with a local diffusers folder (or "
                f"cached hub id) of the same architecture, or connect to the hub. ({type(error).__name__})"
            ) from None
    if path.is_dir():
        log.info("Loading diffusers folder %s", path)
        return cls.from_pretrained(str(path), dtype=dtype, **kwargs)
    if path.exists() or model_id.startswith((".", "/", "~")) or model_id.endswith(SINGLE_FILE_SUFFIXES):
        raise ModelUnavailable(
            f"--model-id {model_id!r}: expected a hub id, a diffusers folder or a "
            f"{'/'.join(SINGLE_FILE_SUFFIXES)} file, and found no such folder or file."
        )
    ensure_hub_model(model_id)
    log.info("Loading %s from the Hugging Face hub cache (downloading what is missing)", model_id)
    return cls.from_pretrained(model_id, dtype=dtype, **kwargs)

def hub_parts(source: str) -> tuple[str, str]:
    """A hub id with a path inside the repository, as the set-ups name files and subfolders
    ("ByteDance/Hyper-SD/Hyper-SD15-1step-lora.safetensors") -> ("ByteDance/Hyper-SD", "Hyper-SD15-1step-lora.safetensors");
    a plain id -> (id, "")."""
    parts = source.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])

def is_local(source: str) -> bool:
    """A path rather than a hub id: it exists, or it is spelled as a path."""
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~"))

def model_file(source: str, what: str) -> Path:
    """A file named as the set-ups name them: a local path, or a file in a hub repository
    ("owner/repo/path/in/repo"), fetched into the hub cache. ModelUnavailable where there is none."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    repo, inner = hub_parts(source)
    if is_local(source) or not inner:
        raise ModelUnavailable(f"{what} {source!r}: no such file (expected a file, or owner/repo/file in the hub)")
    from huggingface_hub import hf_hub_download

    ensure_hub_model(repo)
    return Path(hf_hub_download(repo, inner))

def load_model(cls: Any, model_id: str, dtype: torch.dtype, **kwargs: Any) -> Any:
    """Load one model (an autoencoder, a ControlNet) from a hub id (with a subfolder after its second
    slash: "monster-labs/control_v1p_sd15_qrcode_monster/v2") or a local folder."""
    if Path(model_id).expanduser().is_dir():
        return cls.from_pretrained(model_id, dtype=dtype, **kwargs)
    if is_local(model_id):
        raise ModelUnavailable(f"{model_id!r}: no such folder")
    repo, subfolder = hub_parts(model_id)
    ensure_hub_model(repo)
    return cls.from_pretrained(repo, dtype=dtype, **({"subfolder": subfolder} if subfolder else {}), **kwargs)

def build_pipeline(
    cls: Any,
    options: ModelOptions,
    default_model_id: str,
    dtype: torch.dtype,
    tiny_components: Callable[[], dict[str, Any]],
    **kwargs: Any,
) -> Any:
    """The diffusers pipeline `cls` from --model-id (or the default model), or from miniature components."""
    if options.tiny:
        components = {
            name: cast(component, dtype) if isinstance(component, torch.nn.Module) else component
            for name, component in tiny_components().items()
        }
        return cls(**(kwargs | components))  # miniature components replace loaded ones
    model_id = options.model_id or default_model_id
    try:
        pipe = load_pipeline(cls, model_id, dtype, options.model_config_id, **kwargs)
    except ModelLoadError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError, OSError) as error:
        raise ModelMismatch(f"Model {model_id!r} could not be loaded as {cls.__name__}: {error}") from error
    check_fits(pipe, model_id)
    return pipe

def check_fits(pipe: Any, model_id: str) -> None:
    """Refuse, at start-up, a model whose UNet and text encoders do not belong together."""
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    width = sum(
        encoder.config.hidden_size
        for encoder in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
        if encoder is not None
    )
    unet = pipe.unet.config
    kind = "SDXL" if sdxl else "Stable Diffusion 1.x/2.x"
    if unet.cross_attention_dim != width or sdxl != (unet.addition_embed_type == "text_time"):
        raise ModelMismatch(
            f"Model {model_id!r} does not fit this {kind} pipeline: its UNet takes {unet.cross_attention_dim}-wide "
            f"text embeddings{' with SDXL conditioning' if unet.addition_embed_type == 'text_time' else ''}, "
            f"its text encoders give {width}. Pick the pipeline of its family (--list-pipelines)."
        )

def swap_in_taesd(pipe: Any, options: ModelOptions, repo: str, build_tiny: Callable[[], Any]) -> None:
    """Replace the full VAE by TAESD: about 10x cheaper to encode and decode, near the same look."""
    if not options.taesd:
        return
    from diffusers import AutoencoderTiny

    dtype = pipe.unet.dtype
    pipe.vae = cast(build_tiny(), dtype) if options.tiny else load_model(AutoencoderTiny, repo, dtype)

def cast(model: Any, dtype: torch.dtype) -> Any:
    """A model built in code in the run dtype: what from_pretrained(dtype=...) does for loaded models
    (diffusers' own .to() warns about it)."""
    return torch.nn.Module.to(model, dtype=dtype)
