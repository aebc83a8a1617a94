# Live Diffusion for NVIDIA GPU hosts:
#   docker build -t live-diffusion .
#   docker run --gpus all -p 7860:7860 -v hf-cache:/home/app/.cache/huggingface live-diffusion --pipeline img2img

# The web page, built once at image build time (a failed build fails the image).
FROM node:20-bookworm-slim AS frontend
WORKDIR /frontend
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY frontend/ ./
RUN npm run build

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 app
WORKDIR /app
RUN python3 -m venv /opt/venv && chown -R app /opt/venv /app
ENV PATH=/opt/venv/bin:$PATH
USER app

# torch first, on its own: the CUDA 12.8 build of the version requirements/torch.txt pins. Then the
# exact versions of the lock files (they leave torch out; scripts/lock.sh makes them), cached apart
# from the code. The code runs from /app, not installed.
COPY --chown=app requirements/torch.txt requirements/
RUN pip install -r requirements/torch.txt --index-url https://download.pytorch.org/whl/cu128
COPY --chown=app requirements/ requirements/
RUN pip install --no-deps -r requirements/base.txt -r requirements/ndi.txt -r requirements/scale.txt \
 && pip check
COPY --chown=app server/ server/
COPY --chown=app pipelines/ pipelines/
COPY --chown=app bench/ bench/
COPY --chown=app --from=frontend /frontend/build frontend/build

EXPOSE 7860
ENTRYPOINT ["python", "server/main.py", "--host", "0.0.0.0", "--port", "7860"]
CMD ["--pipeline", "img2img"]
