//! NUMA: on a host with more than one node, cluecast's CPUs and memory go on
//! the NIC's node (packets, frames and shards then share one memory
//! controller), through a systemd drop-in for cluecast.service.

use super::host::{self, Host};
use super::{whole_file, Area, Finding, Nic, Step, Target};

pub const DROP_IN: &str = "/etc/systemd/system/cluecast.service.d/50-numa.conf";

/// The node to bind to: the NIC's, when the host has several nodes and the
/// NIC says which it is on. Notes say why there is none otherwise.
pub fn binding(
    host: &Host,
    nic: Option<&Nic>,
    notes: &mut Vec<String>,
) -> Result<Option<usize>, String> {
    let Some(online) = host.read_if_exists("/sys/devices/system/node/online")? else {
        notes.push("no NUMA information (/sys/devices/system/node/online): not bound".into());
        return Ok(None);
    };
    let nodes = host::parse_cpulist(&online).map_err(|e| format!("node list: {e}"))?;
    if nodes.len() <= 1 {
        notes.push("one NUMA node: nothing to bind".into());
        return Ok(None);
    }
    let Some(nic) = nic else {
        notes.push(format!(
            "{} NUMA nodes but no NIC: not bound (name the NIC with --iface)",
            nodes.len()
        ));
        return Ok(None);
    };
    let node = match nic.device_attr(host, "numa_node") {
        Some(path) => host.read(&path)?.trim().parse::<i64>().unwrap_or(-1),
        None => -1,
    };
    if node < 0 {
        notes.push(format!(
            "{} does not say which NUMA node it is on: not bound",
            nic.name
        ));
        return Ok(None);
    }
    let node = node as usize;
    if !nodes.contains(&node) {
        return Err(format!(
            "{} is on NUMA node {node}, which is not online ({})",
            nic.name,
            online.trim()
        ));
    }
    Ok(Some(node))
}

pub fn check(host: &Host, target: &Target) -> Result<Vec<Finding>, String> {
    let (Some(node), Some(nic)) = (target.numa_node, &target.nic) else {
        return Ok(Vec::new());
    };
    let contents = format!(
        "# Written by `cluecast tune apply`: run cluecast on the CPUs and memory of\n\
         # NUMA node {node}, the node of {}.\n\
         [Service]\n\
         CPUAffinity={}\n\
         NUMAPolicy=bind\n\
         NUMAMask={node}\n",
        nic.name, target.cpus
    );
    let why = format!(
        "{} is on node {node}: shards on its CPUs, with their arena in its memory, do not \
         cross the interconnect for every packet",
        nic.name
    );
    let reload = vec![Step::run(&["systemctl", "daemon-reload"])];
    Ok(
        whole_file(host, Area::Numa, DROP_IN, contents, why, reload)?
            .into_iter()
            .collect(),
    )
}
