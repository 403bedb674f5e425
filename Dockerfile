# unmask on a CUDA PyTorch base: the OpenAI-compatible server for masked diffusion LMs.
#
#   docker build -t unmask .
#   docker run --gpus all -p 8000:8000 unmask                                   # the embedded tiny model
#   docker run --gpus all -p 8000:8000 -v /data/LLaDA-8B-Instruct:/model:ro \
#       -e UNMASK_MODEL=/model unmask --max-num-seqs 32 --api-key sk-local     # a checkpoint + extra flags
#
# Settings: UNMASK_MODEL (checkpoint folder or built-in name; empty = embedded default), UNMASK_HOST,
# UNMASK_PORT, UNMASK_ARGS (flags as one string); arguments after the image name are appended to
# `unmask serve` (CMD holds the defaults). The playground is at http://localhost:8000/.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# Triton builds a small C launcher for its kernels at run time, and the runtime image has no compiler.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
# The README's install; the base image already has torch and Triton, so (as the README says for GPU
# machines) without `-c constraints.txt`, which pins the CPU build.
RUN pip install -e . \
    && python -c "import unmask, torch; print('unmask', unmask.__version__, 'torch', torch.__version__)"

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin unmask
USER unmask
ENV HOME=/home/unmask \
    UNMASK_MODEL="" \
    UNMASK_HOST=0.0.0.0 \
    UNMASK_PORT=8000 \
    UNMASK_ARGS=""

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('UNMASK_PORT', '8000'), timeout=4)"

# exec: `unmask serve` is PID 1 and gets SIGTERM itself (it drains in-flight requests, then exits 0).
ENTRYPOINT ["/bin/sh", "-c", "exec unmask serve ${UNMASK_MODEL:+\"$UNMASK_MODEL\"} --host \"$UNMASK_HOST\" --port \"$UNMASK_PORT\" $UNMASK_ARGS \"$@\"", "unmask"]
CMD ["--device", "auto", "--dtype", "auto"]
