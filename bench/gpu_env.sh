# Sourced by the bench/gpu_*.sh scripts on a lent device machine: its python3 holds torch and transformers but not
# the platform's other needs, whose wheels travel in .whl/ (cp312) and are installed to /tmp/site when present and
# PY cannot already import the platform (here, PY=.venv/bin/python runs a script's CPU check with the wheels left
# alone); sets PYTHONPATH (the repo and /tmp/site), PY and the quiet, offline defaults.
PY=${PY:-python3}
if compgen -G ".whl/*.whl" >/dev/null && ! $PY -c "import diffusers, sqlalchemy" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 HF_HUB_OFFLINE=1
