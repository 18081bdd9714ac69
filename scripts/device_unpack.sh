# Unpack scripts/device_bundle.sh's .device/serving/ on the serving host and put it first in this shell's
# environment: a Java runtime (JAVA_HOME, PATH), torchserve and torch-model-archiver (PYTHONPATH, PATH) and
# the all-MiniLM-L6-v2 tokenizer files (FUSEDBERT_MINILM_DIR: fusedbert.hub takes the MiniLM tokenizer from
# there; the folder holds no weights, so use it with `benchmarks.serving --random-weights ...`).
#
#   source scripts/device_unpack.sh [PREFIX]     # from the repo root; PREFIX default /tmp/fusedbert-serving
#
# Sourced, not run: it exports into the calling shell. Needs python (with pip) on PATH, tar and xz.
# Unpacking takes ~15 s: xz, the frontend jar rebuilt from its parts (scripts/jar_repack.py: byte-identical
# to the wheel's, SHA-256 checked, where this Python's zlib deflates like the packing host's; else the same
# entries, CRC-32 checked), pip install --no-index --no-deps --target.

_device_unpack() {
    local bundle=${DEVICE_BUNDLE:-.device/serving} prefix=${1:-/tmp/fusedbert-serving} name
    for name in jre.tar.xz serving.tar.xz SHA256SUMS; do
        if [ ! -f "$bundle/$name" ]; then
            echo "device_unpack: $bundle/$name is missing: build the bundle with scripts/device_bundle.sh and carry" \
                 "'.device/serving'" >&2
            return 2
        fi
    done
    [ -f scripts/jar_repack.py ] || { echo "device_unpack: run from the repo root" >&2; return 2; }
    (cd "$bundle" && sha256sum --quiet -c SHA256SUMS) || { echo "device_unpack: $bundle is damaged" >&2; return 2; }
    rm -rf "$prefix"
    mkdir -p "$prefix"
    tar -C "$prefix" -xJf "$bundle/jre.tar.xz"
    tar -C "$prefix" -xJf "$bundle/serving.tar.xz"
    python scripts/jar_repack.py unpack "$prefix/serving/torchserve" "$prefix/serving/wheels" || return 1
    python -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
        --target "$prefix/site" "$prefix"/serving/wheels/*.whl || return 1
    rm -rf "$prefix/serving/torchserve"  # the parts; the wheel holds the jar now

    export JAVA_HOME="$prefix/jre"
    export PATH="$prefix/jre/bin:$prefix/site/bin:$PATH"
    export PYTHONPATH="$prefix/site${PYTHONPATH:+:$PYTHONPATH}"
    export FUSEDBERT_MINILM_DIR="$prefix/serving/tokenizer"

    local java ts_file
    java=$(command -v java)
    if [ "$java" != "$JAVA_HOME/bin/java" ]; then
        echo "device_unpack: java resolves to $java, not the bundled $JAVA_HOME/bin/java" >&2
        return 1
    fi
    if ! "$java" -version 2>&1 | sed 's/^/  /'; then
        echo "device_unpack: the bundled Java does not start on this host (missing libraries: ldd below)" >&2
        ldd "$JAVA_HOME/lib/server/libjvm.so" "$JAVA_HOME/bin/java" | grep -i "not found" >&2
        return 1
    fi
    ts_file=$(python -c "import ts, model_archiver; print(ts.__file__)") || return 1
    case "$ts_file" in
        "$prefix/site/"*) ;;
        *) echo "device_unpack: python imports ts from $ts_file, not from $prefix/site" >&2; return 1 ;;
    esac
    for name in torchserve torch-model-archiver; do
        command -v "$name" >/dev/null || { echo "device_unpack: no $name on PATH" >&2; return 1; }
    done
    echo "  java $java; ts $ts_file; torchserve $(command -v torchserve); tokenizer $FUSEDBERT_MINILM_DIR"
}

_device_unpack "$@"
