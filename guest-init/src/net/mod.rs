//! The network the contract names, on eth0: a static address or a DHCP lease, each with a
//! default route, configured over rtnetlink (`link`) and DHCPv4 (`dhcp`).

mod dhcp;
mod link;

pub use dhcp::configure_dhcp;
pub use link::configure_static;
