#!/usr/bin/env bash
# Set up everything ltdet needs, on a fresh machine or an existing environment. Idempotent: a
# second run only checks (a few seconds).
#
# * Uses the active virtualenv ($VIRTUAL_ENV) if there is one, else creates ./.venv.
# * torch==2.14.1 / torchvision==0.29.1 (pinned pair) in ./.venv; in the user's own virtualenv any
#   torch >= 2.0 (torch.func) with its torchvision is kept, so a detectron2 built against it keeps
#   working (the pinned pair is installed there only when torch is missing).
# * fvcore, pycocotools, lvis, opencv (headless).
# * detectron2, first that works of:
#     1. an importable detectron2 (the user's own build is kept as is);
#     2. the official source, when GitHub answers and the build succeeds:
#        pip install git+https://github.com/facebookresearch/detectron2;
#     3. the PyPI sdist pb1-detectron2==0.6 (detectron2 v0.6) with the fixes of ltdet/compat.py.
# * ltdet itself, editable.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH=pinned
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  if [[ ! -x "$VIRTUAL_ENV/bin/python" ]]; then
    echo "[install] VIRTUAL_ENV=$VIRTUAL_ENV has no bin/python; activate a virtualenv or unset" \
         "VIRTUAL_ENV to use ./.venv" >&2
    exit 1
  fi
  VIRTUAL_ENV=$(cd -- "$VIRTUAL_ENV" && pwd -P)
fi
if [[ -n "${VIRTUAL_ENV:-}" && "$VIRTUAL_ENV" != "$(cd .venv 2>/dev/null && pwd -P)" ]]; then
  PY="$VIRTUAL_ENV/bin/python"
  TORCH=any
else
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  PY="$PWD/.venv/bin/python"
fi
PIP=("$PY" -m pip install --disable-pip-version-check -q)

have() { "$PY" -c "$1" >/dev/null 2>&1; }

# One probe for every component (each torch import costs seconds); prints the missing ones.
# Run from / so that this checkout on sys.path does not count as an installed ltdet.
PROBE='
import sys, warnings
warnings.simplefilter("ignore")
checks = {
    "torch": "import torch, torchvision; assert torch.__version__.startswith(\"2.14.1\") and torchvision.__version__.startswith(\"0.29.1\")"
             if sys.argv[2] == "pinned" else "import torch, torchvision, torch.func",
    "deps": "import fvcore, iopath, pycocotools, cv2, matplotlib, yacs, tabulate, cloudpickle, tqdm, omegaconf, hydra, pytest, tensorboard, lvis, ruff",
    "detectron2": "import detectron2.layers, detectron2.model_zoo as m; m.get_config_file(\"LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml\")",
    "ltdet": "import importlib.util as u; assert u.find_spec(\"ltdet\").origin.startswith(sys.argv[1])",
}
def ok(stmt):
    try:
        exec(stmt, {"sys": sys})
        return True
    except Exception:
        return False
print(" ".join(k for k, v in checks.items() if not ok(v)))
'
missing=$(cd / && "$PY" -c "$PROBE" "$OLDPWD" "$TORCH" 2>/dev/null) || missing="torch deps detectron2 ltdet"
needs() { [[ " $missing " == *" $1 "* ]]; }

if needs torch; then
  if [[ $TORCH == any ]] && have 'import torch'; then
    echo "[install] $VIRTUAL_ENV has a torch without torch.func or torchvision; ltdet needs" \
         "torch >= 2.0 with its torchvision (or unset VIRTUAL_ENV to use ./.venv)" >&2
    exit 1
  fi
  # The pinned pair is a CUDA build: ~5.8 GB in the environment. Check before pip fills the disk
  # and leaves a half-installed torch behind.
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  free_mb=$(df -Pm "$site" 2>/dev/null | awk 'NR == 2 {print $4}') || free_mb=
  if [[ ! $free_mb =~ ^[0-9]+$ ]]; then
    echo "[install] could not read the free space of $site (df); going on" >&2
  elif (( free_mb < 6500 )); then
    echo "[install] only $free_mb MB free on the disk of $site; torch 2.14.1 with torchvision" \
         "needs about 6.5 GB: free some space, or activate a virtualenv that already has" \
         "torch >= 2.0 with torchvision" >&2
    exit 1
  fi
  echo "[install] torch 2.14.1 / torchvision 0.29.1"
  # No wheel cache: a downloaded CUDA build would otherwise take its size twice on the disk.
  "${PIP[@]}" --no-cache-dir torch==2.14.1 torchvision==0.29.1
