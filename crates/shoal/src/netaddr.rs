//! Choosing the address a node advertises to the cluster.

use anyhow::{bail, Result};
use std::net::{IpAddr, SocketAddr};

pub const DEFAULT_PORT: u16 = 4377;

/// `ADDR` or `ADDR:PORT` → `ADDR:PORT`.
pub fn with_port(addr: &str, port: u16) -> Result<String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(addr.to_string());
    }
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port).to_string());
    }
    bail!("{addr:?} is not an IP address or IP:PORT")
}

/// The host's one non-loopback IPv4 address, as swarm mode picks it (shoal's own links
/// left out).
pub fn detect_ip() -> Result<IpAddr> {
    let mut found: Vec<(String, IpAddr)> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(addr) = ifa
            .address
            .and_then(|a| a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
        else {
            continue;
        };
        // Loopback, and shoal's own links (the task bridge): never what peers reach.
        if addr.is_loopback() || ifa.interface_name.starts_with("shoal") {
            continue;
        }
        if !found.iter().any(|(_, a)| *a == addr) {
            found.push((ifa.interface_name.clone(), addr));
        }
    }
    match found.as_slice() {
        [(_, one)] => Ok(*one),
        [] => {
            bail!("this host has no non-loopback IPv4 address to advertise; pass --advertise-addr")
        }
        many => {
            let list: Vec<String> = many.iter().map(|(i, a)| format!("{a} on {i}")).collect();
            bail!(
                "cannot choose an address to advertise: this host has several ({}); pass --advertise-addr",
                list.join(", ")
            )
        }
    }
}
