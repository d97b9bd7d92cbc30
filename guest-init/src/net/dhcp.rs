//! DHCPv4 (RFC 2131 / RFC 2132): DISCOVER → OFFER → REQUEST → ACK on UDP 68/67, broadcast flag
//! set so the server answers by broadcast before we have an address.

use std::io::{Read, Write};
use std::net::Ipv4Addr;

use super::link::{ack_errno, add_address, add_default_route, link_up};

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
    hex::decode_to_slice(mac_text.trim().replace(':', ""), &mut mac)
        .map_err(|_| format!("interface {ifname}: MAC {mac_text:?}"))?;
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
mod tests {
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
