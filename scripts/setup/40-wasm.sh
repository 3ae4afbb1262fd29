# Sourced by scripts/test.sh: the WASM build-hook target, the sample hooks
# (examples/hooks) and the hook host's test guests (plugins/host/tests/guests), built in
# release for wasm32-wasip2. Exports PAASTECH_HOOK_WASM_DIR, where their .wasm files are;
# the hook tests fail (naming this script) when they are missing.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
PAASTECH_HOOK_TARGET_DIR="$PWD/target/hooks"
for workspace in examples/hooks plugins/host/tests/guests; do
    (cd "$workspace" && cargo build --release --locked --target wasm32-wasip2 --target-dir "$PAASTECH_HOOK_TARGET_DIR")
done
export PAASTECH_HOOK_WASM_DIR="$PAASTECH_HOOK_TARGET_DIR/wasm32-wasip2/release"
ls "$PAASTECH_HOOK_WASM_DIR"/*.wasm
