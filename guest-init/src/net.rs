//! Static IPv4 configuration over rtnetlink (linux/rtnetlink.h; netlink(7), rtnetlink(7)):
//! RTM_NEWLINK (up), RTM_NEWADDR, RTM_NEWROUTE (default route), each acknowledged.

use std::io::{Read, Write};
use std::net::Ipv4Addr;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 0x1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// Netlink messages are host-endian; every length is 4-byte aligned.
fn message(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = 16 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
    let len = 4 + data.len();
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&ty.to_ne_bytes());
    a.extend_from_slice(data);
    a.resize(len.next_multiple_of(4), 0);
    a
}

/// `ifinfomsg` bringing interface `index` up.
pub fn link_up(index: u32, seq: u32) -> Vec<u8> {
    let mut b = vec![0u8, 0];
    b.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    b.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    b.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    message(RTM_NEWLINK, 0, seq, &b)
}

/// `ifaddrmsg` + IFA_LOCAL/IFA_ADDRESS.
pub fn add_address(index: u32, addr: Ipv4Addr, prefix: u8, seq: u32) -> Vec<u8> {
    let mut b = vec![AF_INET, prefix, 0, RT_SCOPE_UNIVERSE];
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend(attr(IFA_LOCAL, &addr.octets()));
    b.extend(attr(IFA_ADDRESS, &addr.octets()));
    message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq, &b)
}

