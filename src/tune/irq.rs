//! Interrupt placement: each NIC queue's interrupts on the CPU of a shard
//! (queue q on shard q % shards), irqbalance kept from moving them, and
//! RPS/XPS spreading packet work over every shard's CPU when the NIC has
//! fewer queues than there are shards.
//!
//! With a queue's packets processed on a shard's CPU, the listeners'
//! steering (`placement`) hands that queue's new connections to that shard.

use super::host::{self, Host};
use super::{Area, Finding, Nic, Step, Target};

/// Words drivers put before a queue number in interrupt names:
/// `eth0-TxRx-3`, `ens1f0-rx-2`, `virtio2-input.0`, `mlx5_comp3@pci:...`.
const QUEUE_WORDS: [&str; 7] = ["txrx", "rx", "tx", "input", "output", "comp", "combined"];

/// One interrupt of one NIC queue.
#[derive(Debug, PartialEq, Eq)]
struct QueueIrq {
    irq: u32,
    name: String,
    queue: usize,
}

pub fn check(
    host: &Host,
    target: &Target,
    notes: &mut Vec<String>,
) -> Result<Vec<Finding>, String> {
    let nic = target.nic()?;
    let mut findings = Vec::new();
    let irqs = queue_irqs(host, nic)?;
    if irqs.is_empty() {
        notes.push(format!(
            "no queue interrupts of {} in /proc/interrupts (a virtual interface, or names \
             this check does not know): none placed",
            nic.name
        ));
    }
    for q in &irqs {
        let cpu = target.shard_cpus[q.queue % target.shards];
        let path = format!("/proc/irq/{}/smp_affinity_list", q.irq);
        let found = host::parse_cpulist(&host.read(&path)?).map_err(|e| format!("{path}: {e}"))?;
        if found != [cpu] {
            findings.push(
                Finding::new(
                    Area::Irq,
                    format!("{path} ({})", q.name),
                    host::format_cpulist(&found),
                    cpu.to_string(),
                    format!(
                        "queue {} of {} is served by shard {}, which runs on CPU {cpu}",
                        q.queue,
                        nic.name,
                        q.queue % target.shards
                    ),
                )
                .fix(vec![Step::write(&path, format!("{cpu}\n"))]),
            );
        }
    }
    if !irqs.is_empty() {
        findings.extend(irqbalance(host)?);
    }
    for (kind, file) in [("rx", "rps_cpus"), ("tx", "xps_cpus")] {
        findings.extend(steering(host, target, nic, kind, file, notes)?);
    }
    Ok(findings)
}

