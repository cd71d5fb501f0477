//! Recognising out-of-memory failures: the one place that knows what they look
//! like. A CUDA out-of-memory line in a backend's last output lowers its settings
//! for the next start ([`oom_line`]); any out-of-memory failure, of the GPU or of the
//! host (the kernel's or systemd's OOM killer), is recorded as an `oom` event
//! ([`is_oom`]).

/// Text that CUDA, PyTorch, vLLM and llama.cpp print when GPU memory runs out.
const SIGNATURES: [&str; 9] = [
    "CUDA out of memory",
    "OutOfMemoryError",
    "CUDA error: out of memory",
    "cudaErrorMemoryAllocation",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDA_ERROR_OUT_OF_MEMORY",
    "cudaMalloc failed: out of memory",
    "No available memory for the cache blocks",
    "failed to allocate CUDA",
];

/// Text the host prints when its memory (or a cgroup's) runs out: the kernel's
/// "Out of memory: Killed process", systemd's `Result=oom-kill`.
const HOST_SIGNATURES: [&str; 2] = ["out of memory", "oom-kill"];

/// Whether `line` names a CUDA out-of-memory failure (case-insensitive).
pub fn is_gpu_oom(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    SIGNATURES
        .iter()
        .any(|s| l.contains(&s.to_ascii_lowercase()))
}

/// Whether `text` names any out-of-memory failure, of the GPU or of the host.
pub fn is_oom(text: &str) -> bool {
    let l = text.to_ascii_lowercase();
    is_gpu_oom(text) || HOST_SIGNATURES.iter().any(|s| l.contains(s))
}

/// The first line (from the end) that names a CUDA out-of-memory failure.
pub fn oom_line(lines: &[String]) -> Option<&str> {
    lines.iter().rev().map(|l| l.trim()).find(|l| is_gpu_oom(l))
}

/// `max_concurrent` one step lower: halved (rounded up), never below `floor`.
pub fn step_concurrency(current: u32, floor: u32) -> u32 {
    current.div_ceil(2).max(floor).min(current)
}

/// vLLM's own default for `--gpu-memory-utilization` (vLLM 0.33.0's
/// `CacheConfig.gpu_memory_utilization`; tests/engines.rs checks it against vLLM's
/// parser): where the out-of-memory step-down starts when the model sets none.
pub const VLLM_DEFAULT_GPU_MEMORY_UTILIZATION: f64 = 0.92;

/// vLLM's GPU memory fraction 5 points lower, never below `floor`.
pub fn step_fraction(current: f64, floor: f64) -> f64 {
    let next = ((current - 0.05) * 100.0).round() / 100.0;
    next.max(floor).min(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let l = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(
            oom_line(&l(&[
                "loading",
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
            ]))
            .is_some()
        );
        assert!(oom_line(&l(&["ggml_cuda: cudaMalloc failed: out of memory", "exit"])).is_some());
        assert!(oom_line(&l(&["ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`"])).is_some());
        assert!(oom_line(&l(&["Segmentation fault", "killed"])).is_none());
        assert!(oom_line(&l(&["host out of memory: killed process"])).is_none());
        // Any out-of-memory failure is an event; only the GPU's lowers settings.
        assert!(is_oom("host out of memory: killed process"));
        assert!(is_oom("killed by signal 9 (SIGKILL) (systemd: oom-kill)"));
        assert!(is_oom(
            "backend exited with status 1: CUDA_ERROR_OUT_OF_MEMORY"
        ));
        assert!(is_gpu_oom("cuda_error_out_of_memory"));
        assert!(!is_oom("backend exited with status 1: no such file"));
    }

    #[test]
    fn steps() {
        assert_eq!(step_concurrency(16, 1), 8);
        assert_eq!(step_concurrency(3, 1), 2);
        assert_eq!(step_concurrency(2, 1), 1);
        assert_eq!(step_concurrency(1, 1), 1);
        assert_eq!(step_concurrency(8, 6), 6);
        assert_eq!(step_fraction(0.9, 0.5), 0.85);
        assert_eq!(step_fraction(0.52, 0.5), 0.5);
        assert_eq!(step_fraction(0.5, 0.5), 0.5);
    }
}