/// `rtmsg` default route via `gateway` on `index`.
pub fn add_default_route(index: u32, gateway: Ipv4Addr, seq: u32) -> Vec<u8> {
    let mut b = vec![
        AF_INET,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    b.extend(attr(RTA_GATEWAY, &gateway.octets()));
    b.extend(attr(RTA_OIF, &index.to_ne_bytes()));
    message(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, seq, &b)
}

/// The errno of an NLMSG_ERROR acknowledgement (0 = success).
pub fn ack_errno(resp: &[u8], seq: u32) -> Result<i32, String> {
    if resp.len() < 20 {
        return Err(format!("short netlink reply ({} bytes)", resp.len()));
    }
    let ty = u16::from_ne_bytes([resp[4], resp[5]]);
    let rseq = u32::from_ne_bytes(resp[8..12].try_into().expect("4"));
    if ty != NLMSG_ERROR || rseq != seq {
        return Err(format!("unexpected netlink reply type {ty} seq {rseq}"));
    }
    Ok(-i32::from_ne_bytes(resp[16..20].try_into().expect("4")))
}

/// Configure `ifname` with `address` (a.b.c.d/prefix) and a default route via `gateway`.
pub fn configure_static(ifname: &str, address: &str, gateway: &str) -> Result<(), String> {
    let (ip, prefix) = address
        .split_once('/')
        .ok_or_else(|| format!("address {address:?}"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("address {address:?}"))?;
    let prefix: u8 = prefix.parse().map_err(|_| format!("address {address:?}"))?;
    let gw: Ipv4Addr = gateway
        .parse()
        .map_err(|_| format!("gateway {gateway:?}"))?;
    let index: u32 = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))
        .map_err(|e| format!("interface {ifname}: {e} (is the virtio-net device attached?)"))?
        .trim()
        .parse()
        .map_err(|_| format!("interface {ifname}: bad ifindex"))?;
    let lo: u32 = std::fs::read_to_string("/sys/class/net/lo/ifindex")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    let mut sock = crate::sys::netlink_route_socket().map_err(|e| format!("netlink: {e}"))?;
    let msgs = [
        ("lo up", link_up(lo, 1)),
        ("link up", link_up(index, 2)),
        ("address", add_address(index, ip, prefix, 3)),
        ("default route", add_default_route(index, gw, 4)),
    ];
    for (seq, (what, m)) in (1u32..).zip(msgs) {
        sock.write_all(&m)
            .map_err(|e| format!("netlink {what}: {e}"))?;
        let mut buf = [0u8; 1024];
        let n = sock
            .read(&mut buf)
            .map_err(|e| format!("netlink {what}: {e}"))?;
        match ack_errno(&buf[..n], seq)? {
            0 => {}
            e => {
                return Err(format!(
                    "netlink {what}: {}",
                    std::io::Error::from_raw_os_error(e)
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_aligned_lengths_and_headers() {
        let m = add_address(2, Ipv4Addr::new(10, 0, 2, 15), 24, 7);
        assert_eq!(m.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWADDR);
        // header 16 + ifaddrmsg 8 + two 8-byte attributes
        assert_eq!(m.len(), 40);
        let r = add_default_route(2, Ipv4Addr::new(10, 0, 2, 2), 8);
        assert_eq!(r.len(), 16 + 12 + 8 + 8);
        assert_eq!(link_up(2, 1).len(), 32);
    }
}

// ---------------------------------------------------------------------------------------------
// DHCPv4 (RFC 2131 / RFC 2132): DISCOVER → OFFER → REQUEST → ACK on UDP 68/67, broadcast flag
// set so the server answers by broadcast before we have an address.

const DHCP_MAGIC: [u8; 4] = [99, 130, 83, 99];
const DHCPDISCOVER: u8 = 1;
const DHCPOFFER: u8 = 2;
const DHCPREQUEST: u8 = 3;
const DHCPACK: u8 = 5;
const DHCPNAK: u8 = 6;

/// A DHCP client message (BOOTREQUEST) with the given options (type first, end appended).
pub fn dhcp_message(xid: u32, mac: [u8; 6], msg_type: u8, extra: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut m = vec![0u8; 236];
    m[0] = 1; // BOOTREQUEST
    m[1] = 1; // Ethernet
    m[2] = 6; // hlen
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[10..12].copy_from_slice(&0x8000u16.to_be_bytes()); // BROADCAST
    m[28..34].copy_from_slice(&mac);
    m.extend_from_slice(&DHCP_MAGIC);
    m.extend_from_slice(&[53, 1, msg_type]);
    m.extend_from_slice(&[55, 3, 1, 3, 51]); // want: subnet mask, router, lease time
    for (code, v) in extra {
        m.push(*code);
        m.push(v.len() as u8);
        m.extend_from_slice(v);
    }
    m.push(255);
    m
}

/// A server answer: (message type, your address, options).
#[derive(Debug, PartialEq, Eq)]
pub struct DhcpReply {
    pub msg_type: u8,
    pub yiaddr: Ipv4Addr,
    pub server_id: Option<Ipv4Addr>,
    pub mask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
}

/// Parse a BOOTREPLY for transaction `xid`; None if it is not one (or malformed).
pub fn parse_dhcp_reply(b: &[u8], xid: u32) -> Option<DhcpReply> {
    if b.len() < 240 || b[0] != 2 || b[4..8] != xid.to_be_bytes() || b[236..240] != DHCP_MAGIC {
        return None;
    }
    let ip = |s: &[u8]| -> Option<Ipv4Addr> {
        Some(Ipv4Addr::from(<[u8; 4]>::try_from(s.get(..4)?).ok()?))
    };
    let mut r = DhcpReply {
        msg_type: 0,
        yiaddr: ip(&b[16..20])?,
        server_id: None,
        mask: None,
        router: None,
    };
    let mut i = 240;
    while i < b.len() {
        let code = b[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = *b.get(i + 1)? as usize;
        let v = b.get(i + 2..i + 2 + len)?;
        match code {
            53 => r.msg_type = *v.first()?,
            54 => r.server_id = ip(v),
            1 => r.mask = ip(v),
            3 => r.router = ip(v),
            _ => {}
        }
        i += 2 + len;
    }
    Some(r)
}

fn exchange(
    sock: &std::net::UdpSocket,
    msg: &[u8],
    xid: u32,
    want: u8,
) -> Result<DhcpReply, String> {
    let mut buf = [0u8; 1500];
    for attempt in 1..=4 {
        sock.send_to(msg, "255.255.255.255:67")
            .map_err(|e| format!("dhcp send: {e}"))?;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2 * attempt);
        while std::time::Instant::now() < until {
            let n = match sock.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(format!("dhcp receive: {e}")),
            };
            match parse_dhcp_reply(&buf[..n], xid) {
                Some(r) if r.msg_type == want => return Ok(r),
                Some(r) if r.msg_type == DHCPNAK => return Err("dhcp: the server said NAK".into()),
                _ => {}
            }
        }
    }
    Err(format!(
        "dhcp: no {} after 4 attempts",
        if want == DHCPOFFER { "OFFER" } else { "ACK" }
    ))
}

/// Bring `ifname` up, get a lease, configure address and default route. Returns
/// (address/prefix, gateway) for the console.
pub fn configure_dhcp(ifname: &str) -> Result<(String, Ipv4Addr), String> {
    let mac_text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))
        .map_err(|e| format!("interface {ifname}: {e} (is the NIC attached?)"))?;
    let mut mac = [0u8; 6];
    for (i, p) in mac_text.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(p, 16)
            .map_err(|_| format!("interface {ifname}: MAC {mac_text:?}"))?;
    }
    let index: u32 = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))
        .map_err(|e| format!("interface {ifname}: {e}"))?
        .trim()
        .parse()
        .map_err(|_| format!("interface {ifname}: bad ifindex"))?;
    let mut nl = crate::sys::netlink_route_socket().map_err(|e| format!("netlink: {e}"))?;
    let mut ack = |what: &str, seq: u32, m: Vec<u8>| -> Result<(), String> {
        nl.write_all(&m)
            .map_err(|e| format!("netlink {what}: {e}"))?;
        let mut buf = [0u8; 1024];
        let n = nl
            .read(&mut buf)
            .map_err(|e| format!("netlink {what}: {e}"))?;
        match ack_errno(&buf[..n], seq)? {
            0 => Ok(()),
            e => Err(format!(
                "netlink {what}: {}",
                std::io::Error::from_raw_os_error(e)
            )),
        }
    };
    ack("link up", 1, link_up(index, 1))?;
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:68").map_err(|e| format!("dhcp: bind :68: {e}"))?;
    crate::sys::bind_to_device(&sock, ifname).map_err(|e| format!("dhcp: SO_BINDTODEVICE: {e}"))?;
    sock.set_broadcast(true).map_err(|e| format!("dhcp: {e}"))?;
    sock.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .map_err(|e| format!("dhcp: {e}"))?;
    let mut xb = [0u8; 4];
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut xb)
        .map_err(|e| format!("dhcp: randomness: {e}"))?;
    let xid = u32::from_be_bytes(xb);
    let offer = exchange(
        &sock,
        &dhcp_message(xid, mac, DHCPDISCOVER, &[]),
        xid,
        DHCPOFFER,
    )?;
    let server = offer
        .server_id
        .ok_or("dhcp: OFFER without a server identifier")?;
    let req = dhcp_message(
        xid,
        mac,
        DHCPREQUEST,
        &[
            (50, offer.yiaddr.octets().to_vec()),
            (54, server.octets().to_vec()),
        ],
    );
    let lease = exchange(&sock, &req, xid, DHCPACK)?;
    let mask = lease.mask.or(offer.mask).ok_or("dhcp: no subnet mask")?;
    let prefix = u32::from(mask).leading_ones() as u8;
    let gw = lease.router.or(offer.router).ok_or("dhcp: no router")?;
    ack("address", 2, add_address(index, lease.yiaddr, prefix, 2))?;
    ack("default route", 3, add_default_route(index, gw, 3))?;
    Ok((format!("{}/{prefix}", lease.yiaddr), gw))
}

