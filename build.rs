//! Build script: records the git commit the binary was built from (`teal bench` writes it into its results), and
//! with `--features cuda` compiles teal's own kernels (kernels/*.cu) to PTX in OUT_DIR with nvcc, which
//! src/kernels.rs embeds and loads on each CUDA device at warm-up.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TEAL_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_kernels();
    }
}

/// nvcc: `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else the one on PATH.
fn nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return p.into();
    }
    match std::env::var_os("CUDA_HOME").or_else(|| std::env::var_os("CUDA_PATH")) {
        Some(home) => Path::new(&home).join("bin/nvcc"),
        None => "nvcc".into(),
    }
}

/// The PTX target: `TEAL_CUDA_ARCH` (e.g. 80), else candle's `CUDA_COMPUTE_CAP`, else 80. PTX for compute_N is
/// compiled by the driver for the actual GPU (N or newer) when the module loads, which warm-up does.
fn arch() -> String {
    let cap = std::env::var("TEAL_CUDA_ARCH").or_else(|_| std::env::var("CUDA_COMPUTE_CAP")).unwrap_or("80".into());
    let digits: String = cap.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() {
        panic!("TEAL_CUDA_ARCH / CUDA_COMPUTE_CAP must be a compute capability like 80 or 90, got '{cap}'");
    }
    format!("compute_{digits}")
}

fn compile_kernels() {
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "TEAL_CUDA_ARCH", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ is part of the crate")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    let (nvcc, arch) = (nvcc(), arch());
    for src in sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let ptx = out.join(src.with_extension("ptx").file_name().expect("a .cu file name"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "-lineinfo"])
            .arg(format!("-arch={arch}"))
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("could not run {} ({e}): run scripts/setup-cuda.sh and source its env.sh", nvcc.display())
            });
        if !status.success() {
            panic!("nvcc failed on {} ({status})", src.display());
        }
    }
}
