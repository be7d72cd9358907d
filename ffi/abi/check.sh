#!/usr/bin/env bash
# ABI conformance check: every struct size and field offset, enum value, macro value and prototype of
# ffi/include/aclshm_acl.h against the official ACL headers shipped in the torch-npu wheel on PyPI
# (torch_npu/include/acl). Then the C programs of sim/ascendcl/tests/c are compiled against those
# official headers (as well as ours) and run on the drop-in libascendcl.so. The wheel is downloaded into a temporary directory and deleted afterwards:
# the official headers' licence forbids redistributing them, so they are never committed.
#
#   ffi/abi/check.sh                 # torch-npu 2.14.0
#   TORCH_NPU_VERSION=2.13.0 ffi/abi/check.sh
set -euo pipefail

version="${TORCH_NPU_VERSION:-2.14.0}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "aclshm: downloading torch-npu $version to read its ACL headers"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
    "torch-npu==$version" -d "$work"

python3 - "$work" <<'PY'
import pathlib, sys, zipfile
work = pathlib.Path(sys.argv[1])
wheels = sorted(work.glob("torch_npu-*.whl"))
if not wheels:
    sys.exit("no torch_npu wheel was downloaded")
with zipfile.ZipFile(wheels[0]) as z:
    members = [m for m in z.namelist() if m.startswith("torch_npu/include/acl/")]
    if not any(m.endswith("acl/acl_rt.h") for m in members):
        sys.exit(f"{wheels[0].name} has no torch_npu/include/acl/acl_rt.h")
    z.extractall(work / "x", members)
print(f"aclshm: {len(members)} header entries from {wheels[0].name}")
PY

cd "$root"
cargo run --quiet -p aclshm-sys-gen -- abi-check --official "$work/x/torch_npu/include"

echo "aclshm: the C programs, compiled against the official headers, on the drop-in library"
ACLSHM_OFFICIAL_ACL_INCLUDE="$work/x/torch_npu/include" cargo test --quiet --locked -p aclshm-ascendcl --test c_programs
