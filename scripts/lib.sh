# Sourced by scripts that build pyops in another configuration. Building in place would replace
# the .so files of the main environment's editable install, so they build in a copy.

# Copies the working tree (tracked and unignored files) into a fresh temporary folder, removed
# when the calling script exits, and changes into it.
enter_tree_copy() {
    local copy
    copy=$(mktemp -d)
    trap "rm -rf '$copy'" EXIT
    git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$copy"
    cd "$copy"
}

# CUDA_HOME for torch's build: the toolkit root that nvcc really lives in (the nvcc on PATH may
# be a wrapper script elsewhere, which would mislead torch's own guess).
find_cuda_home() {
    local nvcc
    for nvcc in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc "$(command -v nvcc || true)"; do
        if [ -x "$nvcc" ] && [ -e "$(dirname "$(readlink -f "$nvcc")")/../include/cuda_runtime.h" ]; then
            dirname "$(dirname "$(readlink -f "$nvcc")")"
            return
        fi
    done
    return 1
}