#[cfg(test)]
mod dhcp_tests {
    use super::*;

    #[test]
    fn discover_layout_and_reply_parsing() {
        let m = dhcp_message(0x01020304, [2, 0, 0, 0, 0, 1], DHCPDISCOVER, &[]);
        assert_eq!(m[0], 1);
        assert_eq!(&m[236..240], &DHCP_MAGIC);
        assert_eq!(&m[240..243], &[53, 1, 1]);
        assert_eq!(*m.last().unwrap(), 255);
        // A reply: BOOTREPLY, same xid, yiaddr 10.0.2.15, options ACK / server / mask / router.
        let mut r = vec![0u8; 236];
        r[0] = 2;
        r[4..8].copy_from_slice(&0x01020304u32.to_be_bytes());
        r[16..20].copy_from_slice(&[10, 0, 2, 15]);
        r.extend_from_slice(&DHCP_MAGIC);
        r.extend_from_slice(&[
            53, 1, 5, 54, 4, 10, 0, 2, 2, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 255,
        ]);
        let p = parse_dhcp_reply(&r, 0x01020304).unwrap();
        assert_eq!(p.msg_type, DHCPACK);
        assert_eq!(p.yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(p.mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(p.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert!(parse_dhcp_reply(&r, 7).is_none());
        assert!(parse_dhcp_reply(&r[..200], 0x01020304).is_none());
        r.truncate(r.len() - 3); // an option running off the end
        r.extend_from_slice(&[3, 9, 1]);
        assert!(parse_dhcp_reply(&r, 0x01020304).is_none());
    }
}
