//! `cargo xtask bench`: runs the harness (see the library docs) and writes the report.

use std::path::PathBuf;

use clap::Parser as _;
use xdpwall_bench::{Args, run, today};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/xdpwall-bench-{}", std::process::id()));
    let result = run(&args, &pin_dir);
    let _ = std::fs::remove_dir_all(&pin_dir);
    let report = result?;
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join(format!("{}-testrun.md", today()));
    std::fs::write(&path, &report)?;
    println!("{report}");
    println!("report written to {}", path.display());
    Ok(())
}
