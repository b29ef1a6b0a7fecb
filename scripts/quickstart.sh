#!/usr/bin/env bash
# Set up simx, export DINOv2-small, embed the bundled sample photos and benchmark the model.
# Uses pretrained weights when the model hub is reachable; otherwise says so and uses
# random weights (fine for speed, meaningless for similarity).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q -e '.[cpu,export]'

weights=pretrained
if ! python3 - <<'PY' 2>/dev/null
import socket, sys
try:
    socket.create_connection(("huggingface.co", 443), timeout=5).close()
except OSError:
    sys.exit(1)
PY
then
    echo "simx quickstart: the model hub (huggingface.co) is unreachable, so this run uses"
    echo "RANDOM WEIGHTS. The speed figures are real; the embeddings mean nothing for similarity."
    weights=random
fi

simx export dinov2 --variant small --weights "$weights"
simx embed samples --model dinov2-small --cache sample_cache
simx bench --model dinov2-small --images samples --batch-sizes 1,8 --seconds 5
