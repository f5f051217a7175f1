# The image of launch/kuberay-rayjob.yaml: Ray 2.60 with torch 2.14.1 and sd-tune installed in
# /home/ray/sd-tune (the RayJob's working_dir). From the repository root:
#
#   docker build -t ghcr.io/your-org/sd-tune:0.1.0 . && docker push ghcr.io/your-org/sd-tune:0.1.0
#
# torch 2.14.1's wheel is a CUDA 13.0 build that brings its own CUDA libraries: the GPU nodes
# need an NVIDIA driver 580 or newer, not a CUDA toolkit. The -gpu base image sets up the
# paths where Kubernetes' NVIDIA device plugin puts the node's driver libraries.
FROM rayproject/ray:2.60.0-py311-gpu

# The pinned torch first (as scripts/setup.sh does): its layer stays cached while the code changes.
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1"

WORKDIR /home/ray/sd-tune
COPY --chown=ray:users . /home/ray/sd-tune
RUN pip install --no-cache-dir -e /home/ray/sd-tune