/// The NIC's queue interrupts: those of its device (msi_irqs) whose names
/// carry a queue number, or without msi_irqs, those named after it.
fn queue_irqs(host: &Host, nic: &Nic) -> Result<Vec<QueueIrq>, String> {
    let device_irqs: Option<Vec<u32>> = match nic.device_attr(host, "msi_irqs") {
        Some(dir) => Some(
            host.list(&dir)?
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
        ),
        None => None,
    };
    let table = host.read("/proc/interrupts")?;
    let mut ours: Vec<(u32, &str)> = Vec::new();
    for line in table.lines().skip(1) {
        let Some((number, rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(irq) = number.trim().parse::<u32>() else {
            continue;
        };
        let name = rest.split_whitespace().last().unwrap_or("");
        let of_nic = match &device_irqs {
            Some(list) => list.contains(&irq),
            None => name.contains(nic.name.as_str()),
        };
        if of_nic {
            ours.push((irq, name));
        }
    }
    let mut irqs: Vec<QueueIrq> = ours
        .iter()
        .filter_map(|&(irq, name)| {
            let queue = queue_number(name)?;
            Some(QueueIrq {
                irq,
                name: name.to_string(),
                queue,
            })
        })
        .collect();
    // A single-vector NIC names its one interrupt after itself; a
    // multi-queue one uses that name for its link interrupt.
    if irqs.is_empty() {
        if let Some(&(irq, name)) = ours.iter().find(|(_, name)| *name == nic.name) {
            irqs.push(QueueIrq {
                irq,
                name: name.to_string(),
                queue: 0,
            });
        }
    }
    Ok(irqs)
}

/// The queue number in an interrupt name, if it names a queue.
fn queue_number(name: &str) -> Option<usize> {
    let name = name.split('@').next().unwrap_or(name).to_ascii_lowercase();
    let tokens: Vec<&str> = name.split(['-', '.', '_']).collect();
    let mut found = None;
    for (i, token) in tokens.iter().enumerate() {
        for word in QUEUE_WORDS {
            let Some(tail) = token.strip_prefix(word) else {
                continue;
            };
            let digits = match tail.is_empty() {
                true => tokens.get(i + 1).copied().unwrap_or(""),
                false => tail,
            };
            if let Ok(queue) = digits.parse::<usize>() {
                found = Some(queue);
            }
        }
    }
    found
}

/// irqbalance running or enabled: it would move the placed interrupts.
fn irqbalance(host: &Host) -> Result<Option<Finding>, String> {
    let mut running = false;
    for pid in host
        .list("/proc")?
        .iter()
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
    {
        // A process may exit between the listing and the read.
        if let Ok(Some(comm)) = host.read_if_exists(&format!("/proc/{pid}/comm")) {
            running |= comm.trim() == "irqbalance";
        }
    }
    let enabled = host.exists("/etc/systemd/system/multi-user.target.wants/irqbalance.service");
    let found = match (running, enabled) {
        (false, false) => return Ok(None),
        (true, false) => "running",
        (false, true) => "enabled at boot",
        (true, true) => "running, enabled at boot",
    };
    Ok(Some(
        Finding::new(
            Area::Irq,
            "irqbalance".into(),
            found.into(),
            "stopped and disabled".into(),
            "it moves interrupts every few seconds, undoing their placement on the shards' CPUs"
                .into(),
        )
        .fix(vec![Step::run(&[
            "systemctl",
            "disable",
            "--now",
            "irqbalance",
        ])]),
    ))
}

/// RPS (`rx`, rps_cpus) or XPS (`tx`, xps_cpus) when the NIC has fewer
/// such queues than there are shards: queue q's packets are handled on the
/// CPUs of the shards s with s % queues == q.
fn steering(
    host: &Host,
    target: &Target,
    nic: &Nic,
    kind: &str,
    file: &str,
    notes: &mut Vec<String>,
) -> Result<Vec<Finding>, String> {
    let dir = format!("/sys/class/net/{}/queues", nic.name);
    let prefix = format!("{kind}-");
    let queues = host
        .list(&dir)?
        .iter()
        .filter(|n| n.starts_with(&prefix))
        .count();
    if queues == 0 || queues >= target.shards {
        return Ok(Vec::new());
    }
    let mut findings = Vec::new();
    for queue in 0..queues {
        let path = format!("{dir}/{kind}-{queue}/{file}");
        let Some(text) = host.read_if_exists(&path)? else {
            notes.push(format!(
                "{path} is absent or does not apply (one {kind} queue, or a kernel without \
                 it): {} not set",
                file.trim_end_matches("_cpus").to_uppercase()
            ));
            continue;
        };
        let found = host::parse_cpumask(&text).map_err(|e| format!("{path}: {e}"))?;
        let mut wanted: Vec<usize> = (0..target.shards)
            .filter(|s| s % queues == queue)
            .map(|s| target.shard_cpus[s])
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if found != wanted {
            let mask = host::format_cpumask(&wanted);
            findings.push(
                Finding::new(
                    Area::Irq,
                    path.clone(),
                    format!("{} (CPUs {})", text.trim(), host::format_cpulist(&found)),
                    format!("{mask} (CPUs {})", host::format_cpulist(&wanted)),
                    format!(
                        "{} has {queues} {kind} queue(s) for {} shards: without {}, the \
                         packets of every shard would be handled on the queue's CPU alone",
                        nic.name,
                        target.shards,
                        file.trim_end_matches("_cpus").to_uppercase()
                    ),
                )
                .fix(vec![Step::write(&path, format!("{mask}\n"))]),
            );
        }
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_numbers_are_read_from_the_names_drivers_give() {
        assert_eq!(queue_number("eth0-TxRx-3"), Some(3));
        assert_eq!(queue_number("i40e-ens1f0-TxRx-12"), Some(12));
        assert_eq!(queue_number("ens1f0-rx-2"), Some(2));
        assert_eq!(queue_number("virtio2-input.0"), Some(0));
        assert_eq!(queue_number("virtio2-output.1"), Some(1));
        assert_eq!(queue_number("mlx5_comp7@pci:0000:3b:00.0"), Some(7));
        assert_eq!(queue_number("virtio2-config"), None);
        assert_eq!(queue_number("mlx5_async0@pci:0000:3b:00.0"), None);
        assert_eq!(queue_number("ens1f0"), None);
    }
}
