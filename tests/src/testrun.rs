//! The XDP program loaded for BPF_PROG_TEST_RUN: frames in, verdicts and counters out.
//!
//! Nothing is attached and nothing is sent anywhere. The maps are pinned under a unique bpffs
//! directory (the program declares them pinned), removed on drop.

use std::path::PathBuf;

use aya::programs::{TestRun as _, TestRunOptions};
use xdpwall::{
    datapath::VerdictCounts,
    engine::Engine,
    loader::{self, LoadedObject},
    pins::PinLayout,
    rules::{Action, Rule, RuleSource, normalize_cidr},
};
use xdpwall_shared::DatapathConfig;

/// `ingress_ifindex` the kernel reports in BPF_PROG_TEST_RUN: the loopback device.
pub const TEST_RUN_IFINDEX: u32 = 1;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub struct TestProgram {
    engine: Engine,
    ebpf: aya::Ebpf,
    pin_dir: PathBuf,
}

impl TestProgram {
    pub fn load(tag: &str) -> anyhow::Result<Self> {
        let (pin_dir, _) = crate::daemon::Daemon::dirs(&format!("testrun-{tag}"));
        let pins = PinLayout::new(&pin_dir);
        // The engine owns the map handles; the program stays in `ebpf`.
        let LoadedObject { ebpf, datapath } = loader::load_object(&pins)?;
        let engine = Engine::new(datapath, Vec::new())?;
        Ok(Self {
            engine,
            ebpf,
            pin_dir,
        })
    }

    /// Replaces the rule set with `(cidr, action)` pairs; ids are 1, 2, ... in order.
    pub fn set_rules(&mut self, rules: &[(&str, Action)]) -> anyhow::Result<Vec<Rule>> {
        let rules: Vec<Rule> = rules
            .iter()
            .enumerate()
            .map(|(i, (cidr, action))| rule(i as u32 + 1, cidr, *action))
            .collect();
        self.engine.replace_rules(rules.clone())?;
        Ok(rules)
    }

    pub fn set_rule_list(&mut self, rules: Vec<Rule>) -> anyhow::Result<()> {
        self.engine.replace_rules(rules)?;
        Ok(())
    }

    pub fn set_config(&mut self, config: DatapathConfig) -> anyhow::Result<()> {
        self.engine.set_datapath_config(config)?;
        Ok(())
    }

    /// Runs the program once on `frame`; returns the XDP action.
    pub fn run(&self, frame: &[u8]) -> anyhow::Result<u32> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        Ok(loader::xdp_program(&self.ebpf).test_run(opts)?.return_value)
    }

    /// Verdict counters of the test-run interface.
    pub fn verdicts(&self) -> anyhow::Result<VerdictCounts> {
        Ok(self.engine.datapath_verdict_counts(TEST_RUN_IFINDEX)?)
    }

    pub fn rule_counters(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<u32, xdpwall_shared::RuleCounters>> {
        Ok(self.engine.rule_counters()?)
    }
}

impl Drop for TestProgram {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

pub fn rule(id: u32, cidr: &str, action: Action) -> Rule {
    Rule {
        id,
        cidr: normalize_cidr(cidr).expect("valid test CIDR"),
        action,
        list: "test".into(),
        reason: String::new(),
        source: RuleSource::Config,
        created_at: 0,
        expires_at: None,
    }
}