fi

# Runtime deps of detectron2 0.6 and ltdet, listed here because detectron2's sdist pins
# black==21.4b2 and iopath<0.1.10 (installed below with --no-deps), and lvis-api pulls in the
# GUI opencv-python (installed with --no-deps; we use opencv-python-headless).
DEPS=(fvcore iopath pycocotools opencv-python-headless matplotlib termcolor yacs tabulate
      cloudpickle tqdm tensorboard omegaconf hydra-core pydot future Pillow numpy pytest
      cycler kiwisolver pyparsing python-dateutil six Cython
      ruff==0.17.5)  # lint and format check of .ci/run (ruff.toml)
if needs deps; then
  echo "[install] runtime dependencies"
  "${PIP[@]}" "${DEPS[@]}"
  "${PIP[@]}" --no-deps lvis
fi

if needs detectron2; then
  if have 'import detectron2'; then
    echo "[install] detectron2 is importable but broken:" >&2
    "$PY" -c 'import detectron2.layers, detectron2.model_zoo' >&2 || true
    exit 1
  fi
  # Probe GitHub first (seconds), then build without a time limit: the C++ build of the official
  # source takes minutes on a small machine and must not be cut short. If it fails (compiler,
  # CUDA toolkit), fall back to the v0.6 sdist like an unreachable GitHub.
  D2_GIT=https://github.com/facebookresearch/detectron2.git
  official=0
  if GIT_TERMINAL_PROMPT=0 timeout 30 git ls-remote "$D2_GIT" HEAD >/dev/null 2>&1; then
    echo "[install] detectron2: building the official source (several minutes)"
    if "${PIP[@]}" --no-build-isolation "git+$D2_GIT"; then
      official=1
    else
      echo "[install] the official source did not build (see above)" >&2
    fi
  else
    echo "[install] $D2_GIT unreachable (or git missing)"
  fi
  if (( ! official )); then
    echo "[install] building pb1-detectron2==0.6 with ltdet/compat.py fixes"
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    "$PY" - "$build" <<'EOF'
# Fetch the sdist without running its setup.py (pip download would, and it imports torch in an
# isolated env): read the download link from the configured package index.
import hashlib, re, sys, tarfile, urllib.request
from pip._internal.configuration import Configuration
SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
conf = Configuration(isolated=False); conf.load()
index = dict(conf.items()).get("global.index-url", "https://pypi.org/simple").rstrip("/")
page = urllib.request.urlopen(f"{index}/pb1-detectron2/", timeout=60).read().decode()
url = next(u for u in re.findall(r'href="([^"]+)"', page) if "pb1-detectron2-0.6.tar.gz" in u)
url = urllib.request.urljoin(f"{index}/pb1-detectron2/", url.split("#")[0])
data = urllib.request.urlopen(url, timeout=300).read()
if hashlib.sha256(data).hexdigest() != SHA256:
    sys.exit(f"sha256 mismatch for {url}")
path = f"{sys.argv[1]}/sdist.tar.gz"
open(path, "wb").write(data)
tarfile.open(path).extractall(sys.argv[1], filter="data")
EOF
    "$PY" ltdet/compat.py patch-sdist "$build/pb1-detectron2-0.6"
    "${PIP[@]}" --no-build-isolation --no-deps "$build/pb1-detectron2-0.6"
  fi
fi

if needs ltdet; then
  echo "[install] ltdet (editable)"
  "${PIP[@]}" --no-build-isolation --no-deps -e .
fi
if [[ -n "$missing" ]]; then  # verify what was just installed
  "$PY" -W ignore -c 'import torch, detectron2, ltdet; print("[install] ok: torch", torch.__version__, "| detectron2", detectron2.__version__, "| ltdet", ltdet.__version__)'
else
  echo "[install] ok (nothing to do)"
fi
