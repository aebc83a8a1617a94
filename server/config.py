"""The one typed configuration: CLI flags and LIVE_DIFFUSION_* environment variables (flags win)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from pipelines import COMPOSED, Choices, ModelOptions

ENV_PREFIX = "LIVE_DIFFUSION_"
SET_UP_FLAGS = ("base", "accelerator", "scheduler", "controlnet", "ip_adapter")
DEFAULT_MAX_USERS = 8  # a GPU serves a handful of users in real time; also what a LAN or public server admits


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_prog_name="python server/main.py",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_show_env_vars=True,
        frozen=True,
    )

    # what to serve
    pipeline: str = Field("img2img", description="Pipeline module in pipelines/ or model set-up, such as controlnetDepthHyperSDXL (see --list-pipelines)")
    list_pipelines: bool = Field(False, description="Print the available pipelines and exit")
    model_id: str = Field(
        "", description="Model override: hub id, local diffusers folder or single-file .safetensors checkpoint"
    )
    model_config_id: str = Field(
        "", description="For a single-file --model-id: hub id or diffusers folder holding its configs; empty: guessed from the file"
    )
    lora: list[str] = Field(
        [], description="LoRA to load through peft: hub id, folder or .safetensors file, with an optional :WEIGHT (repeatable)"
    )
    fuse_loras: bool = Field(False, description="Fuse the LoRAs into the weights: faster frames, no live lora_scale")
    controlnet_id: str = Field("", description="ControlNet override for ControlNet pipelines: hub id or local folder")
    lcm_lora_id: str = Field(
        "", description="LCM-LoRA override (img2img_sdxl_lcm_lora): hub id, folder or file; 'none' for an already fast model"
    )
    tiny: bool = Field(False, description="Miniature random models built in code: no GPU or hub needed, output is noise")

    # a model set-up of one's own, or changes to a named one (README: Model set-ups)
    base: str = Field("", description="Set-up base model: lcm-dreamshaper, sd15, sd21, sd-turbo, sdxs, sdxl, sdxl-turbo, vega")
    accelerator: str = Field(
        "", description="Set-up accelerator: lcm, lcm-lora, hyper, pcm[:STEPS], flash, lightning[:STEPS], vegart, turbo, none"
    )
    scheduler: str = Field("", description="Set-up scheduler instead of the accelerator's: lcm, tcd, euler, euler_a, ddim")
    controlnet: str = Field(
        "", description="Set-up ControlNets, comma-separated: canny, depth, lineart, qr, each with an optional =HUB_ID_OR_FOLDER"
    )
    ip_adapter: str = Field("", description="Set-up image prompt: plain or composition (IP-Adapter, SD 1.5 and SDXL); none to drop it")
    accelerator_id: str = Field("", description="The accelerator's LoRA or UNet from another hub id, folder or file")
    depth_model: str = Field("", description="Depth annotator for depth ControlNets: a transformers depth model (hub id or folder)")
    ip_adapter_id: str = Field("", description="The IP-Adapter from another file: local, or owner/repo/path/file in the hub")
    image_encoder_id: str = Field("", description="The IP-Adapter's image encoder from another hub id (owner/repo/subfolder) or folder")
    pix2pix_weights: str = Field(
        "", description="pix2pix_turbo's weights (edge_to_image_loras.pkl) from a file, a URL or owner/repo/path; empty: the published file"
    )

    # where and how it runs
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 for the LAN)")
    port: int = Field(7860, ge=0, le=65535, description="Port to listen on")
    device: Literal["auto", "cuda", "mps", "xpu", "cpu"] = Field("auto", description="auto: cuda, mps, xpu, else cpu")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto: float16 on GPU, bfloat16 on CPUs that support it, else float32"
    )
    taesd: bool = Field(True, description="Tiny autoencoder (TAESD) instead of the full VAE: much faster")
    compel: bool = Field(True, description="compel prompt weighting, e.g. 'a (red)++ cat'")
    torch_compile: bool = Field(False, description="torch.compile the UNet and VAE (slow start, faster frames)")
    safety_checker: bool = Field(False, description="Blank out frames the safety checker flags as NSFW")

    # users and sessions
    max_users: int = Field(
        DEFAULT_MAX_USERS, ge=0, description="Users connected at once; more get 'Server is full'. 0: no limit"
    )
    max_viewers: int = Field(8, ge=0, le=1000, description="Read-only viewer streams (/api/view) per session")
    idle_timeout: float = Field(
        120.0, ge=0, description="Seconds a session waits on its client (no valid frame or parameter message; time its frame waits for the model does not count) before it ends; 0: never"
    )
    max_session_length: float = Field(0.0, ge=0, description="Seconds a session may last; 0: no limit")
    frame_deadline: float = Field(
        60.0, gt=0, description="Seconds a model call may take before its frames are given up and /api/health says 'stalled'"
    )
    max_process_requests: int = Field(
        4, ge=1, le=1000, description="One-shot POST /api/process requests waiting or generating at once; more get 503"
    )
    upload_timeout: float = Field(30.0, gt=0, description="Seconds a one-shot request may take to upload its body; then 408")
    process_timeout: float = Field(
        60.0, gt=0, description="Seconds a one-shot request may wait for its image once uploaded; then 504"
    )

    # scale-out (docs/scale-out.md)
    replicas: int = Field(
        1, ge=1, le=64, description="Engine replicas, each with one GPU (a CPU share without GPUs), behind Ray Serve; 1: no Ray"
    )
    ray_address: str = Field("", description="Join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting one")

    # who may connect
    allowed_origins: list[str] = Field(
        [],
        description="Other web origins (https://site.example) whose pages may use this server, '*' for any; "
        "its own origin and loopback ones always may",
    )
    allowed_hosts: list[str] = Field(
        [],
        description="Host names (and addresses) requests may be addressed to, '*' for any, '*.example.com' for a domain; "
        "empty: loopback ones, plus this machine's own names and addresses when --host is wider than loopback",
    )
    header_timeout: float = Field(
        10.0, ge=0, le=300, description="Seconds a client may take to send a request's headers before it is disconnected; 0: no limit"
    )
    max_connections_per_address: int = Field(
        100, ge=0, description="Connections open at once from one client address (0: no limit; behind a reverse proxy, 0)"
    )
    limit_concurrency: int = Field(
        1000, ge=0, description="Connections and requests in progress at once; more HTTP requests get 503. 0: no limit"
    )

    # frames
    jpeg_quality: int = Field(85, ge=1, le=100, description="Quality of the output JPEG frames")

    # speed
    max_batch: int = Field(
        0, ge=0, le=16, description="Frames of different users run as one batch, at most this many; 0: 4 on a GPU, 1 on a CPU"
    )
    batch_wait_ms: float = Field(
        10.0, ge=0, le=1000, description="With batching: how long the model may wait for other users' frames on their way"
    )
    temporal_memory_mb: float | None = Field(
        None, ge=0, description="MiB all sessions' temporal-consistency memories may hold together; past it a session's is "
        "lowered or turned off, with a message. Default: a tenth of a GPU's memory, 1024 on a CPU",
    )
    similarity_filter: bool = Field(
        False, description="Re-send the last output instead of running the model when the camera has barely changed"
    )
    similarity_threshold: float = Field(0.98, gt=0, le=1, description="Cosine similarity above which a frame counts as unchanged")
    max_skips: int = Field(10, ge=1, description="Most frames in a row the similarity filter may skip")
    max_frame_bytes: int = Field(4_000_000, ge=1024, description="Largest input frame accepted, in bytes")
    max_frame_pixels: int = Field(4_194_304, ge=4096, description="Largest input frame accepted, in pixels (w*h)")

    # outputs beyond the browser, one per streaming session
    ndi: bool = Field(False, description="Publish each streaming session as an NDI source (needs: pip install .[ndi])")
    ndi_name: str = Field(
        "Live Diffusion", min_length=1, max_length=100, description="NDI source name; the short session id is appended"
    )
    syphon: bool = Field(
        False, description="Publish each streaming session as a Syphon server (macOS; pip install .[syphon])"
    )
    syphon_name: str = Field(
        "Live Diffusion", min_length=1, max_length=100, description="Syphon server name; the short session id is appended"
    )

    # performers' controls
    osc_port: int = Field(
        0, ge=0, le=65535, description="UDP port where OSC steers the sessions' parameters (/live/<param> VALUE), on --host; 0: off"
    )

    session: list[str] = Field(
        [], description="A session with no page, started at launch, its camera an NDI source: ndi:NAME (repeatable). "
        "Its output goes where --ndi and --syphon send every session's; steer it with --osc-port",
    )
    session_params: str = Field(
        "", description="JSON object of the parameters --session sessions start with; empty: the pipeline's defaults"
    )

    # WebRTC (server/webrtc.py)
    ice_servers: list[str] = Field(
        [],
        description="STUN and TURN servers for WebRTC, the server's and the page's: stun:HOST:PORT, "
        "turn:USER:PASSWORD@HOST:PORT (or turns:, ?transport=tcp); empty: host candidates only (loopback, LAN)",
    )

    # TLS: browsers only give cameras to https pages (or localhost)
    ssl_certfile: str = Field("", description="TLS certificate file (PEM) to serve https")
    ssl_keyfile: str = Field("", description="TLS private key file (PEM) for --ssl-certfile")
    self_signed: bool = Field(
        False, description="Serve https with a self-signed development certificate for this machine (phones on the LAN)"
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")

    @model_validator(mode="after")
    def _tls_needs_both(self) -> Config:
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("--ssl-certfile and --ssl-keyfile go together")
        if self.self_signed and self.ssl_certfile:
            raise ValueError("--self-signed makes its own certificate: leave out --ssl-certfile and --ssl-keyfile")
        return self

    @model_validator(mode="after")
    def _hosts_are_hosts(self) -> Config:
        for host in self.allowed_hosts:
            if not host or any(c in host for c in "/:@ ") and not host.startswith("["):
                raise ValueError(f"--allowed-hosts: {host!r} is not a host name such as live.example.com, '*.example.com' or '*'")
        return self

    @model_validator(mode="after")
    def _sessions_are_inputs(self) -> Config:
        for spec in self.session:
            kind, _, name = spec.partition(":")
            if kind != "ndi" or not name.strip():
                raise ValueError(f"--session: {spec!r} is not ndi:NAME (an NDI source, as OBS's NDI plugin names it)")
        return self

    @model_validator(mode="after")
    def _ice_servers_are_urls(self) -> Config:
        for url in self.ice_servers:
            parse_ice_server(url)  # ValueError naming what is wrong
        return self

    @model_validator(mode="after")
    def _origins_are_origins(self) -> Config:
        for origin in self.allowed_origins:
            if origin not in ("*", "null") and not _is_origin(origin):
                raise ValueError(f"--allowed-origins: {origin!r} is not an origin such as https://site.example:8443 or '*'")
        return self

    def batch_size(self, device: str) -> int:
        """--max-batch, with 0 resolved for the device: batching pays on a GPU, not on a CPU (measured:
        docs/benchmarks.md)."""
        if self.max_batch:
            return self.max_batch
        return 1 if device.startswith("cpu") else 4

    @model_validator(mode="before")
    @classmethod
    def _set_up_flags_compose(cls, data: Any) -> Any:
        # --base, --accelerator ... with no --pipeline: the set-up they compose, not the default pipeline.
        if isinstance(data, dict) and "pipeline" not in data and any(data.get(key) for key in SET_UP_FLAGS):
            data = {**data, "pipeline": COMPOSED}
        return data

    def set_up_choices(self) -> Choices | None:
        """--base, --accelerator, --scheduler, --controlnet as set-up choices; None when none is given."""
        if not any(getattr(self, key) for key in SET_UP_FLAGS):
            return None
        kinds = tuple(part.partition("=")[0].strip() for part in self.controlnet.split(",")) if self.controlnet else None
        return Choices(base=self.base or None, accelerator=self.accelerator or None, scheduler=self.scheduler or None,
                       controlnets=kinds, ip_adapter=self.ip_adapter or None)

    def model_options(self) -> ModelOptions:
        """The part of the configuration that pipelines read."""
        return ModelOptions(
            model_id=self.model_id,
            model_config_id=self.model_config_id,
            tiny=self.tiny,
            taesd=self.taesd,
            compel=self.compel,
            torch_compile=self.torch_compile,
            safety_checker=self.safety_checker,
            loras=tuple(self.lora),
            fuse_loras=self.fuse_loras,
            controlnet_id=self.controlnet_id,
            lcm_lora_id=self.lcm_lora_id,
            controlnet_ids=tuple(
                (kind.strip(), source.strip())
                for kind, _, source in (part.partition("=") for part in self.controlnet.split(","))
                if source.strip()
            ),
            accelerator_id=self.accelerator_id,
            depth_model=self.depth_model,
            ip_adapter_id=self.ip_adapter_id,
            image_encoder_id=self.image_encoder_id,
            pix2pix_weights=self.pix2pix_weights,
        )


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server, as RTCPeerConnection's configuration names one (the page's and aiortc's)."""

    urls: str
    username: str | None = None
    credential: str | None = None


