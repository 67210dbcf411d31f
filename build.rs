//! Build script: puts the git revision into `AFTERCART_GIT_REV` for `aftercart --version`.
//!
//! The revision is `git rev-parse --short=12 HEAD` of this checkout; `AFTERCART_GIT_REV`
//! set at build time wins (a packager building from a tarball), and without git or a
//! `.git` beside Cargo.toml it is "unknown". Cargo reruns this when HEAD moves: git
//! itself says where HEAD and the branch it names live, which also holds in a worktree,
//! where `.git` is a file pointing elsewhere and the branch is in the main repository.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=AFTERCART_GIT_REV");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let rev = match std::env::var("AFTERCART_GIT_REV") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_owned(),
        _ => git_rev(&dir).unwrap_or_else(|| "unknown".into()),
    };
    println!("cargo:rustc-env=AFTERCART_GIT_REV={rev}");
}

/// The short revision of HEAD, watching the files that change when it moves; None when
/// this is not a git checkout of its own or git cannot tell.
fn git_rev(dir: &Path) -> Option<String> {
    // A source tree unpacked inside some other repository must not report that one's HEAD.
    if !dir.join(".git").exists() {
        return None;
    }
    for file in ["HEAD", "packed-refs"] {
        watch(dir, git(dir, &["rev-parse", "--git-path", file]));
    }
    // HEAD names a branch (not when detached): its ref file moves with every commit.
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch(dir, git(dir, &["rev-parse", "--git-path", &branch]));
    }
    git(dir, &["rev-parse", "--short=12", "HEAD"])
}

/// Reruns the build script when `path` (relative to `dir`) changes. Only for files that
/// exist: Cargo reruns on every build for a missing one.
fn watch(dir: &Path, path: Option<String>) {
    if let Some(p) = path.map(|p| dir.join(p)).filter(|p| p.is_file()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

/// One line of git's output, None when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let line = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !line.is_empty()).then_some(line)
}
