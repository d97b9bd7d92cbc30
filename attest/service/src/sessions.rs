//! Outstanding challenges, bounded so that one client cannot crowd out the others.
//!
//! Every session belongs to the client (source address) that asked for it: an IPv4 address,
//! or an IPv6 /64 (what one host or customer usually holds). A client has at most
//! `per_client` outstanding challenges — a new one evicts that client's oldest — and when the
//! whole table is full the oldest unused session of the client holding the most is evicted.
//! So a flood of `/v1/challenge` from one address only churns its own sessions, a flood from
//! many addresses churns the biggest holders first, and a client that asks for one challenge
//! gets it and keeps it until it attests or the nonce expires. An unused session costs a map
//! entry; evicting one is O(per_client).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};

use super::Session;

/// The quota key of a source address: IPv4 as is (also when IPv4-mapped), IPv6 by /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

pub struct Sessions {
    max: usize,
    per_client: usize,
    by_id: HashMap<String, (IpAddr, Session)>,
    /// Each client's session ids, oldest first.
    by_client: HashMap<IpAddr, VecDeque<String>>,
    /// Expired sessions are swept when the table is full, at most once a second.
    next_sweep: u64,
    /// Sessions evicted unused (for the operator's curiosity and the tests).
    pub evicted: u64,
}

impl Sessions {
    pub fn new(max: usize, per_client: usize) -> Self {
        Sessions {
            max: max.max(1),
            per_client: per_client.max(1),
            by_id: HashMap::new(),
            by_client: HashMap::new(),
            next_sweep: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Take a session out (it is single-use).
    pub fn remove(&mut self, id: &str) -> Option<Session> {
        let (c, s) = self.by_id.remove(id)?;
        if let Some(q) = self.by_client.get_mut(&c) {
            if let Some(i) = q.iter().position(|x| x == id) {
                q.remove(i);
            }
            if q.is_empty() {
                self.by_client.remove(&c);
            }
        }
        Some(s)
    }

    fn evict_oldest_of(&mut self, c: IpAddr) {
        let Some(q) = self.by_client.get_mut(&c) else {
            return;
        };
        if let Some(id) = q.pop_front() {
            self.by_id.remove(&id);
            self.evicted += 1;
        }
        if q.is_empty() {
            self.by_client.remove(&c);
        }
    }

    fn sweep(&mut self, now: u64) {
        let expired: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, (_, s))| s.expires_at < now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove(&id);
        }
    }

    /// Add `client`'s new session, evicting as described in the module docs.
    pub fn insert(&mut self, client: IpAddr, id: String, s: Session, now: u64) {
        let c = client_key(client);
        while self.by_client.get(&c).map_or(0, VecDeque::len) >= self.per_client {
            self.evict_oldest_of(c);
        }
        if self.by_id.len() >= self.max && now >= self.next_sweep {
            self.sweep(now);
            self.next_sweep = now + 1;
        }
        while self.by_id.len() >= self.max {
            let Some(top) = self
                .by_client
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.evict_oldest_of(top);
        }
        self.by_client.entry(c).or_default().push_back(id.clone());
        self.by_id.insert(id, (c, s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcr_protocol::wire::Tee;

    fn session(expires_at: u64) -> Session {
        Session {
            tee: Tee::Tpm,
            nonce: [0; 32],
            expires_at,
            activation: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_flood_from_one_client_churns_only_its_own_sessions() {
        let mut t = Sessions::new(1000, 16);
        t.insert(ip("10.0.0.1"), "legit".into(), session(100), 0);
        for i in 0..100_000 {
            t.insert(ip("10.0.0.2"), format!("flood{i}"), session(100), 0);
        }
        assert_eq!(t.len(), 17);
        assert!(t.remove("legit").is_some());
        assert!(t.remove("flood99999").is_some());
        assert!(t.remove("flood0").is_none());
    }

    #[test]
    fn a_full_table_evicts_from_the_biggest_holder() {
        let mut t = Sessions::new(100, 10);
        t.insert(ip("10.0.0.1"), "legit".into(), session(100), 0);
        // 50 flooding addresses, 10 each: far more than the table holds.
        for a in 0..50 {
            for i in 0..10 {
                t.insert(
                    ip(&format!("10.1.0.{a}")),
                    format!("f{a}-{i}"),
                    session(100),
                    0,
                );
            }
        }
        assert_eq!(t.len(), 100);
        assert!(
            t.remove("legit").is_some(),
            "the one-session client keeps it"
        );
        assert!(t.evicted > 0);
    }

    #[test]
    fn expired_sessions_go_first_and_ipv6_counts_by_prefix() {
        let mut t = Sessions::new(2, 10);
        t.insert(ip("10.0.0.1"), "old".into(), session(5), 0);
        t.insert(ip("10.0.0.1"), "new".into(), session(100), 0);
        t.insert(ip("10.0.0.2"), "x".into(), session(100), 10);
        assert!(t.remove("old").is_none());
        assert!(t.remove("new").is_some());
        assert_eq!(
            client_key(ip("2001:db8::1")),
            client_key(ip("2001:db8::ffff:2"))
        );
        assert_eq!(client_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        let mut t = Sessions::new(100, 2);
        for i in 0..5 {
            t.insert(
                ip(&format!("2001:db8::{i}")),
                format!("v6-{i}"),
                session(100),
                0,
            );
        }
        assert_eq!(t.len(), 2);
    }
}
