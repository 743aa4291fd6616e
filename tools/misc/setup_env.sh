#!/usr/bin/env bash
# Create .venv and install the CPU reference stack (see README, "Reference stack").
#
# Idempotent: when the stamp written at the end matches the requirement files and the
# stack imports, the script returns in seconds. mmcv-full is compiled from source with
# its ops, and the wheel is cached outside the repository under a folder named after
# the torch and Python versions, so a wheel built against another torch is never reused.
set -euo pipefail

repo_root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo_root"

python_bin=${PYTHON:-python3}
venv_dir=${VENV:-.venv}
wheel_cache_root=${LSKNET_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lsknet/wheels}

torch_spec=$(grep -E '^torch==' requirements/reference.txt)
torchvision_spec=$(grep -E '^torchvision==' requirements/reference.txt)
mmcv_spec=$(grep -E '^mmcv-full==' requirements/reference.txt)
mmdet_spec=$(grep -E '^mmdet==' requirements/reference.txt)
mmrotate_spec=$(grep -E '^mmrotate==' requirements/reference.txt)

stamp_file="$venv_dir/.lsknet-env-stamp"
stamp=$(cat requirements/*.txt setup.py "$0" | sha256sum | cut -d' ' -f1)

log() { echo "[make env] $*"; }

if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] &&
    "$venv_dir/bin/python" -c 'import mmcv.ops, mmdet, mmrotate, lsknet' 2>/dev/null; then
  log "environment in $venv_dir is up to date"
  exit 0
fi

if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  log "warning: the reference stack is tested on Python 3.11; found $("$python_bin" --version)"
fi

if [[ ! -x "$venv_dir/bin/python" ]]; then
  log "creating $venv_dir with $python_bin"
  "$python_bin" -m venv "$venv_dir"
fi
pip=("$venv_dir/bin/python" -m pip --disable-pip-version-check)

log "installing build tools"
"${pip[@]}" install -q --upgrade 'pip<25' -r requirements/build.txt

log "installing $torch_spec and $torchvision_spec (the first run downloads about 2.5 GB)"
"${pip[@]}" install -q "$torch_spec" "$torchvision_spec" 'numpy<2'

log "installing runtime requirements"
"${pip[@]}" install -q -r requirements/runtime.txt -r requirements/tests.txt

if "$venv_dir/bin/python" -c 'import mmcv.ops' 2>/dev/null; then
  log "mmcv-full with ops is already installed"
else
  torch_version=$("$venv_dir/bin/python" -c 'import torch; print(torch.__version__.replace("+", "_"))')
  python_tag=$("$venv_dir/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  mmcv_version=${mmcv_spec#mmcv-full==}
  wheel_dir="$wheel_cache_root/torch-$torch_version-$python_tag"
  mkdir -p "$wheel_dir"
  wheel=$(ls "$wheel_dir"/mmcv_full-"$mmcv_version"-*.whl 2>/dev/null | head -n 1 || true)
  if [[ -z "$wheel" ]]; then
    log "compiling $mmcv_spec with ops against torch $torch_version (5-10 minutes on 2 cores)"
    build_dir=$(mktemp -d)
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "${pip[@]}" wheel --no-build-isolation --no-cache-dir --no-deps "$mmcv_spec" -w "$build_dir"
    built=$(ls "$build_dir"/mmcv_full-*.whl)
    # Move into place only once complete, so an interrupted build leaves no broken wheel.
    mv "$built" "$wheel_dir/$(basename "$built").partial"
    mv "$wheel_dir/$(basename "$built").partial" "$wheel_dir/$(basename "$built")"
    wheel="$wheel_dir/$(basename "$built")"
    rm -rf "$build_dir"
  else
    log "reusing cached wheel $wheel"
  fi
  "${pip[@]}" install -q "$wheel"
fi

log "installing $mmdet_spec, $mmrotate_spec and this package"
"${pip[@]}" install -q "$mmdet_spec" "$mmrotate_spec"
"${pip[@]}" install -q --no-build-isolation --no-deps -e .

"$venv_dir/bin/python" -c 'import mmcv.ops, mmdet, mmrotate, lsknet; print("[make env] ready: mmcv", mmcv.__version__, "mmdet", mmdet.__version__, "mmrotate", mmrotate.__version__)'
echo "$stamp" > "$stamp_file"
