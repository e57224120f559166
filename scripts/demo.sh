#!/usr/bin/env bash
# The main job of the README: sets up .venv, then asks the default model (neva's own small NeVA, trained on a
# shapes VQA task: neva_model/checkpoints/neva-shapes) questions about the bundled example pictures with
# `neva ask`, printing each answer, the true answer and the timing line. Then, with --kernels, it runs every
# kernel on every backend this machine has and prints the table (on a machine without a GPU the Triton kernels
# run in Triton's CPU interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
PY="${NEVA_VENV:-.venv}/bin/python"
MODEL=neva_model/checkpoints/neva-shapes
EXAMPLES=neva_model/examples

# Two questions per picture: the caption, and one more that changes from picture to picture.
"$PY" - "$EXAMPLES" <<'EOF' | while IFS=$'\t' read -r image question truth; do
import json, sys
catalogue = json.load(open(f"{sys.argv[1]}/questions.json"))
for number, (name, items) in enumerate(catalogue.items()):
    for item in (items[-1], items[number % (len(items) - 1)]):
        print(f"{sys.argv[1]}/{name}\t{item['question']}\t{item['answer']}")
EOF
  echo "== $image: $question"
  answer=$("$PY" -m neva_model.cli ask --model "$MODEL" --image "$image" "$question" 2> >(sed 's/^/   timing: /' >&2))
  echo "   answer: $answer   (true answer: $truth)"
done

if [ "${1:-}" = "--kernels" ]; then
  "$PY" -c "import torch, sys; sys.exit(torch.cuda.is_available())" && export TRITON_INTERPRET=1
  exec "$PY" -m neva_kernels.selfcheck "${@:2}"
fi
