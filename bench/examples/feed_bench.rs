//! Runs the feed-apply benchmark (see `xdpwall_bench::feed`) and writes the report to
//! `<out>/<date>-feed.md`, until the harness has a `feed` subcommand. As root:
//!
//! ```sh
//! cargo build --release -p xdpwall-bench --example feed_bench
//! ./target/release/examples/feed_bench --entries 1000000 --churn 0.01 --reps 3
//! ```

use anyhow::Context as _;
use clap::Parser;
use xdpwall_bench::{
    feed::{FeedArgs, run_feed},
    today,
};

#[derive(Parser, Debug)]
#[command(
    about = "xdpwall feed-apply benchmark: a large feed and its churn through xdpwall, ipset and nft"
)]
struct Cli {
    #[command(flatten)]
    feed: FeedArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = run_feed(&cli.feed)?;
    std::fs::create_dir_all(&cli.feed.out)
        .with_context(|| format!("creating {}", cli.feed.out.display()))?;
    let path = cli.feed.out.join(format!("{}-feed.md", today()));
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    println!("{report}");
    println!("report written to {}", path.display());
    Ok(())
}
