"""IP-Adapter: an image as a prompt beside the text (the plain adapter, and the composition adapter
that takes the picture's layout), through diffusers' own `load_ip_adapter` and `encode_image`. An
image prompt is encoded once and kept while it is in use; without one, each frame is its own image
prompt (the anchor's IPcomposition set-ups: the camera's composition, redrawn from the prompt)."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipelines import _tiny as tiny
from pipelines._base import ModelMismatch, ModelOptions, ModelUnavailable
from pipelines._loading import ensure_hub_model, hub_parts, is_local

log = logging.getLogger(__name__)

# Per kind and family: the adapter's file ("owner/repo/path/in/repo"), and its image encoder's folder.
ADAPTERS: dict[str, dict[str, tuple[str, str]]] = {
    "plain": {
        "sd15": ("h94/IP-Adapter/models/ip-adapter_sd15.safetensors", "h94/IP-Adapter/models/image_encoder"),
        "sdxl": ("h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors", "h94/IP-Adapter/sdxl_models/image_encoder"),
    },
    "composition": {
        "sd15": ("ostris/ip-composition-adapter/ip_plus_composition_sd15.safetensors", "h94/IP-Adapter/models/image_encoder"),
        "sdxl": ("ostris/ip-composition-adapter/ip_plus_composition_sdxl.safetensors", "h94/IP-Adapter/models/image_encoder"),
    },
}
CACHED_PROMPTS = 8  # encoded image prompts kept (a session's, a few sessions')


class ImagePrompts:
    """The adapter loaded into `pipe`, and each frame's image embeddings: (positive, negative) pairs
    shaped as diffusers' `prepare_ip_adapter_image_embeds` gives them for one image (1 x 1 x ...)."""

    def __init__(self, pipe: Any, kind: str, family: str, options: ModelOptions, dtype: torch.dtype) -> None:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        self.pipe = pipe
        adapter, encoder = ADAPTERS[kind][family]
        if options.tiny:
            image_encoder, processor = tiny.tiny_image_encoder()
            image_encoder = torch.nn.Module.to(image_encoder, dtype=dtype)
            source: Any = tiny.tiny_ip_adapter(pipe.unet, image_encoder, composition=kind == "composition")
            where: dict[str, Any] = {"subfolder": None, "weight_name": None}
        else:
            encoder = options.image_encoder_id or encoder
            image_encoder = _load(CLIPVisionModelWithProjection, encoder, dtype)
            side = image_encoder.config.image_size  # as diffusers' load_ip_adapter sizes its processor
            processor = CLIPImageProcessor(size=side, crop_size=side)
            source, where = _adapter_file(options.ip_adapter_id or adapter)
        pipe.image_encoder, pipe.feature_extractor = image_encoder, processor
        try:
            pipe.load_ip_adapter(source, image_encoder_folder=None, **where)
        except (RuntimeError, ValueError, KeyError) as error:
            raise ModelMismatch(f"The IP-Adapter does not fit this model ({str(error).strip().splitlines()[-1][:200]})") from None
        from diffusers.models.embeddings import ImageProjection

        # diffusers' rule: the plain adapter takes the pooled embedding, the others the penultimate hidden states
        self.hidden_states = not isinstance(pipe.unet.encoder_hid_proj.image_projection_layers[0], ImageProjection)
        self._scale: float | None = None
        self._cache: OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._negative: torch.Tensor | None = None  # the hidden-states adapters' negative: a black image's, once

    def set_scale(self, scale: float) -> None:
        if scale != self._scale:
            self.pipe.set_ip_adapter_scale(scale)
            self._scale = scale

    def embeds(self, images: list[Image.Image], kept: list[bool]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each image's (positive, negative) embeddings. Those `kept` (image prompts, the same frame
        after frame) come from the cache once encoded; the others (camera frames, each new) are
        encoded as they come and not kept, so they never push an image prompt out of the cache."""
        digests = [_digest(image) if keep else None for image, keep in zip(images, kept)]
        missing = [i for i, digest in enumerate(digests) if digest is None or digest not in self._cache]
        encoded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if missing:
            positive = self._encode([images[i] for i in missing])
            for row, i in enumerate(missing):
                embeds = positive[row : row + 1]
                negative = self._negative if self.hidden_states else torch.zeros_like(embeds)
                encoded[i] = (embeds[None], negative[None])
        found = []
        for i, digest in enumerate(digests):
            if digest is None:
                found.append(encoded[i])
                continue
            if i in encoded:
                self._cache[digest] = encoded[i]
                if len(self._cache) > CACHED_PROMPTS:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(digest)
            found.append(self._cache[digest])
        return found

    def _encode(self, images: list[Image.Image]) -> torch.Tensor:
        """The images' embeddings as diffusers' `encode_image` computes them (the plain adapter: the
        projected embedding; the others: the penultimate hidden states), without its negative for each
        call: the plain adapter's is zeros, the others' a black image's, computed once here."""
        encoder = self.pipe.image_encoder
        parameter = next(encoder.parameters())
        pixels = self.pipe.feature_extractor(images, return_tensors="pt").pixel_values
        pixels = pixels.to(device=parameter.device, dtype=parameter.dtype)
        if not self.hidden_states:
            return encoder(pixels).image_embeds
        if self._negative is None:
            self._negative = encoder(torch.zeros_like(pixels[:1]), output_hidden_states=True).hidden_states[-2]
        return encoder(pixels, output_hidden_states=True).hidden_states[-2]


def _digest(image: Image.Image) -> bytes:
    return hashlib.blake2b(image.tobytes(), digest_size=16, key=repr((image.size, image.mode)).encode()).digest()


def _load(cls: Any, source: str, dtype: torch.dtype) -> Any:
    path = Path(source).expanduser()
    if path.is_dir():
        return cls.from_pretrained(str(path), dtype=dtype)
    if is_local(source):
        raise ModelUnavailable(f"Image encoder {source!r}: no such folder")
    repo, subfolder = hub_parts(source)
    ensure_hub_model(repo)
    return cls.from_pretrained(repo, subfolder=subfolder or None, dtype=dtype)


def _adapter_file(source: str) -> tuple[str, dict[str, Any]]:
    """Where `load_ip_adapter` finds an adapter: a local file, or a file in a hub repository."""
    path = Path(source).expanduser()
    if path.is_file():
        return str(path.parent), {"subfolder": None, "weight_name": path.name}
    if is_local(source):
        raise ModelUnavailable(f"IP-Adapter {source!r}: no such file")
    repo, inner = hub_parts(source)
    ensure_hub_model(repo)
    folder, _, name = inner.rpartition("/")
    return repo, {"subfolder": folder or None, "weight_name": name}
