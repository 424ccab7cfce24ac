//! The machine a bench ran on, as `report.md` describes it: cores, memory, kernel and CPU
//! model, read from the standard library and Linux's `/proc`.
//!
//! Invariants: reading never fails; a figure the machine does not give (another OS, a
//! `/proc` without the field) is `None` and shown as unknown.

use std::fs;

/// What the report says of the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    /// Cores this process may run on (`std::thread::available_parallelism`).
    pub cores: Option<usize>,
    /// Total memory (`MemTotal` of /proc/meminfo), in bytes.
    pub memory_bytes: Option<u64>,
    /// Kernel release (/proc/sys/kernel/osrelease).
    pub kernel: Option<String>,
    /// CPU model (the first `model name` of /proc/cpuinfo).
    pub cpu: Option<String>,
}

impl Machine {
    /// This machine.
    pub fn probe() -> Machine {
        let read = |path: &str| fs::read_to_string(path).ok();
        Machine {
            cores: std::thread::available_parallelism().ok().map(usize::from),
            memory_bytes: read("/proc/meminfo").as_deref().and_then(mem_total),
            kernel: read("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty()),
            cpu: read("/proc/cpuinfo").as_deref().and_then(cpu_model),
        }
    }
}

/// `MemTotal` of /proc/meminfo's `text`, in bytes (the file gives kB, that is KiB).
fn mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// The first `model name` (x86) or, failing that, `Model` or `Hardware` (Arm boards) of
/// /proc/cpuinfo's `text`.
fn cpu_model(text: &str) -> Option<String> {
    ["model name", "Model", "Hardware"].iter().find_map(|key| {
        text.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == *key && !value.trim().is_empty()).then(|| value.trim().to_string())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_total_memory_in_bytes() {
        let text = "MemFree:  100 kB\nMemTotal:       24684092 kB\nBuffers: 1 kB\n";
        assert_eq!(mem_total(text), Some(24_684_092 * 1024));
        assert_eq!(mem_total("MemTotal: 12\n"), Some(12));
        assert_eq!(mem_total("MemTotal: 12 MB\n"), None);
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn reads_the_cpu_model() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 2\nmodel name\t: AMD EPYC 9554\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9554\n";
        assert_eq!(cpu_model(x86).as_deref(), Some("AMD EPYC 9554"));
        let arm = "processor\t: 0\nBogoMIPS\t: 108.00\n\nModel\t\t: Raspberry Pi 4 Model B\n";
        assert_eq!(cpu_model(arm).as_deref(), Some("Raspberry Pi 4 Model B"));
        assert_eq!(cpu_model("processor\t: 0\nmodel name\t: \n"), None);
    }

    #[test]
    fn probing_this_machine_finds_its_cores() {
        assert!(Machine::probe().cores.is_some_and(|c| c >= 1));
    }
}
