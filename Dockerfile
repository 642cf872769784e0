# One image for both roles of the product: the one-shot trainer and the scoring API.
#   docker build -t afm-ctr .
#   docker run afm-ctr train        # synth/train + export into /models + load features into Redis
#   docker run afm-ctr serve        # the API on 0.0.0.0:8000 (the default command)
# Classic builder compatible: no BuildKit-only syntax (RUN --mount, heredocs).

# --- requirements: the pinned dependency list, read from pyproject.toml -----------------------
# Its own stage: a pyproject.toml edit that leaves the list unchanged keeps the layers below.
FROM python:3.11-slim AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt

# --- deps: a venv with the pinned dependencies, slimmed (docker/slim-venv.sh) ----------------
FROM python:3.11-slim AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# binutils for `strip`; it stays in this stage.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/* \
 && python -m venv /opt/venv
COPY --from=requirements /src/requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY docker/slim-venv.sh /tmp/slim-venv.sh
RUN sh /tmp/slim-venv.sh /opt/venv

# --- wheel: the project itself, built as a wheel (installed non-editable below) --------------
FROM python:3.11-slim AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
RUN pip wheel --no-deps --wheel-dir /dist .

# --- final: the venv on a clean python:3.11-slim, run as an unprivileged user ----------------
FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /home/afm --create-home afm \
 && mkdir -p /models /cache \
 && chown afm:afm /models /cache
# Dependencies (~1.1 GB, a layer reused until requirements change), then the project (~100 kB),
# installed with the base image's pip into the venv: no pip stays in the venv.
COPY --from=deps /opt/venv /opt/venv
COPY --from=wheel /dist /tmp/dist
RUN pip --python /opt/venv/bin/python install --no-cache-dir --no-deps --disable-pip-version-check \
        /tmp/dist/*.whl \
 && rm -rf /tmp/dist
COPY docker/entrypoint.sh docker/healthcheck.py /opt/afm/

# AFM_* are the CLI's and the service's own settings; compose.yaml overrides them per service.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    AFM_MODEL_DIR=/models \
    AFM_CACHE_DIR=/cache \
    AFM_HOST=0.0.0.0 \
    AFM_PORT=8000
USER afm
WORKDIR /home/afm
# Matplotlib's font cache, built once here instead of at every container start.
RUN python -c "import matplotlib.font_manager"
EXPOSE 8000
# Healthy = /readyz answers 200 (model loaded, Redis reachable). Containers running another role
# (the trainer) report healthy without a probe: see docker/healthcheck.py.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/opt/afm/healthcheck.py"]
ENTRYPOINT ["/opt/afm/entrypoint.sh"]
CMD ["serve"]