def parse_ice_server(text: str) -> IceServer:
    """--ice-servers' spelling: stun:HOST[:PORT], turn(s):USER:PASSWORD@HOST[:PORT][?transport=udp|tcp]."""
    scheme, colon, rest = text.partition(":")
    if scheme not in ("stun", "turn", "turns") or not colon or not rest:
        raise ValueError(f"--ice-servers: {text!r} is not stun:HOST:PORT or turn:USER:PASSWORD@HOST:PORT")
    if "@" not in rest:
        if scheme != "stun":
            raise ValueError(f"--ice-servers: {text!r}: a TURN server needs USER:PASSWORD@ before its host")
        return IceServer(text)
    credentials, _, host = rest.rpartition("@")
    username, colon, password = credentials.partition(":")
    if not username or not colon or not host:
        raise ValueError(f"--ice-servers: {text!r}: expected {scheme}:USER:PASSWORD@HOST:PORT")
    return IceServer(f"{scheme}:{host}", username, password)



def _is_origin(text: str) -> bool:
    scheme, separator, rest = text.partition("://")
    return bool(separator) and scheme in ("http", "https") and bool(rest) and "/" not in rest


def parse(argv: Sequence[str]) -> Config:
    """Config from command-line arguments and the environment; --help prints every option."""
    return CliApp.run(Config, cli_args=list(argv))
