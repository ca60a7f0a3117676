//! What the feed bench creates and must remove, also on error: the bpffs pin directory, the
//! scratch files, and the network namespace the baselines run in (with the commands run there).

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

/// The bpffs directory the xdpwall maps are pinned under, removed on drop. Created before the
/// object is loaded, so a load that fails half way leaves nothing either.
pub(crate) struct PinDirGuard(pub(crate) PathBuf);

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Scratch files (the ipset and nft scripts), removed on drop.
pub(super) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(super) fn create(path: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the scratch directory {}", path.display()))?;
        Ok(Self(path))
    }

    pub(super) fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace for the baselines, deleted on drop, and with it every ipset set and
/// nftables table made in it (even after a command was killed half way).
pub(super) struct BaselineNetns {
    pub(super) name: String,
}

/// A baseline command that finished successfully.
pub(super) struct Finished {
    pub(super) elapsed: Duration,
    pub(super) stdout: String,
}

/// Why a baseline operation stopped being measured at one size.
#[derive(Clone, Debug)]
pub(super) enum Stop {
    TimedOut { operation: String, limit: Duration },
    Failed { operation: String, detail: String },
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TimedOut { operation, limit } => {
                write!(f, "`{operation}` timed out after {} s", limit.as_secs())
            }
            Self::Failed { operation, detail } => write!(f, "`{operation}` failed: {detail}"),
        }
    }
}

impl BaselineNetns {
    pub(super) fn create(name: &str) -> anyhow::Result<Self> {
        let output = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .context("running ip netns add")?;
        ensure!(
            output.status.success(),
            "ip netns add {name} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(Self {
            name: name.to_string(),
        })
    }

    /// Runs `program args` in the namespace under `timeout(1)`, so a command that hangs is
    /// killed instead of hanging the benchmark. The elapsed time is the wall time of the whole
    /// command line, start-up of timeout, `ip netns exec` and the tool included.
    pub(super) fn exec(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&Path>,
        limit: Duration,
    ) -> anyhow::Result<(Duration, Output)> {
        let limit_secs = limit.as_secs().to_string();
        let mut command = Command::new("timeout");
        command
            .args([
                "--kill-after=5",
                &limit_secs,
                "ip",
                "netns",
                "exec",
                &self.name,
            ])
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match stdin {
            Some(path) => command
                .stdin(File::open(path).with_context(|| format!("opening {}", path.display()))?),
            None => command.stdin(Stdio::null()),
        };
        let started = Instant::now();
        let output = command
            .output()
            .with_context(|| format!("running timeout … ip netns exec {} {program}", self.name))?;
        Ok((started.elapsed(), output))
    }

    /// Like [`Self::exec`], but a non-zero exit is a [`Stop`] naming `operation`.
    pub(super) fn run(
        &self,
        operation: &str,
        program: &str,
        args: &[&str],
        stdin: Option<&Path>,
        limit: Duration,
    ) -> Result<Finished, Stop> {
        let (elapsed, output) =
            self.exec(program, args, stdin, limit)
                .map_err(|e| Stop::Failed {
                    operation: operation.to_string(),
                    detail: format!("{e:#}"),
                })?;
        match output.status.code() {
            Some(0) => Ok(Finished {
                elapsed,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            }),
            // timeout(1): 124 after SIGTERM, 137 when --kill-after had to SIGKILL.
            Some(124 | 137) => Err(Stop::TimedOut {
                operation: operation.to_string(),
                limit,
            }),
            _ => Err(Stop::Failed {
                operation: operation.to_string(),
                detail: first_chars(String::from_utf8_lossy(&output.stderr).trim(), 300),
            }),
        }
    }

    /// Whether `program args` exits 0 (membership tests, where "no" is a non-zero exit).
    pub(super) fn succeeds(
        &self,
        program: &str,
        args: &[&str],
        limit: Duration,
    ) -> anyhow::Result<bool> {
        let (_, output) = self.exec(program, args, None, limit)?;
        match output.status.code() {
            Some(124 | 137) => bail!("{program} {} timed out", args.join(" ")),
            code => Ok(code == Some(0)),
        }
    }
}

impl Drop for BaselineNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn first_chars(text: &str, limit: usize) -> String {
    text.chars().take(limit).collect()
}
