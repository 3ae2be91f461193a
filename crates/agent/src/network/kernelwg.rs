//! The kernel WireGuard engine: `shoal-wg` as a link of kind `wireguard`, configured
//! over generic netlink (the `wireguard` family, as `wg set` does). Used wherever the
//! kernel has WireGuard; elsewhere the agent starts the userspace helper (`wg.rs`).
//! A kernel link outlives the daemon by itself, so the data plane survives restarts
//! with no process of ours.

use netlink_packet_core::NLM_F_ACK;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags,
};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};
use std::io;
use std::net::IpAddr;

use super::netlink::Netlink;
use super::wg::LINK;

/// Peers per netlink message: a message must fit the socket's send buffer, so a large
/// peer set goes in several (the first replaces the device's peers, the rest add to
/// them), as `wg setconf` does.
const PEERS_PER_MESSAGE: usize = 256;

/// A blocking generic netlink socket.
struct Genl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Genl {
    fn open() -> io::Result<Genl> {
        let mut sock = Socket::new(NETLINK_GENERIC)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Genl {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends one request to `family` and collects the answer's messages.
    fn request<F>(&mut self, family: u16, payload: F, flags: u16) -> io::Result<Vec<F>>
    where
        F: netlink_packet_generic::GenlFamily
            + netlink_packet_core::Emitable
            + netlink_packet_core::ParseableParametrized<[u8], netlink_packet_generic::GenlHeader>
            + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut genl = GenlMessage::from_payload(payload);
        genl.set_resolved_family_id(family);
        let answer = super::netlink::exchange(&self.sock, &mut self.buf, self.seq, genl, flags)?;
        Ok(answer.into_iter().map(|m| m.payload).collect())
    }

    /// The ID the kernel gave the generic netlink family `name`; ENOENT when the
    /// kernel has no such family (no module).
    fn family_id(&mut self, name: &str) -> io::Result<u16> {
        let ctrl = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(name.to_string())],
        };
        self.request(0x10, ctrl, 0)?
            .into_iter()
            .flat_map(|m| m.nlas)
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(id),
                _ => None,
            })
            .ok_or_else(|| io::Error::other(format!("no ID for the netlink family {name}")))
    }
}

/// Makes `shoal-wg` a kernel WireGuard link, or finds it one already (a previous
/// daemon's). An error means the kernel engine cannot be used here: no WireGuard in
/// the kernel, or `shoal-wg` is the userspace helper's TUN link.
pub fn ensure_link() -> Result<(), String> {
    let mut sock = Netlink::open().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
    match sock
        .link(LINK)
        .map_err(|e| format!("cannot read links: {e}"))?
    {
        Some((_, Some(kind))) if kind == "wireguard" => return Ok(()),
        Some(_) => return Err(format!("{LINK} is the userspace engine's link")),
        None => {}
    }
    sock.add_link(rtnetlink::LinkWireguard::new(LINK).build())
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => "the kernel has no WireGuard".to_string(),
            _ => format!("cannot create the kernel WireGuard link {LINK}: {e}"),
        })?;
    Ok(())
}

/// Removes the kernel link (the node left its cluster); nothing if there is none or it
/// is the userspace engine's.
pub fn remove_link() {
    if let Ok(mut sock) = Netlink::open() {
        if let Ok(Some((_, Some(kind)))) = sock.link(LINK) {
            if kind == "wireguard" {
                let _ = sock.del_link(LINK);
            }
        }
    }
}

/// Whether `shoal-wg` is (still) a kernel WireGuard link.
pub fn link_alive() -> bool {
    Netlink::open()
        .and_then(|mut s| s.link(LINK))
        .is_ok_and(|l| matches!(l, Some((_, Some(k))) if k == "wireguard"))
}

/// The `SET_DEVICE` messages that make `peers` the link's whole peer set, with the
/// node's private key and listening `port`: each peer at its endpoint and allowed only
/// its own tunnel address, as `wg::set_request` says over UAPI to the userspace engine.
pub fn set_messages(
    private_key: [u8; 32],
    port: u16,
    peers: &[shoal_proto::dispatcher::Peer],
) -> Vec<WireguardMessage> {
    let peers: Vec<WireguardPeer> = peers.iter().filter_map(peer).collect();
    let mut messages = Vec::new();
    let mut chunks = peers.chunks(PEERS_PER_MESSAGE);
    let first = chunks.next().unwrap_or(&[]);
    messages.push(WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfName(LINK.to_string()),
            WireguardAttribute::PrivateKey(private_key),
            WireguardAttribute::ListenPort(port),
            WireguardAttribute::Flags(WireguardDeviceFlags::ReplacePeers),
            WireguardAttribute::Peers(first.to_vec()),
        ],
    });
    for chunk in chunks {
        messages.push(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes: vec![
                WireguardAttribute::IfName(LINK.to_string()),
                WireguardAttribute::Peers(chunk.to_vec()),
            ],
        });
    }
    messages
}

