#!/usr/bin/env bash
# Rebuild the Calimero apps under apps/ from their C sources, reproducibly.
#
#   scripts/build-apps.sh [APP...]           rebuild apps/<app>/<app_with_underscores>.wasm
#   scripts/build-apps.sh --check [APP...]   build into a temp dir, compare with the
#                                            committed wasm byte for byte (exit 1 on a diff)
#   scripts/build-apps.sh --out DIR [APP...] write the wasm files to DIR instead
#
# With no APP every directory under apps/ holding *.c files is built. All *.c
# files of an app are compiled into one module. CLANG selects the compiler
# (default: clang; it needs the wasm32 target and wasm-ld from lld).
#
# Reproducibility: fixed flags, sources passed as repo-relative paths (they end
# up in panic locations via __FILE__) plus -ffile-prefix-map, so no absolute
# path of the build machine lands in the wasm. Code generation still differs
# between clang major versions, so the committed wasm is tied to PINNED_CLANG_MAJOR;
# --check refuses to compare with another major version rather than report a
# meaningless diff.
set -euo pipefail

PINNED_CLANG_MAJOR=14

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

CLANG="${CLANG:-clang}"
mode=build
out_dir=""
apps=()
while (($#)); do
    case "$1" in
        --check) mode=check ;;
        --out) out_dir="${2:?--out needs a directory}"; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "build-apps: unknown option '$1' (use --check, --out DIR or app names)" >&2; exit 2 ;;
        *) apps+=("${1%/}") ;;
    esac
    shift
done

if ! command -v "$CLANG" >/dev/null 2>&1; then
    echo "build-apps: compiler '$CLANG' not found; install clang and lld (Debian: apt-get install clang lld) or set CLANG" >&2
    exit 127
fi
clang_version="$("$CLANG" -dumpversion)"
clang_major="${clang_version%%.*}"
if [[ "$clang_major" != "$PINNED_CLANG_MAJOR" ]]; then
    msg="the committed wasm was built with clang $PINNED_CLANG_MAJOR, '$CLANG' is clang $clang_version"
    if [[ "$mode" == check ]]; then
        echo "build-apps: $msg; a byte-for-byte check needs the same major version (set CLANG=clang-$PINNED_CLANG_MAJOR)" >&2
        exit 3
    fi
    echo "build-apps: warning: $msg; the output will differ from the committed files" >&2
fi

if ((${#apps[@]} == 0)); then
    for dir in apps/*/; do
        compgen -G "${dir}*.c" >/dev/null && apps+=("$(basename "$dir")")
    done
fi

CFLAGS=(
    --target=wasm32 -nostdlib -O2
    -mbulk-memory            # memcpy/memset become memory.copy/fill: no libc needed
    -Wall -Wextra -Werror
    -ffile-prefix-map="$root"/=
)
LDFLAGS=(
    -Wl,--no-entry           # a library of exports, no _start
    -Wl,-z,stack-size=65536
)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
[[ "$mode" == check ]] && out_dir="$tmp/out"
[[ -n "$out_dir" ]] && mkdir -p "$out_dir"

status=0
for app in "${apps[@]}"; do
    src_dir="apps/$app"
    sources=("$src_dir"/*.c)
    if [[ ! -e "${sources[0]}" ]]; then
        echo "build-apps: no C sources in $src_dir (apps are directories under apps/ with *.c files)" >&2
        exit 2
    fi
    name="${app//-/_}.wasm"
    target="${out_dir:-$src_dir}/$name"
    "$CLANG" "${CFLAGS[@]}" "${LDFLAGS[@]}" -o "$tmp/$name" "${sources[@]}"
    mv "$tmp/$name" "$target"
    chmod 644 "$target"   # data, not a program
    if [[ "$mode" == check ]]; then
        if cmp -s "$target" "$src_dir/$name"; then
            echo "ok       $src_dir/$name"
        else
            echo "MISMATCH $src_dir/$name differs from a fresh build; run scripts/build-apps.sh $app and commit the result" >&2
            status=1
        fi
    else
        echo "built    $target ($(wc -c <"$target") bytes, sha256 $(sha256sum "$target" | cut -c1-16)…)"
    fi
done
exit "$status"
