#!/usr/bin/env bash
# Do the dependency floors in setup.cfg hold? Installs the declared minimum of the libraries whose
# APIs cachetune calls (transformers, sentence-transformers, peft, datasets) into a throwaway
# folder (--no-deps: the rest of the environment stays as installed) and runs the tests that train,
# attach, merge, switch and reload LoRA adapters with them first on the path.
#   tools/check_floors.sh [PYTHON]        (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
floor() { sed -n "s/^ *$1>=\([0-9.]*\).*/\1/p" setup.cfg | head -1; }
target=$(mktemp -d)
trap 'rm -rf "$target"' EXIT
specs=("transformers==$(floor transformers)" "sentence-transformers==$(floor sentence-transformers)"
       "peft==$(floor peft)" "datasets==$(floor datasets)"
       "tokenizers>=0.22,<=0.23.0")  # what transformers 5.0.0 accepts (it checks at import)
echo "floors: ${specs[*]}"
"$PYTHON" -m pip install -q --no-deps --target "$target" "${specs[@]}"
PYTHONPATH="$target:$PWD" "$PYTHON" -c \
    "import transformers, sentence_transformers, peft, datasets; print('importing', transformers.__version__, sentence_transformers.__version__, peft.__version__, datasets.__version__)"
PYTHONPATH="$target:$PWD" "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/test_train.py::test_trains_adapter_folder_with_card \
    tests/test_train.py::test_plain_peft_reload_matches_in_process_model \
    tests/test_serving.py::test_load_model_merged_matches_unmerged_and_differs_from_base \
    tests/test_serving.py::test_multi_adapter_switching_matches_loading_each_alone \
    tests/test_serving.py::test_merged_export_is_a_plain_sentence_transformer \
    tests/test_train_losses.py tests/test_prepare.py
