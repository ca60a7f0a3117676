//! The XDP program loaded for BPF_PROG_TEST_RUN: frames in, verdicts and counters out.
//!
//! Nothing is attached and nothing is sent anywhere. The maps are pinned under a unique bpffs
//! directory (the program declares them pinned), removed on drop.

use std::path::PathBuf;

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use xdpwall::{
    datapath::{Engines, Ipv4Lookup, VerdictCounts},
    engine::Engine,
    loader::{self, LoadedObject},
    pins::PinLayout,
    rules::{Action, Rule, RuleSource, normalize_cidr},
    store::{NewRule, Store},
    syn::{self, SynStage},
};
use xdpwall_shared::DatapathConfig;

/// `ingress_ifindex` the kernel reports in BPF_PROG_TEST_RUN: the loopback device.
pub const TEST_RUN_IFINDEX: u32 = 1;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub struct TestProgram {
    engine: Engine,
    ebpf: aya::Ebpf,
    /// The SYN-cookie stage's maps and whether the kernel took its program.
    pub syn: SynStage,
    pin_dir: PathBuf,
}

impl TestProgram {
    /// Loads the filter with the LPM engine for IPv4.
    pub fn load(tag: &str) -> anyhow::Result<Self> {
        Self::load_with(tag, Ipv4Lookup::Lpm)
    }

    /// Loads the filter with the given engines (an [`Ipv4Lookup`] alone: IPv6 on the tries).
    pub fn load_with(tag: &str, engines: impl Into<Engines>) -> anyhow::Result<Self> {
        let (pin_dir, _) = crate::daemon::Daemon::dirs(&format!("testrun-{tag}"));
        let pins = PinLayout::new(&pin_dir);
        let opened = (|| {
            // The engine owns the map handles; the program stays in `ebpf`.
            let LoadedObject {
                ebpf,
                datapath,
                syn,
            } = loader::load_object(&pins, engines)?;
            let (engine, _) = Engine::open(
                Box::new(datapath),
                Store::in_memory()?,
                Vec::new(),
                Vec::new(),
            )?;
            anyhow::Ok((engine, ebpf, syn))
        })();
        match opened {
            Ok((engine, ebpf, syn)) => Ok(Self {
                engine,
                ebpf,
                syn,
                pin_dir,
            }),
            Err(e) => {
                // A program the verifier refuses must not leave its maps pinned behind.
                let _ = std::fs::remove_dir_all(&pin_dir);
                Err(e)
            }
        }
    }

    /// Where this program's maps are pinned.
    pub fn pins(&self) -> PinLayout {
        PinLayout::new(&self.pin_dir)
    }

    /// Replaces the rule set with `(cidr, action)` pairs; the first set gets ids 1, 2, ... in
    /// order. Returns the stored rules.
    pub fn set_rules(&mut self, rules: &[(&str, Action)]) -> anyhow::Result<Vec<Rule>> {
        let rules = rules
            .iter()
            .map(|(cidr, action)| new_rule(cidr, *action))
            .collect();
        Ok(self.engine.replace_all(rules, "test", 0)?)
    }

    /// Turns a stage of the datapath on or off (`xdpwall_shared::lookup::STAGE_BITS`).
    pub fn set_stage(&mut self, bit: u32, on: bool) -> anyhow::Result<()> {
        self.engine.set_stage(bit, on)?;
        Ok(())
    }

    /// Runs the ingress program once on `frame`: the XDP action and the frame it left.
    pub fn run_out(&self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        run_program_out(loader::xdp_program(&self.ebpf), frame)
    }

    /// Replaces the rule set with `rules` (scoped ones included); returns the stored rules.
    pub fn replace_rules(&mut self, rules: Vec<NewRule>) -> anyhow::Result<Vec<Rule>> {
        Ok(self.engine.replace_all(rules, "test", 0)?)
    }

    pub fn set_config(&mut self, config: DatapathConfig) -> anyhow::Result<()> {
        self.engine.set_datapath_config(config)?;
        Ok(())
    }

    /// Removes the pins now; the maps live on while this process holds them. For a process that
    /// leaves without running Drop (libFuzzer exits with `exit()`: the packet fuzz target).
    pub fn unpin(&self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }

    /// Runs the program once on `frame`; returns the XDP action.
    pub fn run(&self, frame: &[u8]) -> anyhow::Result<u32> {
        run_program(loader::xdp_program(&self.ebpf), frame)
    }

    /// Runs the SYN-cookie stage on its own once on `frame`: the XDP action and the frame as the
    /// program left it. `None` when the kernel refused the stage.
    pub fn run_syn(&self, frame: &[u8]) -> anyhow::Result<Option<(u32, Vec<u8>)>> {
        let Some(program) = syn::program(&self.ebpf) else {
            return Ok(None);
        };
        Ok(Some(run_program_out(program, frame)?))
    }

    /// How long one run on `frame` took, as the kernel measured it (the program alone, no
    /// syscall): through the ingress program, or the SYN-cookie stage alone.
    pub fn time_run(&self, frame: &[u8], syn_stage: bool) -> anyhow::Result<std::time::Duration> {
        let program = if syn_stage {
            syn::program(&self.ebpf).ok_or_else(|| anyhow::anyhow!("no SYN stage"))?
        } else {
            loader::xdp_program(&self.ebpf)
        };
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        Ok(program.test_run(opts)?.duration)
    }

    /// The rules engine and the program apart, so that one thread can change rules while
    /// another runs frames through [`run_program`].
    pub fn parts(&mut self) -> (&mut Engine, &Xdp) {
        (&mut self.engine, loader::xdp_program(&self.ebpf))
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

/// Runs `program` once on `frame`; returns the XDP action.
pub fn run_program(program: &Xdp, frame: &[u8]) -> anyhow::Result<u32> {
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::default()
    };
    Ok(program.test_run(opts)?.return_value)
}

/// Runs `program` once on `frame`; returns the XDP action and the frame it left.
pub fn run_program_out(program: &Xdp, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    };
    let result = program.test_run(opts)?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

pub fn new_rule(cidr: &str, action: Action) -> NewRule {
    NewRule {
        options: Default::default(),
        cidr: normalize_cidr(cidr).expect("valid test CIDR"),
        action,
        list: "test".into(),
        reason: String::new(),
        source: RuleSource::Config,
        expires_at: None,
    }
}
