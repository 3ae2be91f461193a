//! A blocking rtnetlink socket: the messages come from `rtnetlink`'s builders, the
//! requests go over a plain netlink socket and wait for the kernel's acknowledgement.
//! A socket works on the network namespace of the thread that opened it, for its whole
//! life, so one opened inside a task's namespace configures that namespace.

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, RouteMessageBuilder};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn kernel_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(-code)
}

/// Sends `msg` as request `seq` on `sock` and collects the payloads of the answer: a
/// dump's parts, the one reply to a get, or nothing for an acknowledged change (the
/// acknowledgement is read, so the socket is clean for the next request). Shared by the
/// route socket here and the generic one of kernel WireGuard.
pub fn exchange<T>(
    sock: &Socket,
    buf: &mut [u8],
    seq: u32,
    msg: T,
    flags: u16,
) -> io::Result<Vec<T>>
where
    T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
{
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    req.finalize();
    let mut out = vec![0; req.buffer_len()];
    req.serialize(&mut out);
    sock.send(&out, 0)?;
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let ack = flags & NLM_F_ACK == NLM_F_ACK;
    let mut answer = Vec::new();
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let mut at = 0;
        while at < n {
            let reply = NetlinkMessage::<T>::deserialize(&buf[at..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            at += (reply.header.length as usize).max(1).next_multiple_of(4);
            if reply.header.sequence_number != seq {
                continue;
            }
            match reply.payload {
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(code) => Err(kernel_error(code.get())),
                        None => Ok(answer),
                    };
                }
                NetlinkPayload::Done(_) => return Ok(answer),
                NetlinkPayload::InnerMessage(m) => {
                    answer.push(m);
                    if !dump && !ack {
                        return Ok(answer);
                    }
                }
                _ => {}
            }
        }
    }
}

impl Netlink {
    /// A socket on the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// A socket on the network namespace bound at `path` (a namespace file), opened
    /// from a thread that enters it and ends.
    pub fn open_in(path: &std::path::Path) -> io::Result<Netlink> {
        let ns = std::fs::File::open(path)?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                Netlink::open()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the netlink thread panicked")))
        })
    }

    /// Sends one request and collects the messages of the answer (a dump's parts, or
    /// nothing for an acknowledged change).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        exchange(&self.sock, &mut self.buf, self.seq, msg, flags)
    }

    fn change(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, NLM_F_ACK | flags).map(|_| ())
    }

    /// Creates a link; fails with EEXIST if one has its name.
    pub fn add_link(&mut self, msg: LinkMessage) -> io::Result<()> {
        self.change(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    pub fn set_link(&mut self, msg: LinkMessage) -> io::Result<()> {
        self.change(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Deletes the link called `name`; false if there was none.
    pub fn del_link(&mut self, name: &str) -> io::Result<bool> {
        match self.change(
            RouteNetlinkMessage::DelLink(LinkUnspec::new_with_name(name).build()),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The index of the link called `name`, if there is one.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self.link(name)?.map(|(index, _)| index))
    }

    /// The index and kind (`bridge`, `vxlan`, `wireguard`; none for a TUN link) of the
    /// link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> io::Result<Option<(u32, Option<String>)>> {
        use netlink_packet_route::link::LinkInfo;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(m) => Ok(m.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => {
                    let kind = l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::LinkInfo(info) => info.iter().find_map(|i| match i {
                            LinkInfo::Kind(k) => Some(k.to_string()),
                            _ => None,
                        }),
                        _ => None,
                    });
                    Some((l.header.index, kind))
                }
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Adds an IPv4 address to link `index`; an address it already has is fine.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let msg = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, prefix)
            .build();
        match self.change(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Removes an IPv4 address from link `index`.
    pub fn del_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let msg = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, prefix)
            .build();
        self.change(RouteNetlinkMessage::DelAddress(msg), 0)
    }

    /// The IPv4 addresses of link `index`, with their prefix lengths.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut msg = netlink_packet_route::address::AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let all = self.request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// The destinations of the IPv4 routes in every table, as (network, prefix length),
    /// leaving out the default route and the routes through link `except`.
    pub fn routes(&mut self, except: Option<u32>) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let all = self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) if r.header.destination_prefix_length > 0 => {
                    let via = r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(i) => Some(*i),
                        _ => None,
                    });
                    if via.is_some() && via == except {
                        return None;
                    }
                    r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                            Some((*ip, r.header.destination_prefix_length))
                        }
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Routes everything not on a link's own subnet through `gateway`, on link `index`.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .gateway(gateway)
            .build();
        self.change(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

/// A permanent neighbour entry: `ip` is at `mac` on link `index` (family inet), or the
/// forwarding entry `mac` goes to the VXLAN endpoint `ip` (family bridge, the VXLAN
/// device's own table).
fn neighbour(index: u32, ip: Ipv4Addr, mac: &[u8], fdb: bool) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = if fdb {
        AddressFamily::Bridge
    } else {
        AddressFamily::Inet
    };
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    if fdb {
        m.header.flags = NeighbourFlags::Own;
    }
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    m
}

impl Netlink {
    /// Adds or replaces the neighbour entry `ip` -> `mac` on link `index` (proxy ARP
    /// on a VXLAN device answers from these).
    pub fn set_neighbour(&mut self, index: u32, ip: Ipv4Addr, mac: &[u8]) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::NewNeighbour(neighbour(index, ip, mac, false)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Adds or replaces the VXLAN forwarding entry: frames to `mac` go to `remote`.
    pub fn set_fdb(&mut self, index: u32, mac: &[u8], remote: Ipv4Addr) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::NewNeighbour(neighbour(index, remote, mac, true)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Removes both entries; ones already gone are fine.
    pub fn del_neighbour_and_fdb(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        mac: &[u8],
        remote: Ipv4Addr,
    ) -> io::Result<()> {
        for m in [
            neighbour(index, ip, mac, false),
            neighbour(index, remote, mac, true),
        ] {
            match self.change(RouteNetlinkMessage::DelNeighbour(m), 0) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                r => r?,
            }
        }
        Ok(())
    }
}