/// One peer, or none when its key, endpoint or tunnel address does not parse.
fn peer(p: &shoal_proto::dispatcher::Peer) -> Option<WireguardPeer> {
    use base64::Engine;
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(p.public_key.trim())
        .ok()?
        .try_into()
        .ok()?;
    let endpoint: std::net::SocketAddr = p.endpoint.parse().ok()?;
    let tunnel: IpAddr = p.tunnel_addr.split('/').next()?.parse().ok()?;
    let family = match tunnel {
        IpAddr::V4(_) => WireguardAddressFamily::Ipv4,
        IpAddr::V6(_) => WireguardAddressFamily::Ipv6,
    };
    let cidr = if tunnel.is_ipv4() { 32 } else { 128 };
    Some(WireguardPeer(vec![
        WireguardPeerAttribute::PublicKey(key),
        WireguardPeerAttribute::Endpoint(endpoint),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
        WireguardPeerAttribute::AllowedIps(vec![WireguardAllowedIp(vec![
            WireguardAllowedIpAttr::Family(family),
            WireguardAllowedIpAttr::IpAddr(tunnel),
            WireguardAllowedIpAttr::Cidr(cidr),
        ])]),
    ]))
}

/// Configures the kernel link: key, port and the whole peer set.
pub fn configure(
    private_key: [u8; 32],
    port: u16,
    peers: &[shoal_proto::dispatcher::Peer],
) -> Result<(), String> {
    let mut genl =
        Genl::open().map_err(|e| format!("cannot open a generic netlink socket: {e}"))?;
    let family = genl
        .family_id("wireguard")
        .map_err(|e| format!("the kernel's WireGuard does not answer: {e}"))?;
    for msg in set_messages(private_key, port, peers) {
        genl.request(family, msg, NLM_F_ACK)
            .map_err(|e| format!("the kernel refused the WireGuard configuration: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, ParseableParametrized};
    use netlink_packet_generic::GenlHeader;

    fn peer(k: &str, ep: &str, t: &str) -> shoal_proto::dispatcher::Peer {
        shoal_proto::dispatcher::Peer {
            node_id: "n".into(),
            public_key: k.into(),
            endpoint: ep.into(),
            tunnel_addr: t.into(),
        }
    }

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn peers_become_one_replacing_message_with_one_allowed_address_each() {
        let msgs = set_messages(
            [7; 32],
            51820,
            &[
                peer(KEY, "10.0.0.2:51820", "10.255.240.2/20"),
                peer("bad", "10.0.0.3:51820", "10.255.240.3/20"),
                peer(KEY, "not an endpoint", "10.255.240.4/20"),
            ],
        );
        assert_eq!(msgs.len(), 1);
        let a = &msgs[0].attributes;
        assert!(a.contains(&WireguardAttribute::IfName("shoal-wg".into())));
        assert!(a.contains(&WireguardAttribute::ListenPort(51820)));
        assert!(a.contains(&WireguardAttribute::PrivateKey([7; 32])));
        assert!(a.contains(&WireguardAttribute::Flags(
            WireguardDeviceFlags::ReplacePeers
        )));
        let peers = a
            .iter()
            .find_map(|a| match a {
                WireguardAttribute::Peers(p) => Some(p.clone()),
                _ => None,
            })
            .expect("peers");
        assert_eq!(peers.len(), 1, "the two malformed peers are left out");
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            peers[0].0,
            vec![
                WireguardPeerAttribute::PublicKey(key),
                WireguardPeerAttribute::Endpoint("10.0.0.2:51820".parse().unwrap()),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
                WireguardPeerAttribute::AllowedIps(vec![WireguardAllowedIp(vec![
                    WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                    WireguardAllowedIpAttr::IpAddr("10.255.240.2".parse().unwrap()),
                    WireguardAllowedIpAttr::Cidr(32),
                ])]),
            ]
        );
    }

    #[test]
    fn a_large_peer_set_goes_in_several_messages_and_only_the_first_replaces() {
        let many: Vec<_> = (0..600)
            .map(|i| {
                peer(
                    KEY,
                    &format!("10.0.{}.{}:51820", i / 250, i % 250 + 1),
                    &format!("10.255.{}.{}/20", 240 + i / 250, i % 250 + 1),
                )
            })
            .collect();
        let msgs = set_messages([1; 32], 4000, &many);
        assert_eq!(msgs.len(), 3);
        let count = |m: &WireguardMessage| {
            m.attributes
                .iter()
                .find_map(|a| match a {
                    WireguardAttribute::Peers(p) => Some(p.len()),
                    _ => None,
                })
                .unwrap_or(0)
        };
        assert_eq!(
            msgs.iter().map(count).collect::<Vec<_>>(),
            vec![256, 256, 88]
        );
        for m in &msgs[1..] {
            assert!(!m.attributes.iter().any(|a| matches!(
                a,
                WireguardAttribute::Flags(_) | WireguardAttribute::PrivateKey(_)
            )));
        }
        // Each message is what the kernel parses back (the wire format round-trips).
        for m in msgs {
            let header = GenlHeader { cmd: 1, version: 1 };
            let mut buf = vec![0; m.buffer_len()];
            m.emit(&mut buf);
            assert_eq!(
                WireguardMessage::parse_with_param(&buf[..], header).unwrap(),
                m
            );
            assert!(buf.len() < 64 * 1024, "{} bytes", buf.len());
        }
    }

    /// The generic netlink request path against the running kernel: the controller
    /// names its own family, and a family the kernel lacks is ENOENT (how the agent
    /// learns there is no kernel WireGuard: the test kernel has none).
    #[test]
    fn generic_netlink_resolves_families_and_reports_missing_ones() {
        let mut g = Genl::open().unwrap();
        assert_eq!(g.family_id("nlctrl").unwrap(), 0x10);
        let e = g.family_id("shoal-none").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    }
}
