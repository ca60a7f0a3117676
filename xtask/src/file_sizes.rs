//! `cargo xtask lint`'s size check: no source file outside tests is longer than
//! [`MAX_LINES`], so that every file can be read in one sitting and holds one job.
//! Test code (integration suites under `tests/tests/`, `tests.rs` files and `tests/` folders
//! beside a module) is exempt: a long table of cases is not a long module.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// The longest a non-test source file may be.
pub const MAX_LINES: usize = 800;

/// The workspace's source folders, relative to the workspace root.
const SOURCE_DIRS: &[&str] = &[
    "controller/src",
    "shared/src",
    "xdp-ebpf/src",
    "bench/src",
    "tests/src",
    "xtask/src",
    "fuzz/fuzz_targets",
];

/// Checks every `.rs` file under [`SOURCE_DIRS`] of `root`; the error names each long file.
pub fn check(root: &Path) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for dir in SOURCE_DIRS {
        let dir = root.join(dir);
        if dir.is_dir() {
            files.extend(non_test_sources(&dir)?);
        }
    }
    let mut long = Vec::new();
    for file in &files {
        let text =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let lines = text.lines().count();
        if lines > MAX_LINES {
            let shown = file.strip_prefix(root).unwrap_or(file);
            long.push(format!("{} has {lines} lines", shown.display()));
        }
    }
    if long.is_empty() {
        println!(
            "file sizes: {} source files, none over {MAX_LINES} lines outside tests",
            files.len()
        );
        Ok(())
    } else {
        bail!(
            "source files over {MAX_LINES} lines (split them by job; tests may go to a tests.rs \
             beside the module):\n  {}",
            long.join("\n  ")
        )
    }
}

/// Every `.rs` file under `dir` that is not test code: `tests.rs` files and everything in a
/// `tests/` folder are left out (a module's tests beside it: `engine/tests.rs`, `api/tests/…`).
/// The layer check reads the same set.
pub fn non_test_sources(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    Ok(files)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                collect(&path, files)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_stem().is_some_and(|s| s != "tests")
        {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_files_fail_and_test_files_do_not() {
        let root = std::env::temp_dir().join(format!("xtask-sizes-{}", std::process::id()));
        let src = root.join("bench/src");
        fs::create_dir_all(src.join("feed/tests")).unwrap();
        let long = "fn f() {}\n".repeat(MAX_LINES + 1);
        fs::write(src.join("short.rs"), "fn f() {}\n").unwrap();
        fs::write(src.join("feed/tests.rs"), &long).unwrap();
        fs::write(src.join("feed/tests/cases.rs"), &long).unwrap();
        assert!(check(&root).is_ok());
        fs::write(src.join("feed/mod.rs"), &long).unwrap();
        let err = check(&root).unwrap_err().to_string();
        fs::remove_dir_all(&root).unwrap();
        assert!(err.contains("bench/src/feed/mod.rs has 801 lines"), "{err}");
    }
}
